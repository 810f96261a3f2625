"""Telemetry: the agent's numbers as a wire payload, as Prometheus text, and published.

- ``MetricsV1`` is the payload on ``<prefix>/<device>/metrics`` (docs/operations.md): latency
  percentiles, samples in, predictions out, drops per reason, store-and-forward queue depth and
  drops, MQTT reconnects, model version, uptime, memory and CPU temperature.
- ``build_metrics`` makes one from the shared ``agent.metrics.Metrics`` plus what only the
  process and the MQTT link know (``ProcessStats``, ``LinkState``).
- ``agent.observe.prometheus.render_prometheus`` renders the *same* snapshot as Prometheus
  text, so what is scraped over HTTP and what is published over MQTT can never disagree.
- ``MetricsReporter`` publishes a snapshot every ``metrics.interval_s`` and right after every
  (re)connect, on its own thread (never on paho's network thread).

Process facts come from Linux files when present: RSS and virtual size from
``/proc/self/statm`` (falling back to the *peak* RSS from ``resource``), open descriptors from
``/proc/self/fd``, the start time from ``/proc/self/stat`` and ``/proc/stat``'s ``btime``, CPU
time from ``os.times``, CPU temperature from ``/sys/class/thermal`` (a Pi's ``cpu-thermal``
zone; absent on most x86 VMs, then ``null``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

from agent.delivery.mqtt import OutgoingMessage
from agent.metrics import LATENCY_BUCKETS_S, Metrics
from agent.wire.metrics import (
    LatencyHistogram,
    LatencyMs,
    MetricsV1,
    MqttStats,
    ProcessFacts,
    QueueStats,
    Rates,
)
from agent.wire.predictions import ModelRef

log = logging.getLogger(__name__)

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


def process_start_time(proc: Path = Path("/proc")) -> float | None:
    """When this process started (epoch seconds), from ``/proc``; None without it."""
    try:
        stat = (proc / "self" / "stat").read_text()
        ticks = int(stat[stat.rindex(")") + 2 :].split()[19])  # field 22: starttime
        btime = next(
            int(line.split()[1])
            for line in (proc / "stat").read_text().splitlines()
            if line.startswith("btime ")
        )
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return btime + ticks / os.sysconf("SC_CLK_TCK")


def process_facts(started: float, proc: Path = Path("/proc")) -> ProcessFacts:
    """CPU time, virtual memory, descriptors and start time of this process."""
    t = os.times()
    vsz = fds = max_fds = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        vsz = int((proc / "self" / "statm").read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    with contextlib.suppress(OSError):
        fds = sum(1 for _ in (proc / "self" / "fd").iterdir())
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        max_fds = soft if soft >= 0 else None
    except (ImportError, OSError, ValueError):
        pass
    return ProcessFacts(
        cpu_seconds=round(t.user + t.system, 3),
        virtual_memory_bytes=vsz,
        open_fds=fds,
        max_fds=max_fds,
        start_time_s=round(process_start_time(proc) or started, 3),
    )


class ProcessStats(Protocol):
    """Process facts for metrics: RSS, CPU temperature, start facts."""

    def rss_bytes(self) -> int | None: ...
    def cpu_temperature_c(self) -> float | None: ...
    def facts(self, started: float) -> ProcessFacts | None: ...


class LinuxProcessStats:
    """This process's memory, CPU time and descriptors and the board's CPU temperature,
    from /proc and /sys."""

    def __init__(self, thermal_root: Path = _THERMAL_ROOT) -> None:
        self._thermal = thermal_root

    def rss_bytes(self) -> int | None:
        return rss_bytes()

    def cpu_temperature_c(self) -> float | None:
        return cpu_temperature_c(self._thermal)

    def facts(self, started: float) -> ProcessFacts | None:
        return process_facts(started)


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
    histograms = snap["histograms_s"]
    assert isinstance(histograms, dict)
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
        latency_histogram={
            str(k): LatencyHistogram(
                le=list(LATENCY_BUCKETS_S), cumulative=cum, sum_s=round(total, 9), count=count
            )
            for k, (cum, total, count) in histograms.items()
            if count
        },
        rates=Rates(samples_per_s=round(sps, 3), predictions_per_s=round(pps, 3)),
        memory_rss_bytes=process.rss_bytes(),
        cpu_temp_c=process.cpu_temperature_c(),
        process=process.facts(metrics.started),
        other=other,
    )


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
        """Start reporting: a snapshot at once when connected already (else at the connect),
        then every ``interval_s``. The two triggers share one event: one snapshot."""
        if self._thread is None:
            if self._link.connected:
                self._wake.set()
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
        next_at = time.monotonic() + self._interval
        while not self._stop.is_set():
            woke = self._wake.wait(max(0.0, next_at - time.monotonic()))
            if self._stop.is_set():
                break
            self._wake.clear()
            if woke or time.monotonic() >= next_at:
                if self._link.connected:
                    self.publish_now()
                next_at = time.monotonic() + self._interval
