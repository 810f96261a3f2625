"""Publishing a package: upload to the artifact store, then announce it on its channel.

Rules (docs/manifest.md):

* A version is immutable: if the store already holds ``<model>/<version>`` with a different
  artifact hash, publishing is refused (bump the version), ``--force`` or not.
* Within a channel versions only go up: announcing a version older than the channel's current
  one is refused unless ``force``.
* Publishing is idempotent: the same version with the same hash uploads nothing new and
  re-announces (a fresh ``published_at``, possibly new targets) -- after re-hashing the stored
  model: a copy that no longer matches the manifest is uploaded again from the package.

The checks run before anything is uploaded, and the announcement goes out only after every
file is in the store, so a device never hears of a version it cannot download.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from agent.errors import ConversionError, PackageError
from agent.release.manifest import Announcement, Version, parse_manifest
from agent.release.package import MAX_MANIFEST_BYTES, Package, check_artifact, verify_signature
from agent.release.signing import load_trusted_keys
from converters.announce import announce, current_announcement, make_announcement
from converters.progress import Progress
from converters.settings import PublishSettings
from converters.store import ArtifactKeys, ArtifactStore, channel_key, open_store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Published:
    """What a publish did."""

    announcement: Announcement
    url: str
    package_url: str
    uploaded: bool
    topic: str | None


def _store_manifest_sha(store: ArtifactStore, keys: ArtifactKeys) -> str | None:
    data = store.get(keys.manifest, MAX_MANIFEST_BYTES)
    if data is None:
        return None
    try:
        return parse_manifest(data).artifact.sha256
    except PackageError as exc:
        raise ConversionError(f"{keys.manifest} in the store is unreadable: {exc}") from exc


def _channel_current(
    store: ArtifactStore, settings: PublishSettings, name: str
) -> list[tuple[str, Announcement]]:
    """The channel's current announcement(s): the broker's retained one and the store's copy."""
    found: list[tuple[str, Announcement]] = []
    if settings.mqtt is not None:
        ann = current_announcement(settings.mqtt, settings.channel, name)
        if ann is not None:
            found.append(("broker", ann))
    data = store.get(channel_key(name, settings.channel), MAX_MANIFEST_BYTES + 65536)
    if data is not None:
        try:
            found.append(("store", Announcement.model_validate_json(data)))
        except ValueError as exc:
            log.warning("ignoring unreadable channel file in the store: %s", exc)
    return found


def check_publishable(pkg: Package, store: ArtifactStore, settings: PublishSettings) -> bool:
    """Refuse what must not be published; True when the version's files are already stored."""
    m = pkg.manifest
    check_artifact(m, pkg.model)
    if settings.trusted_keys:
        verify_signature(pkg, load_trusted_keys(settings.trusted_keys))
    elif pkg.signature is None:
        log.warning(
            "publishing unsigned package %s: devices that require signatures reject it",
            pkg.filename,
        )
    keys = ArtifactKeys.of(m.name, m.version)
    stored_sha = _store_manifest_sha(store, keys)
    if stored_sha is not None and stored_sha != m.artifact.sha256:
        raise ConversionError(
            f"{m.name} {m.version} is already published with a different model "
            f"(sha256 {stored_sha[:12]}..., this one {m.artifact.sha256[:12]}...): versions are "
            "immutable, bump the version"
        )
    new = m.semver
    for where, ann in _channel_current(store, settings, m.name):
        try:
            cur = parse_manifest(ann.manifest_bytes)
        except PackageError as exc:
            log.warning(
                "channel %s (%s) holds an unreadable manifest: %s", settings.channel, where, exc
            )
            continue
        old = cur.semver
        if new == old and cur.artifact.sha256 != m.artifact.sha256:
            raise ConversionError(
                f"channel {settings.channel} ({where}) already has {m.name} {cur.version} with "
                "a different model hash: bump the version"
            )
        if new < old:
            if not settings.force:
                raise ConversionError(
                    f"channel {settings.channel} ({where}) is at {m.name} {cur.version}; "
                    f"{m.version} is older (use --force to roll the channel back)"
                )
            log.warning("forcing %s back from %s to %s on %s", m.name, old, new, settings.channel)
    return stored_sha is not None


def stored_model_intact(pkg: Package, store: ArtifactStore, keys: ArtifactKeys) -> bool:
    """Re-hash the stored model of an already published version against the manifest: a file
    corrupted in the store must never be announced again. Logs both hashes when it differs."""
    m = pkg.manifest
    data = store.get(keys.model, m.artifact.size + 1)
    digest = None if data is None else hashlib.sha256(data).hexdigest()
    if data is not None and len(data) == m.artifact.size and digest == m.artifact.sha256:
        return True
    found = "missing" if data is None else f"{len(data)} bytes, sha256 {digest}"
    log.warning(
        "%s in %s is not the published model (%s; the manifest says %d bytes, sha256 %s): "
        "uploading it again before announcing",
        keys.model,
        store.description,
        found,
        m.artifact.size,
        m.artifact.sha256,
    )
    return False


def upload(pkg: Package, store: ArtifactStore, keys: ArtifactKeys) -> None:
    """Model and package first, manifest and signature last: a manifest means complete."""
    files = [(keys.model, pkg.model), (keys.package, pkg.to_bytes())]
    if pkg.signature is not None:
        files.append((keys.signature, pkg.signature.to_bytes()))
    files.append((keys.manifest, pkg.manifest_bytes))
    with Progress(f"uploading {pkg.filename} to {store.description}", total=len(files)) as bar:
        for key, data in files:
            store.put(key, data)
            bar.advance()


def publish_package(
    pkg: Package, settings: PublishSettings, store: ArtifactStore | None = None
) -> Published:
    """Check, upload (unless already there), write the channel file and announce."""
    store = store or open_store(settings.store, settings.base_url, settings.s3_endpoint_url)
    m = pkg.manifest
    already = check_publishable(pkg, store, settings)
    keys = ArtifactKeys.of(m.name, m.version)
    if already and not stored_model_intact(pkg, store, keys):
        already = False  # the package's verified bytes replace the corrupted copy
    if already:
        log.info(
            "%s %s is already in %s: not uploading again", m.name, m.version, store.description
        )
    else:
        upload(pkg, store, keys)
    ann = make_announcement(
        pkg, settings.channel, store.url(keys.model), store.url(keys.package), settings.targets
    )
    topic = None
    if settings.mqtt is not None:
        topic = announce(settings.mqtt, ann, m.name)
    else:
        log.info("no MQTT broker configured: %s %s uploaded, not announced", m.name, m.version)
    store.put(channel_key(m.name, settings.channel), ann.to_bytes())
    return Published(ann, store.url(keys.model), store.url(keys.package), not already, topic)


def next_version(store: ArtifactStore, name: str, initial: str) -> str:
    """The next patch version after the newest stored one (``initial`` when none)."""
    found: list[Version] = []
    for text in store.versions(name):
        try:
            found.append(Version.parse(text))
        except ValueError:
            continue
    return str(max(found).next_patch()) if found else initial
