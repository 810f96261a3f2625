"""The TUF repository of an OTA store: who may say which packages are current (build host).

Each artifact store (a directory served over HTTP, or S3) carries a TUF repository beside the
packages (python-tuf's metadata API, Ed25519 signers from securesystemslib):

    <store>/tuf/1.root.json, 2.root.json ...  every root version (devices walk the chain)
    <store>/tuf/root.json                      the newest root (for installs: the first trust)
    <store>/tuf/targets.json                   every package a target, with custom metadata
    <store>/tuf/snapshot.json                  the targets version devices must see
    <store>/tuf/timestamp.json                 the snapshot version; short expiry, refreshed
    <store>/<model>/<version>/<model>-<version>.eapkg   the targets (paths relative to <store>)

A target's custom metadata says what it is for (``{"edge": {"model", "version", "channels",
"groups", "percent"}}``; ``percent`` a decimal string: canonical JSON has no floats; with
``"shadow": true`` when the release is to run as a shadow beside the active model, and
``"devices"`` when it is for named devices only; both absent otherwise); devices trust it only
through the targets role's signature. Keys are PEM files in a key directory
(``root-1.key`` ... ``root-N.key``, ``targets.key``, ``snapshot.key``, ``timestamp.key``); in
production the root keys live offline (docs/ota.md, key ceremony) and only the online roles'
keys sit on the build host.

The timestamp role expires quickly (``TIMESTAMP_EXPIRY``, a day): ``edge-convert tuf
timestamp`` must run more often than that (a systemd timer; docs/ota.md), else every device
reports ``metadata_expired`` and takes no update (a freeze is visible, never silent).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.signer import CryptoSigner, Signer
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Role,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from agent.errors import ConversionError
from agent.release.package import MAX_MODEL_BYTES, Package
from converters.store import ArtifactKeys, ArtifactStore

log = logging.getLogger(__name__)

PREFIX = "tuf"
ONLINE_ROLES = (Targets.type, Snapshot.type, Timestamp.type)
ROOT_EXPIRY = timedelta(days=365)
TARGETS_EXPIRY = timedelta(days=90)
SNAPSHOT_EXPIRY = timedelta(days=7)
TIMESTAMP_EXPIRY = timedelta(days=1)
_MAX_METADATA = 16 * 1024 * 1024
SIGNED_AT = "x-edge-signed-at"
"""Epoch seconds the timestamp was signed at (signed): devices keep it as a lower bound on time."""
_EXPIRY = {
    Root.type: ROOT_EXPIRY,
    Targets.type: TARGETS_EXPIRY,
    Snapshot.type: SNAPSHOT_EXPIRY,
    Timestamp.type: TIMESTAMP_EXPIRY,
}


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def generate_key(path: Path) -> Signer:
    """A new Ed25519 key written to ``path`` (PEM, 0600); its signer."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(0o600, exist_ok=False)
    path.write_bytes(pem)
    return CryptoSigner(key)


def load_key(path: Path) -> Signer:
    """A signer of the Ed25519 PEM key at ``path``; raises ``ConversionError``."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ConversionError(f"cannot read TUF key {path}: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConversionError(f"{path} is not an Ed25519 key")
    return CryptoSigner(key)


def root_key_files(keydir: Path) -> list[Path]:
    """The root key files in ``keydir``, sorted."""
    return sorted(keydir.glob("root-*.key"))


@dataclass(frozen=True)
class TargetInfo:
    """What the build host puts in a target's custom metadata (the device reads it back)."""

    model: str
    version: str
    channels: list[str]
    groups: list[str]
    percent: float
    devices: list[str] | None = None
    """Device ids the target is for (None: any device of the groups)."""
    shadow: bool = False
    """Install as a shadow (docs/shadow-and-drift.md): signed here, so an announcement cannot
    turn a shadow release into a serving one (or the reverse)."""

    def custom(self) -> dict[str, Any]:
        edge: dict[str, Any] = {
            "model": self.model,
            "version": self.version,
            "channels": sorted(set(self.channels)),
            "groups": list(self.groups),
            "percent": f"{self.percent:g}",  # canonical JSON has no floats
        }
        if self.devices is not None:
            edge["devices"] = list(self.devices)
        if self.shadow:  # absent otherwise: an active target's metadata is what it was
            edge["shadow"] = True
        return {"edge": edge}


class TufRepository:
    """The TUF metadata of one artifact store; every method writes complete, signed metadata."""

    def __init__(self, store: ArtifactStore, keydir: Path) -> None:
        self.store = store
        self.keydir = keydir

    # ---------------------------------------------------------------- plumbing

    def _key(self, role: str) -> str:
        return f"{PREFIX}/{role}.json"

    def load(self, role: str) -> Metadata[Any]:
        data = self.store.get(self._key(role), _MAX_METADATA)
        if data is None:
            raise ConversionError(
                f"no TUF {role} metadata in {self.store.description}: run `edge-convert tuf init`"
            )
        return Metadata.from_bytes(data)

    def exists(self) -> bool:
        return self.store.get(self._key(Root.type), _MAX_METADATA) is not None

    def _signers(self, role: str, root: Root) -> list[Signer]:
        wanted = set(root.roles[role].keyids)
        files = root_key_files(self.keydir) if role == Root.type else [self.keydir / f"{role}.key"]
        out = []
        for f in files:
            if f.exists():
                s = load_key(f)
                if s.public_key.keyid in wanted:
                    out.append(s)
        return out

    def _write(self, md: Metadata[Any], signers: list[Signer]) -> None:
        if md.signed.type == Timestamp.type:  # a lower bound on time for devices without RTC
            md.signed.unrecognized_fields[SIGNED_AT] = int(_now().timestamp())
        md.signatures.clear()
        for s in signers:
            md.sign(s, append=True)
        data = md.to_bytes(JSONSerializer(compact=False))
        role = md.signed.type
        if role == Root.type:
            self.store.put(f"{PREFIX}/{md.signed.version}.root.json", data)
        self.store.put(self._key(role), data)

    def _bump(self, md: Metadata[Any], expires_in: timedelta | None = None) -> None:
        md.signed.version += 1
        md.signed.expires = _now() + (expires_in or _EXPIRY[md.signed.type])

    # ---------------------------------------------------------------- operations

    def init(self, root_keys: int = 3, threshold: int = 2) -> str:
        """A new repository: ``root_keys`` root keys (``threshold`` of them must sign a root),
        one key per online role; returns the store key of ``1.root.json`` (the root to install
        on devices, or to pin by its sha256)."""
        if self.exists():
            raise ConversionError(f"{self.store.description} already has a TUF repository")
        if not 1 <= threshold <= root_keys:
            raise ConversionError(f"threshold {threshold} must be 1..{root_keys}")
        roots = [generate_key(self.keydir / f"root-{i + 1}.key") for i in range(root_keys)]
        online = {r: generate_key(self.keydir / f"{r}.key") for r in ONLINE_ROLES}
        now = _now()
        root = Root(expires=now + ROOT_EXPIRY, consistent_snapshot=False)
        for s in roots:
            root.add_key(s.public_key, Root.type)
        root.roles[Root.type].threshold = threshold
        for r, s in online.items():
            root.add_key(s.public_key, r)
        self._write(Metadata(root), roots[:threshold])
        self._write(Metadata(Targets(expires=now + TARGETS_EXPIRY)), [online[Targets.type]])
        self._snapshot_and_timestamp(root, new=True)
        log.info(
            "TUF repository created in %s (root threshold %d)", self.store.description, threshold
        )
        return f"{PREFIX}/1.root.json"

    def _snapshot_and_timestamp(self, root: Root, new: bool = False) -> None:
        targets = self.load(Targets.type)
        now = _now()
        if new:
            snap: Metadata[Any] = Metadata(Snapshot(expires=now + SNAPSHOT_EXPIRY))
        else:
            snap = self.load(Snapshot.type)
            self._bump(snap)
        snap.signed.meta["targets.json"] = MetaFile(version=targets.signed.version)
        self._write(snap, self._signers(Snapshot.type, root))
        if new:
            ts: Metadata[Any] = Metadata(Timestamp(expires=now + TIMESTAMP_EXPIRY))
        else:
            ts = self.load(Timestamp.type)
            self._bump(ts)
        ts.signed.snapshot_meta = MetaFile(version=snap.signed.version)
        self._write(ts, self._signers(Timestamp.type, root))

    def add_target(self, pkg: Package, info: TargetInfo) -> str:
        """Make the stored package of ``pkg`` a target (or update its custom metadata: the
        channels add up; groups, percent, devices and shadow are ``info``'s, so adding a
        shadowed target again without ``shadow`` promotes it)."""
        root = self.load(Root.type).signed
        path = ArtifactKeys.of(pkg.manifest.name, pkg.manifest.version).package
        data = self.store.get(path, MAX_MODEL_BYTES * 2)
        if data is None:
            raise ConversionError(f"{path} is not in {self.store.description}: publish it first")
        targets = self.load(Targets.type)
        old = targets.signed.targets.get(path)
        channels = list(info.channels)
        if old is not None and isinstance(old.custom, dict):
            channels += list(old.custom.get("edge", {}).get("channels", []))
        info = dataclasses.replace(info, channels=channels)
        tf = TargetFile.from_data(path, data, ["sha256"])
        tf.unrecognized_fields["custom"] = info.custom()
        targets.signed.targets[path] = tf
        self._bump(targets)
        self._write(targets, self._signers(Targets.type, root))
        self._snapshot_and_timestamp(root)
        log.info("TUF target %s (%s)", path, info.custom()["edge"])
        return path

    def refresh_timestamp(self, expires_in: timedelta | None = None) -> datetime:
        """A new timestamp (same snapshot, new expiry): what the timer runs; the new expiry.
        ``expires_in`` overrides ``TIMESTAMP_EXPIRY`` (negative: an expired one, for tests)."""
        root = self.load(Root.type).signed
        ts = self.load(Timestamp.type)
        self._bump(ts, expires_in)
        self._write(ts, self._signers(Timestamp.type, root))
        expires: datetime = ts.signed.expires
        return expires

    def rotate_root(
        self,
        add: list[Path] | None = None,
        revoke: list[str] | None = None,
        threshold: int | None = None,
    ) -> int:
        """A new root version: add root keys (key files), revoke root key ids, set the threshold.

        It is signed by the *old* root's threshold (so devices accept it) and by the new one's
        (so it is valid on its own): the key files of both must be in the key directory.
        Returns the new root version.
        """
        old_md = self.load(Root.type)
        old = old_md.signed
        old_signers = self._signers(Root.type, old)
        new_md = Metadata.from_bytes(old_md.to_bytes())
        new = new_md.signed
        for f in add or []:
            new.add_key(load_key(f).public_key, Root.type)
        for keyid in revoke or []:
            new.revoke_key(keyid, Root.type)
        if threshold is not None:
            new.roles[Root.type].threshold = threshold
        role: Role = new.roles[Root.type]
        if len(role.keyids) < role.threshold:
            raise ConversionError(
                f"{len(role.keyids)} root keys cannot meet threshold {role.threshold}"
            )
        self._bump(new_md)
        signers = {s.public_key.keyid: s for s in old_signers}
        signers.update({s.public_key.keyid: s for s in self._signers(Root.type, new)})
        if (
            len([k for k in signers if k in old.roles[Root.type].keyids])
            < old.roles[Root.type].threshold
        ):
            raise ConversionError("the old root's threshold of keys is needed to sign a new root")
        self._write(new_md, list(signers.values()))
        return int(new.version)

    def bundle(self, name: str, version: str) -> bytes:
        """An offline bundle (``*.eatuf``) of a published target: a zip of ``metadata/`` (every
        root version, timestamp, snapshot, targets) and ``targets/<path>``. Devices verify it
        against their trusted root exactly like a refresh over the network."""
        path = ArtifactKeys.of(name, version).package
        targets = self.load(Targets.type)
        if path not in targets.signed.targets:
            raise ConversionError(f"{path} is not a TUF target: run `edge-convert tuf add` first")
        data = self.store.get(path, MAX_MODEL_BYTES * 2)
        if data is None:
            raise ConversionError(f"{path} is not in {self.store.description}")
        root_version = int(self.load(Root.type).signed.version)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for v in range(1, root_version + 1):
                root = self.store.get(f"{PREFIX}/{v}.root.json", _MAX_METADATA)
                if root is None:
                    raise ConversionError(f"{PREFIX}/{v}.root.json is missing from the store")
                zf.writestr(f"metadata/{v}.root.json", root)
            for role in ONLINE_ROLES:
                raw = self.store.get(self._key(role), _MAX_METADATA)
                assert raw is not None
                zf.writestr(f"metadata/{role}.json", raw)
            zf.writestr(f"targets/{path}", data)
        return buf.getvalue()

    def expiries(self) -> dict[str, str]:
        return {r: self.load(r).signed.expires.isoformat() for r in (Root.type, *ONLINE_ROLES)}
