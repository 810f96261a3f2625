"""Deciding whether to take an offered version: trust, freshness, targeting, compatibility.

An ``Offer`` comes from a retained announcement (``offer_from_announcement``) or a package
dropped into ``incoming/`` (``offer_from_package``). ``Decider.decide`` checks, in order, and
refuses with ``UpdateError(reason)``:

1. ``unsigned`` / ``unknown_key`` / ``bad_signature``: Ed25519 (fixed here, never read from
   the offer) over the exact manifest bytes, by one of the configured trusted keys. Unsigned
   offers pass only with ``ota.allow_unsigned`` (development).
2. ``bad_manifest``: the signed bytes do not parse as a manifest.
3. ``wrong_model``: the manifest is for another model than the configured one.
4. ``marked_bad``: this exact build (version + sha256) failed here before.
5. ``version_rollback`` (older than the floor: a replayed old release) and
   ``version_reused`` (the floor's version with another sha256). The floor is the newest
   version this device ever committed (``agent.ota.floor``, ``<state_dir>/ota/floor.json``),
   and the running model's version. ``floor_unreadable`` when the floor file is damaged (fail
   closed). ``up_to_date`` (not a refusal) when it is the running build.
6. ``not_targeted``: the announcement's groups / rollout percentage leave this device out.
7. ``agent_too_old`` / ``incompatible_*`` (``agent.ota.compat``), ``too_large``.

``Decider.commit`` raises the floor once a version is committed (after its smoke test and
health window), never when an offer is merely accepted: a signed build that cannot be
downloaded or fails leaves the floor where it was.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO

import agent
from agent.config import Config
from agent.errors import PackageError, SignatureError, UpdateError
from agent.ota.compat import check_compatible
from agent.ota.floor import VersionFloor
from agent.ota.store import ModelStore
from agent.release.manifest import Announcement, Manifest, Targets, Version, parse_manifest
from agent.release.package import (
    MAX_MANIFEST_BYTES,
    MAX_MODEL_BYTES,
    read_package,
    read_package_head,
)
from agent.release.signing import PublicKey, verify

log = logging.getLogger(__name__)

MAX_ANNOUNCEMENT_BYTES = MAX_MANIFEST_BYTES + 64 * 1024
NOT_A_REFUSAL = frozenset({"up_to_date"})


@dataclass(frozen=True)
class Offer:
    """A version offered to this device, before anything about it is trusted."""

    source: str
    """``channel:<name>`` or ``incoming:<file name>``."""
    manifest_bytes: bytes
    signature: bytes | None
    key_id: str | None
    url: str | None = None
    """Where the model is downloaded from (announcements)."""
    content: bytes | None = None
    """The model bytes, when the offer carries them already read."""
    package: IO[bytes] | None = None
    """An opened package file (a drop-in) whose model entry is inflated only after the
    signature over its manifest verified (``agent.release.package.read_model_entry``)."""
    targets: Targets | None = None
    """Who the offer is for; None for a local drop-in (an operator's deliberate act)."""


@dataclass(frozen=True)
class Accepted:
    """An offer that passed the checks: its manifest and who signed it (None: unsigned)."""

    offer: Offer
    manifest: Manifest
    signer: str | None

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def sha256(self) -> str:
        return self.manifest.artifact.sha256


@dataclass(frozen=True)
class Running:
    """The build serving predictions now."""

    version: str
    sha256: str


# --------------------------------------------------------------------------- offers


def offer_from_announcement(payload: bytes, channel: str, model: str) -> Offer:
    """Parse a retained announcement from ``<prefix>/ota/<channel>/<model>``."""
    if len(payload) > MAX_ANNOUNCEMENT_BYTES:
        raise UpdateError("bad_announcement", f"{len(payload)} bytes is too long")
    try:
        ann = Announcement.model_validate_json(payload)
    except ValueError as exc:
        raise UpdateError("bad_announcement", f"not an announcement: {exc}") from None
    if ann.channel != channel:
        raise UpdateError(
            "wrong_channel",
            f"announcement for channel {ann.channel!r} on the topic of channel {channel!r}",
        )
    signature = None
    if ann.signature is not None:
        try:
            signature = base64.b64decode(ann.signature, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise UpdateError("bad_signature", f"signature is not base64: {exc}") from None
    return Offer(
        source=f"channel:{channel}",
        manifest_bytes=ann.manifest_bytes,
        signature=signature,
        key_id=ann.key_id,
        url=ann.url,
        targets=ann.targets,
    )


def _mode(shadow: bool) -> str:
    return "shadow" if shadow else "active"


def check_shadow_claim(
    payload: bytes, channel: str, model: str, version: str, signed_shadow: bool
) -> None:
    """TUF mode: the announcement that woke the check must not contradict the signed target.

    Whether a release runs as a shadow or serves is the TUF target's (``custom.edge.shadow``,
    signed by the targets role); an announcement is only a hint. When the hint is an
    announcement of the same ``version`` whose ``targets.shadow`` says otherwise, someone is
    wrong (a stale or forged announcement, or a build host that forgot ``--shadow``): refused
    as ``shadow_mismatch`` naming both values, never resolved silently. A hint that is no
    announcement, or announces another version, claims nothing about this one.
    """
    if not payload:
        return
    try:
        offer = offer_from_announcement(payload, channel, model)
        claimed = parse_manifest(offer.manifest_bytes).version
    except (UpdateError, PackageError):
        return
    if claimed != version or offer.targets is None:
        return
    announced = bool(offer.targets.shadow)
    if announced != signed_shadow:
        raise UpdateError(
            "shadow_mismatch",
            f"{version}: the announcement on {channel} says {_mode(announced)} (targets.shadow="
            f"{str(announced).lower()}), the signed TUF target says {_mode(signed_shadow)} "
            f"(custom.edge.shadow={str(signed_shadow).lower()}); nothing installed",
        )


def offer_from_file(name: str, f: IO[bytes]) -> Offer:
    """An offer from an opened package file: only the manifest and signature are read now.

    The model entry stays compressed in the file until the updater reads it with a cap, after
    ``Decider.decide`` verified the signature (a zip bomb is never inflated unsigned).
    """
    try:
        head = read_package_head(f)
    except PackageError as exc:
        raise UpdateError(exc.reason, f"{name}: {exc.detail}") from exc
    return Offer(
        source=f"incoming:{name}",
        manifest_bytes=head.manifest_bytes,
        signature=head.signature.raw() if head.signature is not None else None,
        key_id=head.key_id,
        package=f,
    )


def offer_from_package(name: str, data: bytes) -> Offer:
    """An offer from a package file's bytes (read once: these bytes are what is checked)."""
    try:
        pkg = read_package(data)
    except PackageError as exc:
        raise UpdateError(exc.reason, f"{name}: {exc.detail}") from exc
    return Offer(
        source=f"incoming:{name}",
        manifest_bytes=pkg.manifest_bytes,
        signature=pkg.signature.raw() if pkg.signature is not None else None,
        key_id=pkg.key_id,
        content=pkg.model,
    )


# --------------------------------------------------------------------------- trust


def check_signature(
    manifest_bytes: bytes,
    signature: bytes | None,
    key_id: str | None,
    keys: Sequence[PublicKey],
    allow_unsigned: bool,
) -> str | None:
    """The id of the trusted key that signed ``manifest_bytes`` (None: accepted unsigned)."""
    try:
        return verify(manifest_bytes, signature, key_id, keys).key_id
    except SignatureError as exc:
        if allow_unsigned and exc.reason in ("unsigned", "unknown_key"):
            log.warning("accepting an %s manifest: ota.allow_unsigned is on", exc.reason)
            return None
        raise UpdateError(exc.reason, exc.detail) from exc


def _parse_version(text: str) -> Version | None:
    try:
        return Version.parse(text)
    except ValueError:
        return None


class Decider:
    """Applies the checks in the module doc to offers for the configured model."""

    def __init__(
        self,
        cfg: Config,
        keys: Sequence[PublicKey],
        floor: VersionFloor,
        store: ModelStore,
        agent_version: str = agent.__version__,
    ) -> None:
        self.cfg = cfg
        self.keys = list(keys)
        self.floor = floor
        self.store = store
        self.agent_version = agent_version

    def decide(self, offer: Offer, running: Running) -> Accepted:
        signer = check_signature(
            offer.manifest_bytes,
            offer.signature,
            offer.key_id,
            self.keys,
            self.cfg.ota.allow_unsigned,
        )
        try:
            manifest = parse_manifest(offer.manifest_bytes)
        except PackageError as exc:
            raise UpdateError("bad_manifest", exc.detail) from exc
        if manifest.name != self.cfg.model.name:
            raise UpdateError(
                "wrong_model",
                f"offer is for model {manifest.name!r}, this device runs {self.cfg.model.name!r}",
            )
        self._check_version(manifest, running)
        targets = offer.targets
        if targets is not None and not targets.includes(
            self.cfg.agent.device_id, list(self.cfg.agent.groups), manifest.name, manifest.version
        ):
            raise UpdateError(
                "not_targeted",
                f"{manifest.version} targets groups {targets.groups or 'all'} at "
                f"{targets.percent:g}%; this device is in groups {self.cfg.agent.groups}",
            )
        check_compatible(manifest, self.cfg, self.agent_version)
        if manifest.artifact.size > MAX_MODEL_BYTES:
            raise UpdateError(
                "too_large", f"{manifest.artifact.size} bytes is over {MAX_MODEL_BYTES}"
            )
        return Accepted(offer, manifest, signer)

    def _check_version(self, manifest: Manifest, running: Running) -> None:
        version, sha = manifest.semver, manifest.artifact.sha256
        run_v = _parse_version(running.version)
        if run_v == version and running.sha256 == sha:
            raise UpdateError("up_to_date", f"{manifest.version} is running")
        bad = self.store.bad_reason(manifest.version, sha)
        if bad is not None:
            raise UpdateError(
                "marked_bad", f"{manifest.version} (sha256 {sha[:12]}) failed here before: {bad}"
            )
        floors: list[tuple[Version, str, str]] = []
        stored = self.floor.get(manifest.name)
        if stored is not None and (v := _parse_version(stored[0])) is not None:
            floors.append((v, stored[1], "the highest version accepted"))
        if run_v is not None:
            floors.append((run_v, running.sha256, "the running version"))
        for floor_v, floor_sha, what in floors:
            if version < floor_v:
                raise UpdateError(
                    "version_rollback",
                    f"{manifest.version} is older than {floor_v} ({what}): a replayed release",
                )
            if version == floor_v and sha != floor_sha:
                raise UpdateError(
                    "version_reused",
                    f"{manifest.version} was already accepted with sha256 {floor_sha[:12]}, "
                    f"this one has {sha[:12]}",
                )

    def commit(self, model: str, version: str, sha256: str) -> None:
        """Raise the floor to a committed version: older releases are refused from now on."""
        self.floor.raise_to(model, version, sha256)
