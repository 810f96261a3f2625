"""The fleet as its devices report it: online state, model, OTA state, metrics.

``FleetView`` subscribes (through ``agent.delivery.mqtt.MqttLink``) to

    <prefix>/+/status    retained "online" / "offline" (the agents' last will)
    <prefix>/+/ota       retained OTA state (JSON, written by the agents' updater)
    <prefix>/+/metrics   periodic ``MetricsV1`` (not retained: seen as the agents report)

and keeps one ``DeviceState`` per device, updated from paho's network thread (the handler only
parses and stores; waiting is done with a condition variable).

Parsing is lenient on purpose: a fleet runs several agent versions at once, so a field a
device does not send is shown as unknown instead of hiding the device.

OTA state: the updater's retained ``OtaStateV1`` (agent/ota/report.py): ``state`` (idle,
downloading, verifying, staged, active, rolled_back, failed), the ``version`` it is about,
``running``, ``health`` (watching/passed while active), ``reason`` and the last ``refusal``.
A version *succeeded* on a device when it is ``active`` and through its health window; it
*failed* when the device reports ``failed`` or ``rolled_back`` for it, or refused it for a
reason other than "not for me" (``not_targeted``, ``up_to_date``, ``wrong_model``,
``wrong_channel``). Every finished outcome is remembered per version
(``DeviceState.outcomes``), so a rollout still sees a failure after the device moved on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from agent.config import MqttSection
from agent.delivery.mqtt import MqttLink
from agent.errors import PublishError
from agent.wire.topics import FleetTopics

log = logging.getLogger(__name__)

FAILED = frozenset({"failed", "rolled_back"})
IN_PROGRESS = frozenset({"downloading", "verifying", "staged"})
NOT_A_FAILURE = frozenset({"not_targeted", "up_to_date", "wrong_model", "wrong_channel"})
"""Refusal reasons that say "not for me", not "this package is bad"."""


@dataclass(frozen=True)
class OtaReport:
    state: str
    version: str | None = None
    running: str | None = None
    health: str | None = None
    model: str | None = None
    reason: str | None = None
    ts: float | None = None

    @property
    def failed(self) -> bool:
        return self.state in FAILED or self.state == "refused"

    @property
    def succeeded(self) -> bool:
        """Active and through its health window, or running as a shadow (targets.shadow)."""
        return (self.state == "active" and self.health != "watching") or self.state == "shadow"

    @property
    def finished(self) -> bool:
        return self.failed or self.succeeded


@dataclass(frozen=True)
class ShadowSummary:
    """The part of a retained shadow report (``ShadowReportV1``) the fleet tools read."""

    version: str
    windows: int
    agreement: float | None
    errors: int
    ts: float | None = None

    def passes(self, min_agreement: float, min_windows: int) -> str | None:
        """None when it passes, else why not."""
        if self.windows < min_windows:
            return f"{self.windows} windows compared < {min_windows}"
        if self.agreement is None:
            return "no top-1 agreement (not a classifier)"
        if self.agreement < min_agreement:
            return f"agreement {self.agreement:.4f} < {min_agreement}"
        return None


@dataclass
class DeviceState:
    device: str
    online: bool | None = None
    model: str | None = None
    version: str | None = None
    groups: list[str] = field(default_factory=list)
    ota_channels: list[str] | None = None
    ota: OtaReport | None = None
    outcomes: dict[str, OtaReport] = field(default_factory=dict)
    """Version -> the last finished OTA report for it (success or failure)."""
    last_seen: float | None = None
    prediction_rate: float | None = None
    queue_depth: int | None = None
    agent_version: str | None = None
    has_metrics: bool = False
    drift_score: float | None = None
    """Largest drift PSI (MetricsV1.drift.score); None: not monitored."""
    drift_alert: bool = False
    drift_channels: list[str] = field(default_factory=list)
    """Channels of the retained drift alert while it is raised."""
    shadow: ShadowSummary | None = None

    def to_json(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        ota = None
        if self.ota is not None:
            ota = {
                "state": self.ota.state,
                "version": self.ota.version,
                "running": self.ota.running,
                "health": self.ota.health,
                "reason": self.ota.reason,
            }
        return {
            "device": self.device,
            "online": self.online,
            "groups": list(self.groups),
            "model": self.model,
            "version": self.version,
            "agent_version": self.agent_version,
            "ota": ota,
            "last_seen": self.last_seen,
            "last_seen_age_s": None
            if self.last_seen is None
            else round(max(0.0, now - self.last_seen), 1),
            "prediction_rate": self.prediction_rate,
            "queue_depth": self.queue_depth,
            "drift": {
                "score": self.drift_score,
                "alert": self.drift_alert,
                "channels": list(self.drift_channels),
            },
            "shadow": None
            if self.shadow is None
            else {
                "version": self.shadow.version,
                "windows": self.shadow.windows,
                "agreement": self.shadow.agreement,
                "errors": self.shadow.errors,
            },
        }


def _str(v: object) -> str | None:
    return v if isinstance(v, str) and v else None


def _ts(obj: dict[str, Any]) -> float | None:
    v = obj.get("ts")
    if isinstance(v, int | float) and not isinstance(v, bool):
        return float(v)
    text = obj.get("updated_at")
    if isinstance(text, str):
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    return None


def parse_ota_state(payload: bytes) -> tuple[OtaReport | None, OtaReport | None]:
    """The retained ``OtaStateV1`` (agent/ota/report.py), read leniently: (state, refusal).

    ``refusal`` is the device's most recent refused offer as a ``refused`` report (None when
    there is none, or when its reason only means "not for me"). An empty message (cleared)
    gives (None, None).
    """
    if not payload.strip():
        return None, None
    try:
        obj = json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        return OtaReport(state="unreadable"), None
    if not isinstance(obj, dict):
        return OtaReport(state="unreadable"), None
    state = _str(obj.get("state")) or "unknown"
    report = OtaReport(
        state=state.lower(),
        version=_str(obj.get("version")),
        running=_str(obj.get("running")),
        health=_str(obj.get("health")),
        model=_str(obj.get("model")),
        reason=_str(obj.get("reason")),
        ts=_ts(obj),
    )
    refusal = None
    ref = obj.get("refusal")
    if isinstance(ref, dict) and _str(ref.get("version")):
        reason = _str(ref.get("reason")) or "refused"
        at = ref.get("at")
        if reason not in NOT_A_FAILURE:
            refusal = OtaReport(
                state="refused",
                version=_str(ref.get("version")),
                model=report.model,
                reason=reason,
                ts=float(at) if isinstance(at, int | float) else report.ts,
            )
    return report, refusal


class FleetView:
    """Thread-safe state of every device seen under ``prefix``."""

    def __init__(self, prefix: str, clock: Callable[[], float] = time.time) -> None:
        self.prefix = prefix
        self.topics = FleetTopics(prefix)
        self._clock = clock
        self._devices: dict[str, DeviceState] = {}
        self._cond = threading.Condition()
        self._changes = 0

    def filters(self) -> list[str]:
        return self.topics.filters

    # ---------------------------------------------------------------- input

    def handle(self, topic: str, payload: bytes) -> None:
        """One message from the broker (paho's network thread): parse and store."""
        parts = self.topics.split(topic)
        if parts is None:
            return
        device, kind = parts
        try:
            if kind == "status":
                self._status(device, payload)
            elif kind == "ota":
                self._ota(device, payload)
            elif kind == "metrics":
                self._metrics(device, payload)
            elif kind == "drift":
                self._drift(device, payload)
            elif kind == "shadow":
                self._shadow(device, payload)
        except Exception:  # a malformed message must not kill the network thread
            log.exception("cannot read %s", topic)

    def _update(self, device: str, fn: Callable[[DeviceState], None]) -> None:
        with self._cond:
            st = self._devices.get(device)
            if st is None:
                st = self._devices[device] = DeviceState(device)
            fn(st)
            self._changes += 1
            self._cond.notify_all()

    def _status(self, device: str, payload: bytes) -> None:
        text = payload.decode("utf-8", "replace").strip().lower()
        online = True if text == "online" else False if text == "offline" else None

        def fn(st: DeviceState) -> None:
            st.online = online

        self._update(device, fn)

    def _ota(self, device: str, payload: bytes) -> None:
        report, refusal = parse_ota_state(payload)
        received = self._clock()

        def remember(st: DeviceState, r: OtaReport) -> None:
            if not (r.finished and r.version):
                return
            done = st.outcomes.get(r.version)
            if r.state == "refused" and done is not None and done.succeeded:
                return  # a refusal of a version the device already runs says nothing new
            st.outcomes[r.version] = r if r.ts is not None else replace(r, ts=received)

        def fn(st: DeviceState) -> None:
            st.ota = report
            for r in (report, refusal):
                if r is not None:
                    remember(st, r)
            if report is not None and report.ts is not None:
                st.last_seen = max(st.last_seen or 0.0, report.ts)

        self._update(device, fn)

    def _metrics(self, device: str, payload: bytes) -> None:
        obj = json.loads(payload)
        if not isinstance(obj, dict):
            return
        received = self._clock()

        def fn(st: DeviceState) -> None:
            st.has_metrics = True
            model = obj.get("model")
            if isinstance(model, dict):
                st.model = _str(model.get("name")) or st.model
                st.version = _str(model.get("version")) or st.version
            groups = obj.get("groups")
            if isinstance(groups, list):
                st.groups = [g for g in groups if isinstance(g, str)]
            channels = obj.get("ota_channels")
            if isinstance(channels, list):
                st.ota_channels = [c for c in channels if isinstance(c, str)]
            st.agent_version = _str(obj.get("agent_version")) or st.agent_version
            rates = obj.get("rates")
            if isinstance(rates, dict) and isinstance(rates.get("predictions_per_s"), int | float):
                st.prediction_rate = float(rates["predictions_per_s"])
            queue = obj.get("queue")
            if isinstance(queue, dict) and isinstance(queue.get("depth"), int):
                st.queue_depth = int(queue["depth"])
            drift = obj.get("drift")
            score = drift.get("score") if isinstance(drift, dict) else None
            st.drift_score = float(score) if isinstance(score, int | float) else None
            ts = obj.get("ts")
            seen = float(ts) if isinstance(ts, int | float) else received
            st.last_seen = max(st.last_seen or 0.0, seen)

        self._update(device, fn)

    def _drift(self, device: str, payload: bytes) -> None:
        obj = json.loads(payload) if payload.strip() else {}
        if not isinstance(obj, dict):
            return
        active = obj.get("active") is True
        chans = obj.get("channels")

        def fn(st: DeviceState) -> None:
            st.drift_alert = active
            st.drift_channels = (
                [c for c in chans if isinstance(c, str)]
                if active and isinstance(chans, list)
                else []
            )

        self._update(device, fn)

    def _shadow(self, device: str, payload: bytes) -> None:
        obj = json.loads(payload) if payload.strip() else None
        summary = None
        if isinstance(obj, dict) and isinstance(obj.get("candidate"), dict):
            agreement = obj.get("top1_agreement")
            errors = obj.get("errors")
            ts = obj.get("ts")
            summary = ShadowSummary(
                version=_str(obj["candidate"].get("version")) or "?",
                windows=int(obj.get("windows_compared") or 0),
                agreement=float(agreement) if isinstance(agreement, int | float) else None,
                errors=sum(v for v in errors.values() if isinstance(v, int))
                if isinstance(errors, dict)
                else 0,
                ts=float(ts) if isinstance(ts, int | float) else None,
            )

        def fn(st: DeviceState) -> None:
            st.shadow = summary

        self._update(device, fn)

    # ---------------------------------------------------------------- output

    def devices(self) -> list[DeviceState]:
        """A copy of every device's state, sorted by id."""
        with self._cond:
            return [
                replace(
                    st,
                    groups=list(st.groups),
                    drift_channels=list(st.drift_channels),
                    outcomes=dict(st.outcomes),
                    ota_channels=None if st.ota_channels is None else list(st.ota_channels),
                )
                for _, st in sorted(self._devices.items())
            ]

    def wait_for(self, predicate: Callable[[list[DeviceState]], bool], timeout: float) -> bool:
        """Block until ``predicate(devices())`` holds (re-checked on every change)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                seen = self._changes
            if predicate(self.devices()):
                return True
            with self._cond:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                if self._changes == seen:
                    self._cond.wait(left)

    def wait_change(self, timeout: float) -> None:
        """Return after the next change, or after ``timeout``."""
        with self._cond:
            seen = self._changes
            self._cond.wait_for(lambda: self._changes != seen, timeout)


def all_reported(devices: list[DeviceState]) -> bool:
    """Every online device has sent metrics (and at least one is online)."""
    online = [d for d in devices if d.online]
    return bool(online) and all(d.has_metrics for d in online)


@contextlib.contextmanager
def watch_fleet(
    settings: MqttSection,
    password: str | None = None,
    connect_timeout_s: float = 10.0,
) -> Iterator[FleetView]:
    """A ``FleetView`` fed by a live subscription for the duration of the ``with`` block."""
    view = FleetView(settings.topic_prefix)
    link = MqttLink(settings, f"edge-fleet-{uuid.uuid4().hex[:10]}", password=password)
    for f in view.filters():
        link.subscribe(f, 1, view.handle)
    link.start()
    try:
        deadline = time.monotonic() + connect_timeout_s
        while not link.wait_connected(0.1):
            # a command-line tool gives up after three failed attempts, not after backing off
            if time.monotonic() > deadline or (link.reconnects >= 2 and link.last_error):
                detail = link.last_error or "timeout"
                raise PublishError(
                    PublishError.CONNECT,
                    f"cannot connect to MQTT broker {settings.host}:{settings.port}: {detail}",
                )
        yield view
    finally:
        link.stop()


# --------------------------------------------------------------------------- rendering


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 90:
        return f"{seconds:.0f}s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m ago"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h ago"
    return f"{seconds / 86400:.0f}d ago"


def format_table(devices: list[DeviceState], now: float | None = None) -> str:
    """The status table for humans."""
    now = time.time() if now is None else now
    header = ("DEVICE", "ONLINE", "MODEL", "OTA", "LAST SEEN", "PRED/S", "QUEUE", "DRIFT", "SHADOW")
    rows = [header]
    for d in devices:
        online = {True: "yes", False: "NO", None: "?"}[d.online]
        model = " ".join(x for x in (d.model, d.version) if x) or "-"
        ota = "-"
        if d.ota is not None:
            ota = " ".join(x for x in (d.ota.state, d.ota.version) if x)
            note = d.ota.reason or (d.ota.health if d.ota.health == "watching" else None)
            ota += f" ({note})" if note else ""
        age = None if d.last_seen is None else max(0.0, now - d.last_seen)
        rate = "-" if d.prediction_rate is None else f"{d.prediction_rate:.2f}"
        queue = "-" if d.queue_depth is None else str(d.queue_depth)
        rows.append(
            (d.device, online, model, ota, _age(age), rate, queue, drift_cell(d), shadow_cell(d))
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    online_n = sum(1 for d in devices if d.online)
    lines.append(f"{len(devices)} device(s), {online_n} online")
    return "\n".join(lines)


def drift_cell(d: DeviceState) -> str:
    """``0.031``, ``0.412 ALERT ch1`` or ``-`` (not monitored)."""
    if d.drift_score is None and not d.drift_alert:
        return "-"
    text = "?" if d.drift_score is None else f"{d.drift_score:.3f}"
    if d.drift_alert:
        text += " ALERT " + ",".join(d.drift_channels)
    return text


def shadow_cell(d: DeviceState) -> str:
    """``1.2.0 98.50% of 10000`` or ``-``."""
    s = d.shadow
    if s is None:
        return "-"
    agree = "n/a" if s.agreement is None else f"{s.agreement * 100:.2f}%"
    return f"{s.version} {agree} of {s.windows}"
