"""Model versions on disk, and which one is active.

    <state_dir>/models/
        1.2.0/model.tflite  manifest.json  manifest.sig     one directory per version
        1.3.0/...
        current  -> 1.3.0                                   the version the agent loads
        previous -> 1.2.0                                   where a rollback goes
        bad.json                                            versions never to install again

A version directory is written under a temporary name (``.staging-...``), every file and the
directory fsynced, then renamed into place: it exists complete or not at all. ``current`` and
``previous`` are symlinks swapped atomically (``agent.ota.files.atomic_symlink``). No
``current`` means the configured model (``model.path``) runs. The last ``keep`` versions are
kept; ``current`` and ``previous`` never go. Bad marks live in ``bad.json``, apart from the
directories, so pruning a version never forgets that it was bad.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from agent.durable import fsync_dir
from agent.errors import PackageError, UpdateError
from agent.ota.files import atomic_symlink, atomic_write_json, read_json, remove_link
from agent.release.manifest import MODEL_FILENAME, Manifest, Version, parse_manifest
from agent.release.package import (
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    MAX_SIGNATURE_BYTES,
    SIGNATURE_NAME,
    SignatureFile,
    parse_signature,
)

log = logging.getLogger(__name__)

CURRENT = "current"
PREVIOUS = "previous"
BAD_FILE = "bad.json"


@dataclass(frozen=True)
class Installed:
    """A version read back from disk: the manifest checked against the model bytes."""

    version: str
    manifest: Manifest
    manifest_bytes: bytes
    signature: SignatureFile | None
    model: bytes


def _check_version_name(version: str) -> str:
    if not version or version.startswith(".") or "/" in version or version in (CURRENT, PREVIOUS):
        raise UpdateError("bad_manifest", f"{version!r} cannot name a version directory")
    return version


def _write_synced(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _read_capped(path: Path, cap: int) -> bytes:
    with path.open("rb") as f:
        data = f.read(cap + 1)
    if len(data) > cap:
        raise UpdateError("corrupt_install", f"{path} is over {cap} bytes")
    return data


class ModelStore:
    """The ``models/`` directory of the state dir."""

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / "models"

    # ---------------------------------------------------------------- queries

    def _link(self, name: str) -> str | None:
        try:
            target = (self.root / name).readlink()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise UpdateError("storage", f"cannot read {self.root / name}: {exc}") from exc
        return target.name

    def current(self) -> str | None:
        """The active version, or None when the configured model runs."""
        return self._link(CURRENT)

    def previous(self) -> str | None:
        return self._link(PREVIOUS)

    def path(self, version: str) -> Path:
        return self.root / _check_version_name(version)

    def versions(self) -> list[str]:
        """Complete version directories, newest first (semver order)."""
        if not self.root.is_dir():
            return []
        names = [
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")
        ]

        def key(name: str) -> tuple[int, Version]:
            try:
                return (1, Version.parse(name))
            except ValueError:
                return (0, Version(0, 0, 0))

        return sorted(names, key=key, reverse=True)

    def has(self, version: str, sha256: str) -> bool:
        """Whether ``version`` is installed with exactly the model ``sha256``."""
        try:
            return self.read(version).manifest.artifact.sha256 == sha256
        except UpdateError:
            return False

    def read(self, version: str) -> Installed:
        """Read a version back, checking the model bytes against its manifest."""
        d = self.path(version)
        try:
            manifest_bytes = _read_capped(d / MANIFEST_NAME, MAX_MANIFEST_BYTES)
            manifest = parse_manifest(manifest_bytes)
            model = _read_capped(d / MODEL_FILENAME, manifest.artifact.size)
            sig_path = d / SIGNATURE_NAME
            signature = None
            if sig_path.exists():
                signature = parse_signature(_read_capped(sig_path, MAX_SIGNATURE_BYTES))
        except FileNotFoundError as exc:
            raise UpdateError("corrupt_install", f"{d}: {exc.filename} is missing") from exc
        except OSError as exc:
            raise UpdateError("corrupt_install", f"cannot read {d}: {exc}") from exc
        except PackageError as exc:
            raise UpdateError("corrupt_install", f"{d}: {exc}") from exc
        if manifest.version != version:
            raise UpdateError(
                "corrupt_install", f"{d} holds the manifest of version {manifest.version}"
            )
        digest = hashlib.sha256(model).hexdigest()
        if len(model) != manifest.artifact.size or digest != manifest.artifact.sha256:
            raise UpdateError(
                "corrupt_install",
                f"{d / MODEL_FILENAME}: {len(model)} bytes sha256 {digest[:12]}, the manifest "
                f"says {manifest.artifact.size} bytes sha256 {manifest.artifact.sha256[:12]}",
            )
        return Installed(version, manifest, manifest_bytes, signature, model)

    # ---------------------------------------------------------------- writing

    def stage(
        self, manifest: Manifest, manifest_bytes: bytes, signature: bytes | None, model: bytes
    ) -> Path:
        """Write a verified version's directory (complete or not at all); return its path."""
        version = _check_version_name(manifest.version)
        final = self.path(version)
        if self.has(version, manifest.artifact.sha256):
            return final
        staging = self.root / f".staging-{version}-{secrets.token_hex(4)}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            staging.mkdir()
            _write_synced(staging / MODEL_FILENAME, model)
            _write_synced(staging / MANIFEST_NAME, manifest_bytes)
            if signature is not None:
                _write_synced(staging / SIGNATURE_NAME, signature)
            fsync_dir(staging)
            if final.exists():  # a different build of the same version: set it aside first
                trash = self.root / f".trash-{version}-{secrets.token_hex(4)}"
                final.rename(trash)
                shutil.rmtree(trash, ignore_errors=True)
            staging.rename(final)
            fsync_dir(self.root)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise UpdateError("storage", f"cannot stage {version} in {self.root}: {exc}") from exc
        log.info("staged %s in %s", version, final)
        return final

    def activate(self, version: str) -> None:
        """``previous`` <- the current version, ``current`` <- ``version`` (both atomic)."""
        self.path(version)
        cur = self.current()
        if cur == version:
            return
        if cur is not None:
            atomic_symlink(self.root / PREVIOUS, cur)
        else:
            remove_link(self.root / PREVIOUS)
        atomic_symlink(self.root / CURRENT, version)
        log.info("activated %s (previous: %s)", version, cur or "the configured model")

    def rollback(self) -> str | None:
        """``current`` <- ``previous`` (or removed: the configured model); returns the new one."""
        prev = self.previous()
        if prev is not None and self.path(prev).is_dir():
            atomic_symlink(self.root / CURRENT, prev)
        else:
            prev = None
            remove_link(self.root / CURRENT)
        remove_link(self.root / PREVIOUS)
        log.warning("rolled back to %s", prev or "the configured model")
        return prev

    def prune(self, keep: int) -> list[str]:
        """Delete all but the ``keep`` newest versions (never current/previous)."""
        protected = {v for v in (self.current(), self.previous()) if v is not None}
        room = max(0, keep - len(protected))
        removed = []
        for name in self.versions():
            if name in protected:
                continue
            if room > 0:
                room -= 1
                continue
            shutil.rmtree(self.root / name, ignore_errors=True)
            removed.append(name)
        if removed:
            fsync_dir(self.root)
            log.info("pruned model versions %s (keeping %d)", removed, keep)
        return removed

    def clean_staging(self) -> None:
        """Remove half-written directories a kill left behind."""
        if not self.root.is_dir():
            return
        for p in self.root.iterdir():
            if p.name.startswith((".staging-", ".trash-", ".current.tmp", ".previous.tmp")):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        p.unlink()

    # ---------------------------------------------------------------- bad marks

    def _bad(self) -> dict[str, dict[str, object]]:
        obj = read_json(self.root / BAD_FILE)
        return obj if isinstance(obj, dict) else {}

    def mark_bad(self, version: str, sha256: str, reason: str) -> None:
        marks = self._bad()
        marks[f"{version}@{sha256}"] = {
            "version": version,
            "sha256": sha256,
            "reason": reason,
            "at": time.time(),
        }
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.root / BAD_FILE, marks)
        log.warning("marked %s (sha256 %s) bad: %s", version, sha256[:12], reason)

    def bad_reason(self, version: str, sha256: str) -> str | None:
        """Why this build was marked bad, or None."""
        mark = self._bad().get(f"{version}@{sha256}")
        return str(mark.get("reason", "bad")) if isinstance(mark, dict) else None
