"""The version floor: the newest version this device ever *committed*, per model, on disk.

``<state_dir>/ota/floor.json`` holds ``{"<model>": {"version": ..., "sha256": ...}}``. It rises
only when a version is committed (it passed its smoke test and health window: see
``agent.ota.updater``), never when an offer is merely accepted: a validly signed build that
cannot be downloaded, fails its smoke test or is rolled back leaves the floor where it was, so
one replayed announcement cannot freeze a device's updates.

It fails closed: a floor file that exists but cannot be read or parsed raises
``UpdateError("floor_unreadable")`` on every read, which stops updates (each offer is refused
with that reason, reported and counted) until an operator repairs or removes the file. It never
falls back to something lower (the running version) on its own. A missing file means a device
that never committed an update: the running version is the only floor.

The same record tells ``agent.ota.boot`` whether the installed ``current`` version was ever
committed, which is how a damaged ``state.json`` during a trial is recognised.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from agent.errors import UpdateError
from agent.ota.files import atomic_write_json
from agent.release.manifest import Version

log = logging.getLogger(__name__)


class VersionFloor:
    """The committed version (and its sha256) per model; see the module doc."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _load(self) -> dict[str, dict[str, str]]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise UpdateError(
                "floor_unreadable", f"cannot read the version floor {self.path}: {exc}"
            ) from exc
        try:
            obj = json.loads(raw)
            if not isinstance(obj, dict):
                raise ValueError("not a JSON object")
            out: dict[str, dict[str, str]] = {}
            for model, entry in obj.items():
                version, sha = str(entry["version"]), str(entry["sha256"])
                Version.parse(version)
                out[str(model)] = {"version": version, "sha256": sha}
        except (ValueError, TypeError, KeyError) as exc:
            raise UpdateError(
                "floor_unreadable",
                f"the version floor {self.path} is damaged ({exc}): updates stop until it is "
                "repaired or removed",
            ) from None
        return out

    def get(self, model: str) -> tuple[str, str] | None:
        """The committed ``(version, sha256)`` of ``model``; None if none was ever committed.

        Raises ``UpdateError("floor_unreadable")`` when the file is damaged (fail closed).
        """
        entry = self._load().get(model)
        return None if entry is None else (entry["version"], entry["sha256"])

    def raise_to(self, model: str, version: str, sha256: str) -> None:
        """Record a committed version (never lowers the floor)."""
        data = self._load()
        cur = data.get(model)
        if cur is not None and Version.parse(cur["version"]) > Version.parse(version):
            return
        data[model] = {"version": version, "sha256": sha256}
        atomic_write_json(self.path, data)
        log.info("version floor of %s is now %s", model, version)
