"""Durable file operations for the update path: a power cut leaves the old or the new, never half.

Every write the update path makes goes through here:

* ``atomic_write``: ``agent.durable.atomic_write`` (temp file, fsync, rename, fsync the
  directory) with its ``OSError`` translated.
* ``atomic_symlink``: the same for a symlink (``current`` / ``previous``): create it under a
  temp name, ``os.replace`` it over the old one, fsync the directory.
* ``fsync_dir``: after creating, renaming or deleting entries.

``OSError`` is translated to ``UpdateError("storage", ...)`` naming the path.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from agent import durable
from agent.durable import fsync_dir, tmp_name
from agent.errors import UpdateError

log = logging.getLogger(__name__)


def fsync_file(path: Path) -> None:
    """fsync the file at ``path``."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """``agent.durable.atomic_write``, failing with ``UpdateError("storage")``."""
    try:
        durable.atomic_write(path, data, mode)
    except OSError as exc:
        raise UpdateError("storage", f"cannot write {path}: {exc.strerror or exc}") from exc


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically."""
    atomic_write(path, json.dumps(obj, sort_keys=True, indent=1).encode("utf-8") + b"\n")


def read_json(path: Path) -> Any | None:
    """The JSON in ``path``, or None when it does not exist or cannot be parsed (logged)."""
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.error("ignoring unreadable %s: %s", path, exc)
        return None


def atomic_symlink(link: Path, target: str) -> None:
    """Point ``link`` at ``target`` (a relative name) atomically: a reader sees old or new."""
    tmp = tmp_name(link)
    try:
        tmp.symlink_to(target)
        tmp.replace(link)
        fsync_dir(link.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise UpdateError(
            "storage", f"cannot point {link} at {target}: {exc.strerror or exc}"
        ) from exc


def remove_link(link: Path) -> None:
    """Delete a symlink (if present) durably."""
    try:
        link.unlink(missing_ok=True)
        fsync_dir(link.parent)
    except OSError as exc:
        raise UpdateError("storage", f"cannot remove {link}: {exc.strerror or exc}") from exc
