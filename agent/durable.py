"""Durable file writes: a power cut leaves the old file or the new one, never half of either.

One implementation for every part that persists state (the update path, packages on the build
host, high-water marks): write a temp file in the same directory, fsync it, rename it over the
target, fsync the directory (the rename itself is only durable once the directory is). The temp
file is removed on any failure. Errors are ``OSError``: callers translate them into their own
typed error (``agent.ota.files`` raises ``UpdateError("storage", ...)``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make the entries of directory ``path`` (creations, renames, deletions) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tmp_name(path: Path) -> Path:
    """A fresh temp name beside ``path`` (same directory, so a rename is atomic)."""
    return path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data``: temp file, fsync, rename, fsync the directory."""
    tmp = tmp_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
