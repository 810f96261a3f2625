"""Artifact stores: where packages are uploaded for devices to download.

Layout (the same in every store; see docs/manifest.md):

    <model>/<version>/model.tflite
    <model>/<version>/manifest.json
    <model>/<version>/manifest.sig            (signed packages)
    <model>/<version>/<model>-<version>.eapkg
    <model>/channels/<channel>.json           (the current announcement, for HTTP-only clients)

A store is picked from the location string through ``STORES``: a directory (any static HTTP
server can serve it; ``edge-convert serve`` for development) or ``s3://bucket/prefix``
(``converters.s3store``, needs the ``s3`` extra).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from agent.durable import atomic_write
from agent.errors import ConversionError
from agent.release.package import SIGNATURE_NAME, package_filename
from converters.keys import check_key

log = logging.getLogger(__name__)


class ArtifactStore(Protocol):
    """Somewhere to put and read back published files, each reachable at ``url(key)``."""

    description: str

    def put(self, key: str, data: bytes) -> None: ...

    def get(self, key: str, max_bytes: int) -> bytes | None:
        """The object (at most ``max_bytes``; longer raises), or None when it does not exist."""
        ...

    def url(self, key: str) -> str: ...

    def versions(self, name: str) -> list[str]:
        """Version directories stored for model ``name`` (unsorted, unvalidated)."""
        ...


@dataclass(frozen=True)
class ArtifactKeys:
    """Where one version's files live in a store."""

    model: str
    manifest: str
    signature: str
    package: str

    @classmethod
    def of(cls, name: str, version: str) -> ArtifactKeys:
        base = f"{name}/{version}"
        return cls(
            model=check_key(f"{base}/model.tflite"),
            manifest=check_key(f"{base}/manifest.json"),
            signature=check_key(f"{base}/{SIGNATURE_NAME}"),
            package=check_key(f"{base}/{package_filename(name, version)}"),
        )


def channel_key(name: str, channel: str) -> str:
    """The store key of ``name``'s ``channel`` pointer: ``<name>/channels/<channel>.json``."""
    return check_key(f"{name}/channels/{channel}.json")


class LocalStore:
    """A directory tree; files are written atomically (temp, fsync, rename)."""

    def __init__(self, root: Path, base_url: str | None = None) -> None:
        self.root = root
        self.base_url = (base_url or root.resolve().as_uri()).rstrip("/")
        self.description = str(root)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, data: bytes) -> None:
        try:
            atomic_write(self._path(key), data)
        except OSError as exc:
            raise ConversionError(f"cannot write {key} to store {self.root}: {exc}") from exc

    def get(self, key: str, max_bytes: int) -> bytes | None:
        path = self._path(key)
        try:
            with path.open("rb") as f:
                data = f.read(max_bytes + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConversionError(f"cannot read {key} from store {self.root}: {exc}") from exc
        if len(data) > max_bytes:
            raise ConversionError(f"{key} in store {self.root} is over {max_bytes} bytes")
        return data

    def url(self, key: str) -> str:
        return f"{self.base_url}/{check_key(key)}"

    def versions(self, name: str) -> list[str]:
        """Version directories of ``name`` (unsorted, unvalidated)."""
        base = self.root / check_key(name)
        if not base.is_dir():
            return []
        return [p.name for p in base.iterdir() if p.is_dir() and p.name != "channels"]


def _open_local(location: str, base_url: str | None, endpoint_url: str | None) -> ArtifactStore:
    path = location.removeprefix("file://")
    return LocalStore(Path(path), base_url)


def _open_s3(location: str, base_url: str | None, endpoint_url: str | None) -> ArtifactStore:
    from converters.s3store import S3Store

    return S3Store.from_url(location, base_url=base_url, endpoint_url=endpoint_url)


StoreFactory = Callable[[str, str | None, str | None], ArtifactStore]
STORES: dict[str, StoreFactory] = {"file": _open_local, "s3": _open_s3}


def open_store(
    location: str, base_url: str | None = None, endpoint_url: str | None = None
) -> ArtifactStore:
    """The store for ``location``: a path / ``file://`` URL, or ``s3://bucket/prefix``."""
    scheme = location.split("://", 1)[0] if "://" in location else "file"
    factory = STORES.get(scheme)
    if factory is None:
        raise ConversionError(
            f"unknown store {location!r}: use a directory or one of "
            f"{', '.join(s + '://' for s in STORES)}"
        )
    return factory(location, base_url, endpoint_url)
