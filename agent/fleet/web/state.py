"""What the dashboard knows: the ``FleetView`` plus what a page needs beyond it.

``Dashboard.handle`` takes every MQTT message of the dashboard's subscription (paho's network
thread; parse and store only) and passes the devices' status/OTA/metrics on to the
``FleetView`` (agent/fleet/view.py: the one reading of those payloads), keeping beside it:

* per device, the last hour of (time, prediction rate, invoke and pipeline p50 latency) from
  its metrics, for the device page's chart;
* per device, the OTA states it went through while the dashboard watched (the retained one
  first), for the OTA history;
* the live predictions of devices whose page is open (subscribed on demand: a fleet's
  prediction stream is not something to take in whole);
* every channel's retained announcement (``<prefix>/ota/<channel>/<model>``), for the
  releases page.

Pages wait on ``wait_change`` (one counter for everything, like ``FleetView``'s).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from agent.errors import PackageError
from agent.fleet.view import FAILED, IN_PROGRESS, DeviceState, FleetView, OtaReport, parse_ota_state
from agent.release.manifest import Announcement, Manifest, parse_manifest

log = logging.getLogger(__name__)

HISTORY_S = 3600.0
SNAPSHOT_MAX_AGE_S = 1.0
"""A copy of every device's state is reused for this long while the fleet changes (with
10,000 devices a copy takes a few hundred ms; the pages and their event streams share it)."""
PREDICTIONS_KEPT = 20
OTA_HISTORY_KEPT = 50

STATES = ("online", "offline", "updating", "failed")
"""Device state filter values: online/offline (status), updating (an OTA in progress),
failed (the OTA state is failed or rolled back, or the last offer was refused)."""


@dataclass(frozen=True)
class MetricsPoint:
    """One metrics report of a device: rate and p50 latencies (ms)."""

    ts: float
    rate: float | None
    invoke_p50_ms: float | None
    pipeline_p50_ms: float | None


@dataclass(frozen=True)
class OtaEvent:
    """An OTA report as received (epoch seconds), with the refusal it carried if any."""

    received: float
    report: OtaReport
    refusal: OtaReport | None


@dataclass(frozen=True)
class Release:
    """What a channel announces for a model, or the problem reading it."""

    channel: str
    model: str
    announcement: Announcement | None
    manifest: Manifest | None
    problem: str | None


@dataclass(frozen=True)
class Page:
    """One page of the device list."""

    devices: list[DeviceState]
    total: int
    page: int
    per_page: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))


def _num(v: object) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _p50(latency: object, key: str) -> float | None:
    if isinstance(latency, dict) and isinstance(latency.get(key), dict):
        return _num(latency[key].get("p50"))
    return None


def device_state(d: DeviceState) -> str:
    """The one word the state filter matches."""
    if d.ota is not None and d.ota.state in FAILED:
        return "failed"
    if d.ota is not None and d.ota.state in IN_PROGRESS:
        return "updating"
    return {True: "online", False: "offline", None: "unknown"}[d.online]


class Dashboard:
    """Thread-safe state behind every page; fed by ``handle``."""

    def __init__(self, prefix: str, clock: Callable[[], float] = time.time) -> None:
        self.prefix = prefix
        self.view = FleetView(prefix, clock)
        self._clock = clock
        self._cond = threading.Condition()
        self._changes = 0
        self._history: dict[str, deque[MetricsPoint]] = {}
        self._ota: dict[str, deque[OtaEvent]] = {}
        self._predictions: dict[str, deque[dict[str, Any]]] = {}
        self._releases: dict[tuple[str, str], Release] = {}
        self._watched: set[str] = set()
        self._snap_lock = threading.Lock()
        self._snap: list[DeviceState] | None = None
        self._snap_index: dict[str, DeviceState] = {}
        self._snap_changes = -1
        self._snap_at = 0.0
        self.subscribe: Callable[[str], None] = lambda topic_filter: None
        """Set by the MQTT side: subscribe one more filter (live predictions)."""
        self.connected: Callable[[], bool] = lambda: False

    def filters(self) -> list[str]:
        return [*self.view.filters(), f"{self.prefix}/ota/+/+"]

    # ---------------------------------------------------------------- input

    def handle(self, topic: str, payload: bytes) -> None:
        """One message (paho's network thread): store it, wake the pages."""
        try:
            self._handle(topic, payload)
        except Exception:  # a malformed message must not kill the network thread
            log.exception("cannot read %s", topic)
        self.touch()

    def _handle(self, topic: str, payload: bytes) -> None:
        head = self.prefix + "/"
        if not topic.startswith(head):
            return
        parts = topic[len(head) :].split("/")
        if len(parts) == 3 and parts[0] == "ota":
            self._release(parts[1], parts[2], payload)
            return
        if len(parts) == 3 and parts[1] == "prediction":
            self._prediction(parts[0], payload)
            return
        self.view.handle(topic, payload)
        if len(parts) != 2:
            return
        device, kind = parts
        if kind == "metrics":
            self._metrics(device, payload)
        elif kind == "ota":
            self._ota_event(device, payload)

    def _metrics(self, device: str, payload: bytes) -> None:
        obj = json.loads(payload)
        if not isinstance(obj, dict):
            return
        rates = obj.get("rates")
        latency = obj.get("latency_ms")
        point = MetricsPoint(
            ts=_num(obj.get("ts")) or self._clock(),
            rate=_num(rates.get("predictions_per_s")) if isinstance(rates, dict) else None,
            invoke_p50_ms=_p50(latency, "invoke"),
            pipeline_p50_ms=_p50(latency, "pipeline"),
        )
        with self._cond:
            hist = self._history.setdefault(device, deque())
            hist.append(point)
            while hist and hist[0].ts < point.ts - HISTORY_S:
                hist.popleft()

    def _ota_event(self, device: str, payload: bytes) -> None:
        report, refusal = parse_ota_state(payload)
        if report is None:
            return
        with self._cond:
            events = self._ota.setdefault(device, deque(maxlen=OTA_HISTORY_KEPT))
            if events and events[-1].report == report and events[-1].refusal == refusal:
                return
            events.append(OtaEvent(self._clock(), report, refusal))

    def _prediction(self, device: str, payload: bytes) -> None:
        obj = json.loads(payload)
        items = obj.get("batch") if isinstance(obj, dict) and "batch" in obj else [obj]
        if not isinstance(items, list):
            return
        with self._cond:
            kept = self._predictions.setdefault(device, deque(maxlen=PREDICTIONS_KEPT))
            kept.extend(p for p in items if isinstance(p, dict))

    def _release(self, channel: str, model: str, payload: bytes) -> None:
        ann = manifest = problem = None
        if payload:
            try:
                ann = Announcement.model_validate_json(payload)
                manifest = parse_manifest(ann.manifest_bytes)
            except ValidationError as exc:
                problem = f"not an announcement ({exc.error_count()} problem(s))"
            except PackageError as exc:
                problem = f"{exc.reason}: {exc.detail}"
        with self._cond:
            if ann is None and problem is None:
                self._releases.pop((channel, model), None)  # cleared
            else:
                self._releases[(channel, model)] = Release(channel, model, ann, manifest, problem)

    def touch(self) -> None:
        """Something changed (a message, a rollout's progress): wake the pages."""
        with self._cond:
            self._changes += 1
            self._cond.notify_all()

    # ---------------------------------------------------------------- output

    @property
    def changes(self) -> int:
        with self._cond:
            return self._changes

    def wait_change(self, seen: int, timeout: float) -> int:
        """Block until the change counter differs from ``seen`` (or ``timeout``); the counter."""
        with self._cond:
            self._cond.wait_for(lambda: self._changes != seen, timeout)
            return self._changes

    def snapshot(self) -> tuple[list[DeviceState], int]:
        """Every device's state (sorted by id) and the change count it reflects: a copy
        shared by every page for up to ``SNAPSHOT_MAX_AGE_S`` (while nothing changed, for
        ever). A stream that sees an older count than the current one renders again."""
        with self._snap_lock:
            changes = self.changes
            now = time.monotonic()
            if self._snap is None or (
                changes != self._snap_changes and now - self._snap_at >= SNAPSHOT_MAX_AGE_S
            ):
                self._snap = self.view.devices()
                self._snap_index = {d.device: d for d in self._snap}
                self._snap_changes, self._snap_at = changes, now
            return self._snap, self._snap_changes

    def query(
        self,
        *,
        group: str | None = None,
        version: str | None = None,
        state: str | None = None,
        search: str | None = None,
        page: int = 1,
        per_page: int = 50,
        devices: list[DeviceState] | None = None,
    ) -> Page:
        """Filtered and paged devices (sorted by id; of ``devices``, default all)."""
        found = [
            d
            for d in (self.view.devices() if devices is None else devices)
            if (not group or group in d.groups)
            and (not version or d.version == version)
            and (not state or device_state(d) == state)
            and (not search or search in d.device)
        ]
        per_page = max(1, min(per_page, 500))
        pages = max(1, -(-len(found) // per_page))
        page = max(1, min(page, pages))
        start = (page - 1) * per_page
        return Page(found[start : start + per_page], len(found), page, per_page)

    def facets(self, devices: list[DeviceState]) -> tuple[list[str], list[str]]:
        """Every group and every model version among ``devices`` (for the filter menus)."""
        groups: set[str] = set()
        versions: set[str] = set()
        for d in devices:
            groups.update(d.groups)
            if d.version:
                versions.add(d.version)
        return sorted(groups), sorted(versions)

    def device(self, device: str) -> tuple[DeviceState | None, int]:
        """One device's state from the snapshot, and the change count it reflects (a device
        the snapshot does not know yet takes a fresh one)."""
        _, changes = self.snapshot()
        with self._snap_lock:
            found = self._snap_index.get(device)
            if found is None and changes != self.changes:
                self._snap = None
        if found is None:
            _, changes = self.snapshot()
            with self._snap_lock:
                found = self._snap_index.get(device)
        return found, changes

    def history(self, device: str) -> list[MetricsPoint]:
        with self._cond:
            return list(self._history.get(device, ()))

    def ota_history(self, device: str) -> list[OtaEvent]:
        with self._cond:
            return list(self._ota.get(device, ()))

    def predictions(self, device: str) -> list[dict[str, Any]]:
        with self._cond:
            return list(self._predictions.get(device, ()))

    def watch_predictions(self, device: str) -> None:
        """Start taking in ``device``'s predictions (once per device)."""
        with self._cond:
            if device in self._watched:
                return
            self._watched.add(device)
        self.subscribe(f"{self.prefix}/{device}/prediction/+")

    def releases(self) -> list[Release]:
        with self._cond:
            return [r for _, r in sorted(self._releases.items())]

    def release(self, channel: str, model: str) -> Release | None:
        with self._cond:
            return self._releases.get((channel, model))
