"""The metrics snapshot (``MetricsV1``) as Prometheus text (exposition format 0.0.4).

Rendered from the *same* snapshot the MQTT reporter publishes, so a scrape and a report can
never disagree. Conventions followed:

- counters end in ``_total`` and exist at 0 from the start for every label value the agent
  knows (``agent.metrics.KNOWN_COUNTERS`` and friends, the configured source names), so
  ``rate()`` and ``increase()`` see the first event;
- latency is a histogram in seconds (``edge_agent_latency_seconds_bucket{stage,le}``,
  ``_sum``, ``_count``): percentiles come from ``histogram_quantile`` over any range, and
  rates are left to PromQL (no ``*_per_second`` gauges);
- the standard ``process_*`` metrics (CPU seconds, resident and virtual memory, open and max
  file descriptors, start time);
- every series carries the ``device`` label.

Hand-written rather than ``prometheus-client``: the client's import costs ~30-40 ms and
~1.75 MB RSS on the device (measured: docs/operations.md) and would keep a second set of
live metric objects beside ``agent.metrics.Metrics``; this module is ~150 lines over one
snapshot. Its output is checked with ``prometheus-client``'s own parser in the tests.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

from agent.metrics import KNOWN_COUNTERS
from agent.wire.metrics import MetricsV1

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PROM_PREFIX = "edge_agent_"
_NAME_BAD = re.compile(r"[^a-zA-Z0-9_]")


def _label_value(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(v: float) -> str:
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

    def family(self, name: str, kind: str, help_text: str, prefix: str = PROM_PREFIX) -> str:
        full = prefix + _NAME_BAD.sub("_", name)
        if full in self._seen:
            raise ValueError(f"metric family {full} rendered twice")
        self._seen.add(full)
        self._lines.append(f"# HELP {full} {help_text.replace(chr(10), ' ')}")
        self._lines.append(f"# TYPE {full} {kind}")
        return full

    def sample(self, full: str, value: float, **labels: str) -> None:
        merged = {**self._base, **labels}
        text = ",".join(f'{k}="{_label_value(v)}"' for k, v in merged.items())
        self._lines.append(f"{full}{{{text}}} {_num(value)}" if text else f"{full} {_num(value)}")

    def one(self, name: str, kind: str, help_text: str, value: float, prefix: str = "") -> None:
        self.sample(self.family(name, kind, help_text, prefix or PROM_PREFIX), value)

    def counter(self, name: str, help_text: str, value: int | dict[str, int]) -> None:
        """``<name>_total``: one series, or one per reason."""
        full = self.family(f"{name}_total", "counter", help_text)
        if isinstance(value, dict):
            for reason, n in sorted(value.items()):
                self.sample(full, n, reason=reason)
        else:
            self.sample(full, value)

    def text(self) -> str:
        return "\n".join(self._lines) + "\n"


_HELP = {
    "samples_in": "Samples read from all sources.",
    "samples_rejected": "Malformed samples, per reason.",
    "samples_dropped": "Valid samples not processed, per reason.",
    "windows_run": "Windows the model ran on.",
    "predictions_out": "Predictions handed to the queue.",
    "predictions_dropped": "Predictions lost before the queue, per reason.",
    "messages_acked": "Messages acknowledged by the broker.",
    "inference_errors": "Failed windows, per reason.",
    "queue_dropped": "Messages the queue cap dropped.",
    "spool_written_behind": "Published messages written to the queue file because the "
    "broker had not acknowledged them within write_behind_ms.",
    "mqtt_reconnects": "MQTT reconnect attempts.",
    "source_failures": "Source failures, per source.",
    "source_restarts": "Command source restarts, per source.",
    "ota_updates": "OTA updates that passed their health window.",
    "ota_refused": "OTA offers refused, per reason.",
    "ota_failed": "OTA attempts failed, per reason.",
    "ota_rollbacks": "OTA versions rolled back, per reason.",
    "on_demand_predictions": "HTTP /v1/predict answers.",
    "on_demand_rejected": "HTTP /v1/predict bad inputs, per reason.",
    "on_demand_errors": "HTTP /v1/predict failures, per reason.",
}


def _counters(m: MetricsV1) -> dict[str, int | dict[str, int]]:
    """Every counter of the snapshot by name (without ``_total``)."""
    out: dict[str, int | dict[str, int]] = {
        "samples_in": m.samples_in,
        "samples_rejected": dict(m.samples_rejected),
        "samples_dropped": dict(m.samples_dropped),
        "predictions_out": m.predictions_out,
        "messages_acked": m.messages_acked,
        "inference_errors": dict(m.inference_errors),
        "queue_dropped": m.queue.dropped,
        "mqtt_reconnects": m.mqtt.reconnects,
    }
    for name, v in m.other.items():
        out[name] = dict(v) if isinstance(v, dict) else v
    return out


def _with_known(
    counters: dict[str, int | dict[str, int]], known: Mapping[str, Iterable[str]]
) -> dict[str, int | dict[str, int]]:
    """``counters`` with every known series present (0 when it never moved)."""
    out = dict(counters)
    for name, labels in known.items():
        values = tuple(labels)
        have = out.get(name)
        if not values:
            out.setdefault(name, 0)
        elif isinstance(have, dict) or have is None:
            out[name] = {**dict.fromkeys(values, 0), **(have or {})}
    return out


def render_prometheus(m: MetricsV1, known: Mapping[str, Iterable[str]] | None = None) -> str:
    """``m`` in the text exposition format; ``known``: counter name -> its label values, each
    shown at 0 until it moves (``agent.metrics.KNOWN_COUNTERS`` when None)."""
    f = _Families({"device": m.device})
    f.sample(
        f.family("info", "gauge", "Agent version (value is always 1)."), 1, version=m.agent_version
    )
    f.sample(
        f.family("model_info", "gauge", "The model running now (value is always 1)."),
        1,
        model=m.model.name,
        version=m.model.version,
    )
    f.one("uptime_seconds", "gauge", "Seconds since the agent started.", m.uptime_s)
    counters = _with_known(_counters(m), KNOWN_COUNTERS if known is None else known)
    for name, value in sorted(counters.items()):
        f.counter(name, _HELP.get(name, f"Counter {name}."), value)
    f.one("queue_depth", "gauge", "Messages not yet acknowledged by the broker.", m.queue.depth)
    f.one("mqtt_connected", "gauge", "1 when connected to the broker.", int(m.mqtt.connected))
    lat = f.family(
        "latency_seconds",
        "histogram",
        "Latency by stage (invoke: the model call; pipeline: sample in to broker ack; "
        "on_demand: HTTP /v1/predict).",
    )
    for stage, h in sorted(m.latency_histogram.items()):
        for le, n in zip(h.le, h.cumulative, strict=True):
            f.sample(lat + "_bucket", n, stage=stage, le=_num(float(le)))
        f.sample(lat + "_bucket", h.count, stage=stage, le="+Inf")
        f.sample(lat + "_sum", h.sum_s, stage=stage)
        f.sample(lat + "_count", h.count, stage=stage)
    if m.cpu_temp_c is not None:
        f.one("cpu_temperature_celsius", "gauge", "CPU temperature.", m.cpu_temp_c)
    _field(f, m)
    _process(f, m)
    return f.text()


def _field(f: _Families, m: MetricsV1) -> None:
    """Drift scores and shadow agreement (docs/shadow-and-drift.md), when there are any."""
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


def _process(f: _Families, m: MetricsV1) -> None:
    """The standard ``process_*`` families (no ``edge_agent_`` prefix)."""
    p = m.process
    if m.memory_rss_bytes is not None:
        f.one(
            "resident_memory_bytes",
            "gauge",
            "Resident memory size.",
            m.memory_rss_bytes,
            "process_",
        )
    if p is None:
        return
    f.one("cpu_seconds_total", "counter", "User and system CPU time.", p.cpu_seconds, "process_")
    if p.virtual_memory_bytes is not None:
        vsz = p.virtual_memory_bytes
        f.one("virtual_memory_bytes", "gauge", "Virtual memory size.", vsz, "process_")
    if p.open_fds is not None:
        f.one("open_fds", "gauge", "Open file descriptors.", p.open_fds, "process_")
    if p.max_fds is not None:
        f.one("max_fds", "gauge", "Maximum number of open file descriptors.", p.max_fds, "process_")
    f.one(
        "start_time_seconds",
        "gauge",
        "Start time of the process since the epoch, seconds.",
        p.start_time_s,
        "process_",
    )
