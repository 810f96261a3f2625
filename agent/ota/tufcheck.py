"""The TUF check, run in a short-lived child process: ``python -m agent.ota.tufcheck``.

Why a child: ``import tuf.ngclient`` costs ~9 MB of RSS and 50-80 ms (securesystemslib's
signer modules are most of it), which the daemon must not carry for a check that runs once an
hour; and parsing untrusted metadata stays out of the daemon's address space. The parent
(``agent.ota.tufclient``) passes a JSON request on stdin and reads one JSON answer on stdout.

The child refreshes the metadata with python-tuf's ngclient (root chain, timestamp, snapshot,
targets: signatures, thresholds, versions, expiry, snapshot consistency, lengths and hashes are
TUF's checks) through the project's own transfer code (``agent.ota.download.stream_url``: one
deadline, the bandwidth cap), then picks the newest target for the model on the channel from
the *verified* targets metadata, by its custom metadata (channel, groups, percent, devices),
and answers with it and whether it is to run as a shadow (``custom.edge.shadow``). It downloads no
target: the parent does, with its resumable fetcher, against the length and sha256 the child
vouched for. Offline, ``bundle`` names a zip (``metadata/...``, ``targets/...``) read instead
of the network, verified against the same trusted root.
"""

from __future__ import annotations

import json
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, Targets
from tuf.ngclient.config import UpdaterConfig
from tuf.ngclient.fetcher import FetcherInterface
from tuf.ngclient.updater import Updater

from agent.errors import UpdateError
from agent.ota.download import stream_url
from agent.release.manifest import Targets as Targeting
from agent.release.manifest import Version

BUNDLE_METADATA = "bundle://metadata/"
BUNDLE_TARGETS = "bundle://targets/"


class ProjectFetcher(FetcherInterface):
    """TUF's fetcher seam on the project's transfer code (deadline, bandwidth cap)."""

    def __init__(self, deadline: float, bandwidth_bps: float | None) -> None:
        self._deadline = deadline
        self._bps = bandwidth_bps

    def _fetch(self, url: str) -> Iterator[bytes]:
        try:
            yield from stream_url(url, deadline=self._deadline, bandwidth_bps=self._bps)
        except UpdateError as exc:
            if exc.reason == "not_found":
                raise tuf_errors.DownloadHTTPError(exc.detail, 404) from exc
            if exc.reason == "download_timeout":
                raise tuf_errors.SlowRetrievalError(exc.detail) from exc
            raise tuf_errors.DownloadError(exc.detail) from exc


class BundleFetcher(FetcherInterface):
    """Reads ``bundle://`` URLs from an offline bundle zip (USB stick, scp)."""

    def __init__(self, bundle: Path) -> None:
        self._zip = zipfile.ZipFile(bundle)

    def target_paths(self) -> set[str]:
        prefix = BUNDLE_TARGETS[len("bundle://") :]
        return {n[len(prefix) :] for n in self._zip.namelist() if n.startswith(prefix)}

    def _fetch(self, url: str) -> Iterator[bytes]:
        if not url.startswith("bundle://"):
            raise tuf_errors.DownloadError(f"{url} is not in the bundle")
        name = url[len("bundle://") :]
        try:
            f = self._zip.open(name)
        except KeyError:
            raise tuf_errors.DownloadHTTPError(f"{name} is not in the bundle", 404) from None
        with f:
            while chunk := f.read(65536):
                yield chunk


_REASONS: list[tuple[type[Exception], str]] = [
    (tuf_errors.ExpiredMetadataError, "metadata_expired"),
    (tuf_errors.UnsignedMetadataError, "metadata_unsigned"),
    (tuf_errors.BadVersionNumberError, "metadata_rollback"),
    (tuf_errors.LengthOrHashMismatchError, "metadata_mismatch"),
    (tuf_errors.RepositoryError, "metadata_rejected"),
    (tuf_errors.SlowRetrievalError, "metadata_timeout"),
    (tuf_errors.DownloadLengthMismatchError, "metadata_too_large"),
    (tuf_errors.DownloadError, "metadata_download_failed"),
]
"""TUF's errors as stable refusal reasons (first match wins: subclasses first)."""


def reason_of(exc: Exception) -> str:
    """The refusal reason for a TUF client exception (``metadata_rejected`` if unknown)."""
    for cls, reason in _REASONS:
        if isinstance(exc, cls):
            return reason
    return "metadata_rejected"


def _edge(custom: Any) -> dict[str, Any] | None:
    if not isinstance(custom, dict) or not isinstance(custom.get("edge"), dict):
        return None
    e: dict[str, Any] = custom["edge"]
    return e


def choose(targets: Targets, req: dict[str, Any]) -> dict[str, Any] | None:
    """The newest target for the model on the channel that targets this device."""
    best: tuple[Version, dict[str, Any]] | None = None
    for path, tf in targets.targets.items():
        e = _edge(tf.custom)
        if e is None or e.get("model") != req["model"]:
            continue
        offline = bool(req.get("bundle"))  # a drop-in: an operator's deliberate act
        if offline and path not in req.get("bundle_paths", ()):
            continue  # a bundle carries one package: only that one is a candidate
        if not offline and req["channel"] not in (e.get("channels") or []):
            continue
        try:
            v = Version.parse(str(e["version"]))
            percent = float(str(e.get("percent", "100")))
            shadow = e.get("shadow", False)
            if not isinstance(shadow, bool):
                continue  # signed but malformed: never guessed
            devices = e.get("devices")
            targeting = Targeting(
                groups=list(e.get("groups") or []),
                percent=percent,
                devices=None if devices is None else list(devices),
                shadow=shadow or None,
            )
        except (ValueError, KeyError, TypeError):
            continue
        if not offline and not targeting.includes(
            req["device"], list(req["groups"]), req["model"], str(e["version"])
        ):
            continue
        sha = tf.hashes.get("sha256")
        if sha is None:
            continue
        if best is None or v > best[0]:
            best = (
                v,
                {
                    "path": path,
                    "length": tf.length,
                    "sha256": sha,
                    "version": str(e["version"]),
                    "groups": targeting.groups,
                    "percent": targeting.percent,
                    "devices": targeting.devices,
                    "shadow": bool(targeting.shadow),
                },
            )
    return None if best is None else best[1]


def check(req: dict[str, Any]) -> dict[str, Any]:
    """Refresh, choose, answer (the JSON protocol of this module)."""
    metadata_dir = Path(req["metadata_dir"])
    bundle = req.get("bundle")
    fetcher: FetcherInterface
    if bundle:
        bf = BundleFetcher(Path(bundle))
        fetcher = bf
        metadata_url, targets_url = BUNDLE_METADATA, BUNDLE_TARGETS
        req = {**req, "bundle_paths": bf.target_paths()}
    else:
        fetcher = ProjectFetcher(
            time.monotonic() + float(req["timeout_s"]), req.get("bandwidth_bps")
        )
        metadata_url, targets_url = req["metadata_url"], req["targets_url"]
    try:
        up = Updater(
            str(metadata_dir),
            metadata_url,
            target_base_url=targets_url,
            fetcher=fetcher,
            config=UpdaterConfig(max_root_rotations=64),
            bootstrap=None,
        )
        up.refresh()
        targets = Metadata[Targets].from_file(str(metadata_dir / "targets.json")).signed
        ts = Metadata.from_file(str(metadata_dir / "timestamp.json")).signed
        root = Metadata.from_file(str(metadata_dir / "root.json")).signed
    except Exception as exc:  # every TUF refusal, whatever its class
        return {"ok": False, "reason": reason_of(exc), "detail": f"{type(exc).__name__}: {exc}"}
    target = choose(targets, req)
    if target is not None:
        target["url"] = targets_url.rstrip("/") + "/" + target["path"]
        if bundle:
            target["url"] = "targets/" + target["path"]  # the zip entry
    return {
        "ok": True,
        "target": target,
        "expires": ts.expires.timestamp(),
        "root_version": root.version,
        "signed_at": ts.unrecognized_fields.get("x-edge-signed-at"),
        "targets_version": targets.version,
    }


def main() -> int:
    """Run one TUF check: request JSON on stdin, result JSON on stdout."""
    req = json.loads(sys.stdin.read())
    json.dump(check(req), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
