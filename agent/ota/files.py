"""Durable file operations for the update path: a power cut leaves the old or the new, never half.

Every write the update path makes goes through here:

* ``atomic_write``: write a temp file in the same directory, fsync it, rename it over the
  target, fsync the directory (the rename itself is only durable once the directory is).
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
import secrets
from pathlib import Path
from typing import Any

from agent.errors import UpdateError

log = logging.getLogger(__name__)


def fsync_dir(path: Path) -> None:
    """Make the entries of directory ``path`` (creations, renames, deletions) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data``: temp file, fsync, rename, fsync the directory."""
    tmp = _tmp_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
        fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise UpdateError("storage", f"cannot write {path}: {exc.strerror or exc}") from exc


def atomic_write_json(path: Path, obj: Any) -> None:
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
    tmp = _tmp_name(link)
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
