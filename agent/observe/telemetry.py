"""Telemetry: the agent's numbers as a wire payload, as Prometheus text, and published.

- ``MetricsV1`` is the payload on ``<prefix>/<device>/metrics`` (docs/operations.md): latency
  percentiles, samples in, predictions out, drops per reason, store-and-forward queue depth and
  drops, MQTT reconnects, model version, uptime, memory and CPU temperature.
- ``build_metrics`` makes one from the shared ``agent.metrics.Metrics`` plus what only the
  process and the MQTT link know (``ProcessStats``, ``LinkState``).
- ``render_prometheus`` renders the *same* snapshot as Prometheus text (exposition 0.0.4), so
  what is scraped over HTTP and what is published over MQTT can never disagree.
- ``MetricsReporter`` publishes a snapshot every ``metrics.interval_s`` and right after every
  (re)connect, on its own thread (never on paho's network thread).

Process facts come from Linux files when present: RSS from ``/proc/self/statm`` (falling back
to the *peak* RSS from ``resource``), CPU temperature from ``/sys/class/thermal`` (a Pi's
``cpu-thermal`` zone; absent on most x86 VMs, then ``null``).
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

from agent.delivery.mqtt import OutgoingMessage
from agent.metrics import Metrics
from agent.wire.metrics import (
    LatencyMs,
    MetricsV1,
    MqttStats,
    QueueStats,
    Rates,
)
from agent.wire.predictions import ModelRef

log = logging.getLogger(__name__)

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Counters that have their own field in MetricsV1; every other counter goes to ``other``.
_NAMED_COUNTERS = frozenset(
    {
        "samples_in",
        "samples_rejected",
        "samples_dropped",
        "predictions_out",
        "messages_acked",
        "inference_errors",
        "queue_dropped",
    }
)
_THERMAL_ROOT = Path("/sys/class/thermal")
# thermal zone types that are the CPU/SoC on common boards (Pi: cpu-thermal; x86: x86_pkg_temp)
_CPU_ZONE_TYPES = ("cpu-thermal", "cpu_thermal", "soc-thermal", "soc_thermal", "x86_pkg_temp")


# --------------------------------------------------------------------------- payload


# --------------------------------------------------------------------------- process facts


def rss_bytes(statm: Path = Path("/proc/self/statm")) -> int | None:
    """Resident memory of this process; the peak RSS where /proc is missing; None if neither."""
    try:
        pages = int(statm.read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:  # not Unix
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) * 1024  # Linux reports KiB


def cpu_temperature_c(root: Path = _THERMAL_ROOT) -> float | None:
    """The CPU temperature in °C from the kernel's thermal zones; None when there is none.

    The zone whose ``type`` names the CPU/SoC wins; otherwise the first readable zone (a Pi
    has exactly one, ``thermal_zone0``).
    """
    readings: list[tuple[bool, str, float]] = []
    for zone in sorted(root.glob("thermal_zone*")):
        try:
            milli = int((zone / "temp").read_text().strip())
        except (OSError, ValueError):
            continue
        celsius = milli / 1000.0
        if not -60.0 < celsius < 200.0:  # sensors report junk (e.g. -273) when absent
            continue
        try:
            kind = (zone / "type").read_text().strip()
        except OSError:
            kind = ""
        readings.append((kind not in _CPU_ZONE_TYPES, zone.name, celsius))
    if not readings:
        return None
    return round(min(readings)[2], 1)


class ProcessStats(Protocol):
    def rss_bytes(self) -> int | None: ...
    def cpu_temperature_c(self) -> float | None: ...


class LinuxProcessStats:
    """This process's memory and the board's CPU temperature, from /proc and /sys."""

    def __init__(self, thermal_root: Path = _THERMAL_ROOT) -> None:
        self._thermal = thermal_root

    def rss_bytes(self) -> int | None:
        return rss_bytes()

    def cpu_temperature_c(self) -> float | None:
        return cpu_temperature_c(self._thermal)


class LinkState(Protocol):
    """What telemetry reads from the MQTT link (``agent.delivery.mqtt.MqttLink`` fits)."""

    @property
    def connected(self) -> bool: ...
    @property
    def reconnects(self) -> int: ...


# --------------------------------------------------------------------------- building


class RateMeter:
    """Samples and predictions per second over the last ``horizon_s`` (thread-safe).

    Every snapshot is remembered; the rate is measured against the newest one at least
    ``horizon_s`` old (or the oldest kept, at first the agent's start), so frequent snapshots
    (an HTTP scraper next to the MQTT reporter) neither reset nor jitter the figure.
    """

    def __init__(self, started: float, horizon_s: float = 10.0) -> None:
        self._lock = threading.Lock()
        self._history: deque[tuple[float, int, int]] = deque([(started, 0, 0)])
        self._horizon = horizon_s

    def update(self, now: float, samples: int, predictions: int) -> tuple[float, float]:
        with self._lock:
            h = self._history
            while len(h) > 1 and h[1][0] <= now - self._horizon:
                h.popleft()
            t0, s0, p0 = h[0]
            dt = now - t0
            h.append((now, samples, predictions))
            if dt <= 0:
                return 0.0, 0.0
            return max(0.0, (samples - s0) / dt), max(0.0, (predictions - p0) / dt)


def _ms(lat: dict[str, float]) -> LatencyMs:
    return LatencyMs(**{k: round(v * 1000.0, 4) for k, v in lat.items()})


def build_metrics(
    metrics: Metrics,
    *,
    device: str,
    groups: Iterable[str],
    ota_channels: Iterable[str] = (),
    agent_version: str,
    model_name: str,
    model_version: str,
    link: LinkState,
    queue_depth: int,
    rates: RateMeter,
    process: ProcessStats,
    now: float | None = None,
) -> MetricsV1:
    """One consistent snapshot of everything, as the wire payload."""
    snap = metrics.snapshot()
    now = time.time() if now is None else now
    counters = snap["counters"]
    assert isinstance(counters, dict)

    def total(name: str) -> int:
        v = counters.get(name, 0)
        return int(sum(v.values())) if isinstance(v, dict) else int(v)

    def by_reason(name: str) -> dict[str, int]:
        v = counters.get(name)
        if isinstance(v, dict):
            return {str(k): int(n) for k, n in v.items()}
        return {"": int(v)} if v else {}

    samples_in = total("samples_in")
    predictions_out = total("predictions_out")
    sps, pps = rates.update(now, samples_in, predictions_out)
    latency = snap["latency_s"]
    assert isinstance(latency, dict)
    other: dict[str, int | dict[str, int]] = {}
    for name, v in counters.items():
        if name not in _NAMED_COUNTERS:
            other[str(name)] = (
                {str(k): int(n) for k, n in v.items()} if isinstance(v, dict) else int(v)
            )
    return MetricsV1(
        device=device,
        groups=list(groups),
        ota_channels=list(ota_channels),
        ts=round(now, 3),
        agent_version=agent_version,
        uptime_s=round(max(0.0, now - metrics.started), 3),
        model=ModelRef(name=model_name, version=model_version),
        samples_in=samples_in,
        samples_rejected=by_reason("samples_rejected"),
        samples_dropped=by_reason("samples_dropped"),
        predictions_out=predictions_out,
        messages_acked=total("messages_acked"),
        inference_errors=by_reason("inference_errors"),
        queue=QueueStats(depth=max(0, queue_depth), dropped=total("queue_dropped")),
        mqtt=MqttStats(connected=link.connected, reconnects=link.reconnects),
        latency_ms={str(k): _ms(v) for k, v in latency.items() if v},
        rates=Rates(samples_per_s=round(sps, 3), predictions_per_s=round(pps, 3)),
        memory_rss_bytes=process.rss_bytes(),
        cpu_temp_c=process.cpu_temperature_c(),
        other=other,
    )


# --------------------------------------------------------------------------- prometheus

_NAME_BAD = re.compile(r"[^a-zA-Z0-9_]")
PROM_PREFIX = "edge_agent_"


def _label_value(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(v: float | int) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


class _Families:
    """Prometheus text: each family's HELP and TYPE once, then its samples."""

    def __init__(self, base_labels: dict[str, str]) -> None:
        self._base = base_labels
        self._lines: list[str] = []
        self._seen: set[str] = set()

    def family(self, name: str, kind: str, help_text: str) -> str:
        full = PROM_PREFIX + _NAME_BAD.sub("_", name)
        if full in self._seen:
            raise ValueError(f"metric family {full} rendered twice")
        self._seen.add(full)
        self._lines.append(f"# HELP {full} {help_text.replace(chr(10), ' ')}")
        self._lines.append(f"# TYPE {full} {kind}")
        return full

    def sample(self, full: str, value: float | int, **labels: str) -> None:
        merged = {**self._base, **labels}
        text = ",".join(f'{k}="{_label_value(v)}"' for k, v in merged.items())
        self._lines.append(f"{full}{{{text}}} {_num(value)}" if text else f"{full} {_num(value)}")

    def one(self, name: str, kind: str, help_text: str, value: float | int) -> None:
        self.sample(self.family(name, kind, help_text), value)

    def by_reason(self, name: str, help_text: str, values: dict[str, int]) -> None:
        full = self.family(name, "counter", help_text)
        for reason, n in sorted(values.items()):
            self.sample(full, n, reason=reason)

    def text(self) -> str:
        return "\n".join(self._lines) + "\n"


def render_prometheus(m: MetricsV1) -> str:
    """``m`` in the Prometheus text exposition format (0.0.4), every series labelled by device."""
    f = _Families({"device": m.device})
    f.sample(
        f.family("info", "gauge", "Agent version (value is always 1)."),
        1,
        version=m.agent_version,
    )
    f.sample(
        f.family("model_info", "gauge", "The model running now (value is always 1)."),
        1,
        model=m.model.name,
        version=m.model.version,
    )
    f.one("uptime_seconds", "gauge", "Seconds since the agent started.", m.uptime_s)
    f.one("samples_in_total", "counter", "Samples read from all sources.", m.samples_in)
    f.by_reason("samples_rejected_total", "Malformed samples, per reason.", m.samples_rejected)
    f.by_reason(
        "samples_dropped_total", "Valid samples not processed, per reason.", m.samples_dropped
    )
    f.one("predictions_out_total", "counter", "Predictions handed to the queue.", m.predictions_out)
    f.one(
        "messages_acked_total", "counter", "Messages acknowledged by the broker.", m.messages_acked
    )
    f.by_reason("inference_errors_total", "Failed windows, per reason.", m.inference_errors)
    f.one("queue_depth", "gauge", "Messages waiting in the store-and-forward queue.", m.queue.depth)
    f.one("queue_dropped_total", "counter", "Messages the queue cap dropped.", m.queue.dropped)
    f.one("mqtt_connected", "gauge", "1 when connected to the broker.", int(m.mqtt.connected))
    f.one("mqtt_reconnects_total", "counter", "MQTT reconnect attempts.", m.mqtt.reconnects)
    lat = f.family(
        "latency_seconds",
        "gauge",
        "Latency percentiles over the most recent observations, by stage "
        "(invoke: the model call; pipeline: sample in to broker ack).",
    )
    for stage, pct in sorted(m.latency_ms.items()):
        for q, v in (("0.5", pct.p50), ("0.95", pct.p95), ("0.99", pct.p99)):
            f.sample(lat, round(v / 1000.0, 9), stage=stage, quantile=q)
    f.one("samples_per_second", "gauge", "Samples in per second, recent.", m.rates.samples_per_s)
    f.one(
        "predictions_per_second",
        "gauge",
        "Predictions out per second, recent.",
        m.rates.predictions_per_s,
    )
    if m.memory_rss_bytes is not None:
        f.one("memory_rss_bytes", "gauge", "Resident memory of the agent.", m.memory_rss_bytes)
    if m.cpu_temp_c is not None:
        f.one("cpu_temperature_celsius", "gauge", "CPU temperature.", m.cpu_temp_c)
    if m.drift is not None:
        d = m.drift
        f.one("drift_alert", "gauge", "1 while the drift alert is raised.", int(d.alert))
        f.one("drift_score", "gauge", "Largest drift PSI over channels and output.", d.score)
        ps = f.family("drift_psi", "gauge", "Drift PSI per input channel and output.")
        for c in d.channels:
            f.sample(ps, c.psi, channel=c.name)
        oor = f.family("drift_out_of_range", "gauge", "Share of values outside the reference.")
        for c in d.channels:
            f.sample(oor, c.out_of_range, channel=c.name)
    if m.shadow_agreement is not None:
        f.one("shadow_agreement", "gauge", "Shadow top-1 agreement.", m.shadow_agreement)
    for name, counts in sorted(m.other.items()):
        counter = f"{name}_total"
        if isinstance(counts, dict):
            f.by_reason(counter, f"Counter {name}, per reason.", counts)
        else:
            f.one(counter, "counter", f"Counter {name}.", counts)
    return f.text()


# --------------------------------------------------------------------------- reporter


class ReporterLink(LinkState, Protocol):
    """The part of ``MqttLink`` the reporter uses."""

    def publish(self, msg: OutgoingMessage, on_ack: Callable[[], None] | None = None) -> bool: ...
    def add_connect_listener(self, fn: Callable[[], None]) -> None: ...


class MetricsReporter:
    """Publishes ``collect()`` on ``topic`` every ``interval_s`` and after each (re)connect.

    QoS 1, retained (a fleet view or Home Assistant sees the latest report at once; its ``ts``
    tells how old it is). A snapshot taken while disconnected is skipped, not queued: metrics
    describe *now*, and the store-and-forward queue is for predictions.
    """

    def __init__(
        self, link: ReporterLink, topic: str, interval_s: float, collect: Callable[[], MetricsV1]
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0 (metrics.interval_s = 0 means no reporter)")
        self._link = link
        self._topic = topic
        self._interval = interval_s
        self._collect = collect
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.published = 0
        link.add_connect_listener(self._wake.set)  # network thread: only sets an event

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="metrics", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def publish_now(self) -> bool:
        """Take a snapshot and publish it; False when not connected."""
        try:
            payload = self._collect().model_dump_json().encode()
        except Exception:  # a bug here must not kill the reporter
            log.exception("collecting metrics failed")
            return False
        ok = self._link.publish(OutgoingMessage(self._topic, payload, qos=1, retain=True))
        if ok:
            self.published += 1
        return ok

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            woke = self._wake.wait(max(0.0, next_at - time.monotonic()))
            if self._stop.is_set():
                break
            self._wake.clear()
            if woke or time.monotonic() >= next_at:
                if self._link.connected:
                    self.publish_now()
                next_at = time.monotonic() + self._interval
