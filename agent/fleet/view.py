"""The fleet as its devices report it: online state, model, OTA state, metrics.

``FleetView`` subscribes (through ``agent.delivery.mqtt.MqttLink``) to

    <prefix>/+/status    retained "online" / "offline" (the agents' last will)
    <prefix>/+/ota       retained OTA state (JSON, written by the agents' updater)
    <prefix>/+/metrics   retained periodic ``MetricsV1`` (an offline device's are history:
                         its rates are not shown as live)

and keeps one ``DeviceState`` per device, updated from paho's network thread (the handler only
parses and stores; waiting is done with a condition variable).

Parsing is lenient on purpose: a fleet runs several agent versions at once, so a field a
device does not send is shown as unknown instead of hiding the device.

OTA state: the updater's retained ``OtaStateV1`` (agent/ota/report.py): ``state`` (idle,
downloading, verifying, staged, active, rolled_back, failed), the ``version`` it is about,
``running``, ``health`` (watching/passed while active), ``reason`` and the last ``refusal``.
A build (version + artifact sha256) *succeeded* on a device when it is ``active`` and through
its health window; it *failed* when the device reports ``failed`` or ``rolled_back`` for it,
or refused it for a reason other than "not for me" (``not_targeted``, ``up_to_date``,
``wrong_model``, ``wrong_channel``). Every finished outcome is remembered per build
(``DeviceState.outcomes``), the latest refusal and rollback per device too, so a rollout
still sees a failure after the device moved on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from agent.config import MqttSection
from agent.delivery.mqtt import MqttLink, OutgoingMessage
from agent.errors import PublishError
from agent.wire.topics import FleetTopics

log = logging.getLogger(__name__)

FAILED = frozenset({"failed", "rolled_back"})
IN_PROGRESS = frozenset({"downloading", "verifying", "staged"})
SYNC_EVERY_S = 0.5
"""How often the view sends its sync marker until one comes back (``watch_fleet``)."""

NOT_A_FAILURE = frozenset({"not_targeted", "up_to_date", "wrong_model", "wrong_channel"})
"""Refusal reasons that say "not for me", not "this package is bad"."""


@dataclass(frozen=True)
class OtaReport:
    """A device's ``OtaStateV1`` report as the fleet view keeps it."""

    state: str
    version: str | None = None
    sha256: str | None = None
    """The artifact sha256 of the build this report is about (None: an older agent)."""
    running: str | None = None
    running_sha256: str | None = None
    health: str | None = None
    model: str | None = None
    reason: str | None = None
    ts: float | None = None

    def is_build(self, version: str, sha256: str) -> bool:
        """About exactly this build (version and artifact hash)."""
        return self.version == version and self.sha256 == sha256

    def may_be_build(self, version: str, sha256: str) -> bool:
        """About this build, or about this version from an agent that reports no hash."""
        return self.version == version and self.sha256 in (sha256, None)

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "version": self.version,
            "sha256": self.sha256,
            "reason": self.reason,
            "at": self.ts,
        }

    @property
    def failed(self) -> bool:
        if self.state == "refused":
            return self.reason not in NOT_A_FAILURE
        return self.state in FAILED

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
    """What the fleet view knows of one device: status, model, OTA reports, metrics."""

    device: str
    online: bool | None = None
    model: str | None = None
    version: str | None = None
    groups: list[str] = field(default_factory=list)
    ota_channels: list[str] | None = None
    ota: OtaReport | None = None
    outcomes: dict[tuple[str, str | None], OtaReport] = field(default_factory=dict)
    """(version, sha256) -> the last finished OTA report for that build (success or failure);
    sha256 is None for agents that do not report it."""
    last_refusal: OtaReport | None = None
    """The device's most recent refused offer, whatever the reason."""
    last_rollback: OtaReport | None = None
    """The most recent ``rolled_back`` or ``failed`` report."""
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
    extra: dict[str, Any] = field(default_factory=dict)
    """Fields other features keep per device (``FleetView.add_kind``); merged into ``to_json``."""

    @property
    def running_sha256(self) -> str | None:
        return None if self.ota is None else self.ota.running_sha256

    def age(self, now: float) -> float | None:
        """Seconds since the newest data about this device was made."""
        return None if self.last_seen is None else max(0.0, now - self.last_seen)

    @property
    def live(self) -> bool:
        """Its rates describe now: online (an offline device's retained metrics are history)."""
        return self.online is True

    def to_json(self, now: float | None = None) -> dict[str, Any]:
        """The ``--json`` row; rates and queue are null when the device is not online (the
        retained figures are its last ones, not live)."""
        now = time.time() if now is None else now
        ota = None
        if self.ota is not None:
            ota = {
                "state": self.ota.state,
                "version": self.ota.version,
                "sha256": self.ota.sha256,
                "running": self.ota.running,
                "running_sha256": self.ota.running_sha256,
                "health": self.ota.health,
                "reason": self.ota.reason,
            }
        age = self.age(now)
        return {
            "device": self.device,
            "online": self.online,
            "groups": list(self.groups),
            "model": self.model,
            "version": self.version,
            "agent_version": self.agent_version,
            "ota": ota,
            "last_refusal": None if self.last_refusal is None else self.last_refusal.to_json(),
            "last_rollback": None if self.last_rollback is None else self.last_rollback.to_json(),
            "last_seen": self.last_seen,
            "last_seen_age_s": None if age is None else round(age, 1),
            "prediction_rate": self.prediction_rate if self.live else None,
            "queue_depth": self.queue_depth if self.live else None,
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
        } | self.extra


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
    there is none); ``refusal.failed`` is False when its reason only means "not for me". An
    empty message (cleared) gives (None, None).
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
        sha256=_str(obj.get("sha256")),
        running=_str(obj.get("running")),
        running_sha256=_str(obj.get("running_sha256")),
        health=_str(obj.get("health")),
        model=_str(obj.get("model")),
        reason=_str(obj.get("reason")),
        ts=_ts(obj),
    )
    refusal = None
    ref = obj.get("refusal")
    if isinstance(ref, dict):
        at = ref.get("at")
        refusal = OtaReport(
            state="refused",
            version=_str(ref.get("version")),
            sha256=_str(ref.get("sha256")),
            model=report.model,
            reason=_str(ref.get("reason")) or "refused",
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
        self.synced = threading.Event()
        """Set when ``sync_topic``'s marker came back: every retained message the broker had
        when we subscribed has been delivered before it (one client's messages stay in order)."""
        self.sync_topic = f"{prefix}/fleet-sync/{uuid.uuid4().hex[:12]}"
        self._kinds: dict[str, Callable[[DeviceState, bytes], None]] = {}

    def filters(self) -> list[str]:
        return self.topics.filters + [f"{self.prefix}/+/{kind}" for kind in self._kinds]

    def add_kind(self, kind: str, parse: Callable[[DeviceState, bytes], None]) -> None:
        """Follow ``<prefix>/+/<kind>`` too (before the view is subscribed): ``parse`` updates
        the device's state (e.g. ``extra``) from each message, under the view's lock."""
        self._kinds[kind] = parse

    # ---------------------------------------------------------------- input

    def handle(self, topic: str, payload: bytes) -> None:
        """One message from the broker (paho's network thread): parse and store."""
        if topic == self.sync_topic:
            self.synced.set()
            with self._cond:
                self._changes += 1
                self._cond.notify_all()
            return
        parts = self.topics.split(topic)
        if parts is None:
            return
        device, kind = parts
        try:
            if kind in self._kinds:  # a feature's own parser first (FleetView.add_kind)
                parse = self._kinds[kind]
                self._update(device, lambda st: parse(st, payload))
            elif kind == "status":
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
            key = (r.version, r.sha256)
            done = st.outcomes.get(key)
            if r.state == "refused" and done is not None and done.succeeded:
                return  # a refusal of the build the device already runs says nothing new
            st.outcomes[key] = r if r.ts is not None else replace(r, ts=received)

        def fn(st: DeviceState) -> None:
            st.ota = report
            if refusal is not None:
                st.last_refusal = refusal
            if report is not None and report.state in FAILED:
                st.last_rollback = report
            for r in (report, refusal):
                if r is not None:
                    remember(st, r)
            if report is not None and report.ts is not None:
                st.last_seen = max(st.last_seen or 0.0, report.ts)

        self._update(device, fn)

    def _metrics(self, device: str, payload: bytes) -> None:
        if not payload.strip():
            return  # a cleared retained message
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
                    extra=dict(st.extra),
                    ota_channels=None if st.ota_channels is None else list(st.ota_channels),
                )
                for _, st in sorted(self._devices.items())
            ]

    def wait_for(
        self,
        predicate: Callable[[list[DeviceState]], bool],
        timeout: float,
        min_interval: float = 0.05,
    ) -> bool:
        """Block until ``predicate(devices)`` holds (it must only read them: it gets the live
        states, under the view's lock), re-checked after changes but at most
        every ``min_interval`` seconds (a fleet of thousands changes thousands of times a
        second while retained messages arrive; checking each would be quadratic)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                seen = self._changes
                checked = time.monotonic()
                # the live states, not copies (10,000 copies per check would dominate): a
                # predicate only reads them
                if predicate(list(self._devices.values())):
                    return True
            with self._cond:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                if self._changes == seen:
                    self._cond.wait(left)
                # coalesce the burst of changes that follows the first one
                rest = min(deadline, checked + min_interval) - time.monotonic()
                if rest > 0:
                    self._cond.wait_for(lambda: False, rest)

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
    view: FleetView | None = None,
) -> Iterator[FleetView]:
    """A ``FleetView`` fed by a live subscription for the duration of the ``with`` block.

    The state topics are subscribed at QoS 0: each is retained and the newest wins, and a
    broker sends the retained set of a QoS 0 subscription without its per-client queue limit
    (Mosquitto's ``max_queued_messages``, 1000 by default, drops most of a 10,000-device
    fleet's retained messages for a QoS 1 subscriber). Knowing when the retained set is
    complete: a marker published to ``view.sync_topic`` after the subscriptions comes back
    after every retained message queued before it (one client's messages stay in order). A
    broker with a full queue for us drops the marker too, so it is sent again every
    ``SYNC_EVERY_S`` until one arrives.
    """
    view = view or FleetView(settings.topic_prefix)
    link = MqttLink(settings, f"edge-fleet-{uuid.uuid4().hex[:10]}", password=password)
    for f in view.filters():
        link.subscribe(f, 0, view.handle)
    link.subscribe(view.sync_topic, 0, view.handle)
    stop = threading.Event()

    def marker() -> None:
        while not (view.synced.is_set() or stop.is_set()):
            # connected means subscribed: the link subscribes before it says so
            if link.wait_connected(SYNC_EVERY_S):
                link.publish(OutgoingMessage(view.sync_topic, b"sync", qos=0))
                stop.wait(SYNC_EVERY_S)

    threading.Thread(target=marker, name="fleet-sync", daemon=True).start()
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
        stop.set()
        link.stop()


# --------------------------------------------------------------------------- rendering


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


def _ota_cell(d: DeviceState, now: float) -> str:
    if d.ota is None:
        return "-"
    text = " ".join(x for x in (d.ota.state, d.ota.version) if x)
    note = d.ota.reason or (d.ota.health if d.ota.health == "watching" else None)
    return text + (f" ({note})" if note else "")


def _event_cell(r: OtaReport | None) -> str:
    if r is None:
        return "-"
    return f"{r.version or '?'} {r.reason or r.state}"


def _online_cell(d: DeviceState, now: float) -> str:
    return {True: "yes", False: "OFFLINE", None: "?"}[d.online]


def _rate_cell(d: DeviceState, now: float) -> str:
    if not d.live or d.prediction_rate is None:
        return "-"  # an offline device's retained figures are not live
    return f"{d.prediction_rate:.2f}"


def _queue_cell(d: DeviceState, now: float) -> str:
    if not d.live or d.queue_depth is None:
        return "-"
    return str(d.queue_depth)


@dataclass(frozen=True)
class Column:
    """One column of the status table: its header and how a row's cell is made."""

    header: str
    cell: Callable[[DeviceState, float], str]


COLUMNS: list[Column] = [
    Column("DEVICE", lambda d, now: d.device),
    Column("ONLINE", _online_cell),
    Column("AGE", lambda d, now: _age(d.age(now))),
    Column("MODEL", lambda d, now: " ".join(x for x in (d.model, d.version) if x) or "-"),
    Column("OTA", _ota_cell),
    Column("LAST REFUSAL", lambda d, now: _event_cell(d.last_refusal)),
    Column("LAST ROLLBACK", lambda d, now: _event_cell(d.last_rollback)),
    Column("PRED/S", _rate_cell),
    Column("QUEUE", _queue_cell),
]
"""The table's columns, in order; other features add theirs here (e.g. shadow, drift)."""


def summary(devices: list[DeviceState]) -> dict[str, Any]:
    """Counts for the summary line and ``--json``: online/offline, per version, per OTA state."""
    versions: Counter[str] = Counter()
    states: Counter[str] = Counter()
    for d in devices:
        versions[" ".join(x for x in (d.model, d.version) if x) or "unknown"] += 1
        states[d.ota.state if d.ota is not None else "unknown"] += 1
    return {
        "devices": len(devices),
        "online": sum(1 for d in devices if d.online),
        "offline": sum(1 for d in devices if d.online is False),
        "versions": dict(sorted(versions.items())),
        "ota_states": dict(sorted(states.items())),
    }


def format_summary(devices: list[DeviceState]) -> str:
    """A short text summary: device counts, versions running, OTA states."""
    s = summary(devices)
    versions = ", ".join(f"{v} x{n}" for v, n in s["versions"].items()) or "-"
    states = ", ".join(f"{k} x{n}" for k, n in s["ota_states"].items()) or "-"
    return (
        f"{s['devices']} device(s), {s['online']} online, {s['offline']} offline\n"
        f"versions: {versions}\nOTA: {states}"
    )


def format_table(
    devices: list[DeviceState], now: float | None = None, columns: list[Column] | None = None
) -> str:
    """The status table for humans, then the summary."""
    now = time.time() if now is None else now
    cols = COLUMNS if columns is None else columns
    rows = [tuple(c.header for c in cols)]
    rows += [tuple(c.cell(d, now) for c in cols) for d in devices]
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.append(format_summary(devices))
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


COLUMNS += [
    Column("DRIFT", lambda d, now: drift_cell(d)),
    Column("SHADOW", lambda d, now: shadow_cell(d)),
]
