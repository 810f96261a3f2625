"""The agent's own numbers: counters, gauges and latency (percentiles and a histogram).

One ``Metrics`` object is shared by every stage. Counters are keyed by name and an optional
``reason`` label (``samples_dropped{reason="not_finite"}``). Writes take a lock: a handful of
increments per window costs far less than the invoke they count.

``KNOWN_COUNTERS`` lists every counter the agent increments with the reasons it can carry, so
that an exporter can show each series at 0 before the first event (Prometheus' ``rate()``
and ``increase()`` need the series to exist before it moves).
"""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np

LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""Histogram bucket bounds (seconds, ``le``): a 50 µs int8 invoke to a 10 s pipeline."""
_BOUNDS = np.asarray(LATENCY_BUCKETS_S, np.float64)

_SAMPLE_REASONS = (
    "bad_json",
    "bad_timestamp",
    "invalid_utf8",
    "non_numeric",
    "not_finite",
    "oversized",
)
KNOWN_COUNTERS: dict[str, tuple[str, ...]] = {
    "samples_in": (),
    "samples_rejected": (*_SAMPLE_REASONS, "too_many_streams", "wrong_shape"),
    "samples_dropped": ("ingest_overflow", "shutdown"),
    "windows_run": (),
    "predictions_out": (),
    "predictions_dropped": ("spool_error",),
    "messages_acked": (),
    "inference_errors": ("error", "non_finite"),
    "queue_dropped": (),
    "spool_written_behind": (),
}
"""Counter name -> the reasons it is incremented with (empty: a counter without a reason).
``source_failures`` / ``source_restarts`` are labelled by source name (from the config);
the OTA and on-demand counters are in ``OTA_COUNTERS`` / ``ON_DEMAND_COUNTERS``."""

OTA_COUNTERS: dict[str, tuple[str, ...]] = {
    "ota_updates": (),
    "ota_refused": (
        "agent_too_old",
        "bad_announcement",
        "bad_manifest",
        "bad_signature",
        "incompatible_input",
        "incompatible_output",
        "incompatible_postprocess",
        "incompatible_preprocess",
        "malformed",
        "marked_bad",
        "not_targeted",
        "too_large",
        "unknown_key",
        "unreadable",
        "unsigned",
        "version_reused",
        "version_rollback",
        "wrong_channel",
        "wrong_model",
    ),
    "ota_failed": (
        "bad_url",
        "download_failed",
        "download_timeout",
        "golden_mismatch",
        "hash_mismatch",
        "incompatible_pipeline",
        "load_failed",
        "manifest_mismatch",
        "no_space",
        "non_finite",
        "storage",
        "too_large",
        "too_slow",
        "truncated",
        "wrong_shape",
    ),
    "ota_rollbacks": ("boot_failures", "error_rate", "latency", "non_finite"),
}
"""The OTA counters and their reasons (docs/ota.md), present when OTA is on."""

ON_DEMAND_COUNTERS: dict[str, tuple[str, ...]] = {
    "on_demand_predictions": (),
    "on_demand_rejected": (*_SAMPLE_REASONS, "wrong_shape"),
    "on_demand_errors": ("error", "non_finite"),
}
"""The HTTP API's ``/v1/predict`` counters, present when the API is on."""


class LatencyWindow:
    """The most recent ``size`` observations (seconds), for percentiles; and every
    observation since the start in ``LATENCY_BUCKETS_S`` buckets, with their sum and count.

    Observations are bucketed in bulk (NumPy, when 4096 are pending or a snapshot asks): on
    the inference loop's path an observation costs a list append, not a search."""

    _FOLD_AT = 4096

    def __init__(self, size: int = 2048) -> None:
        self._values: deque[float] = deque(maxlen=size)
        self._pending: list[float] = []
        self._buckets = np.zeros(len(LATENCY_BUCKETS_S) + 1, np.int64)  # last: above all
        self._sum = 0.0
        self._count = 0

    def observe(self, seconds: float) -> None:
        self._values.append(seconds)
        self._pending.append(seconds)
        if len(self._pending) >= self._FOLD_AT:
            self._fold()

    def observe_many(self, seconds: list[float]) -> None:
        self._values.extend(seconds)
        self._pending.extend(seconds)
        if len(self._pending) >= self._FOLD_AT:
            self._fold()

    def _fold(self) -> None:
        if not self._pending:
            return
        arr = np.asarray(self._pending, np.float64)
        self._pending = []
        where = np.searchsorted(_BOUNDS, arr, side="left")  # first bound >= value: its le
        self._buckets += np.bincount(where, minlength=len(self._buckets))
        self._sum += float(arr.sum())
        self._count += int(arr.size)

    def histogram(self) -> tuple[list[int], float, int]:
        """(observations ``<= le`` for each bound of ``LATENCY_BUCKETS_S``, sum, count):
        Prometheus' ``_bucket`` (``+Inf`` is the count), ``_sum`` and ``_count``."""
        self._fold()
        cumulative = np.cumsum(self._buckets[:-1])
        return [int(n) for n in cumulative], self._sum, self._count

    def percentiles(self, qs: tuple[float, ...] = (50, 95, 99)) -> dict[str, float]:
        if not self._values:
            return {f"p{int(q)}": 0.0 for q in qs}
        arr = np.fromiter(self._values, dtype=np.float64)
        return {f"p{int(q)}": float(np.percentile(arr, q)) for q in qs}

    def recent(self) -> list[float]:
        """The most recent observations (at most ``size``), oldest first."""
        return list(self._values)

    def __len__(self) -> int:
        return len(self._values)


class Metrics:
    """Thread-safe counters, gauges and latency windows."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.time()
        self._counters: dict[tuple[str, str], int] = {}
        self._gauges: dict[str, float | str] = {}
        self._latency: dict[str, LatencyWindow] = {}

    def inc(self, name: str, n: int = 1, reason: str = "") -> None:
        key = (name, reason)
        with self._lock:
            self._counters[key] = self._counters.get(key, 0) + n

    def set(self, name: str, value: float | str) -> None:
        with self._lock:
            self._gauges[name] = value

    def observe(self, name: str, seconds: float) -> None:
        with self._lock:
            self._window(name).observe(seconds)

    def observe_many(self, name: str, seconds: list[float]) -> None:
        """``observe`` each of ``seconds``, under one lock acquisition."""
        if seconds:
            with self._lock:
                self._window(name).observe_many(seconds)

    def _window(self, name: str) -> LatencyWindow:
        """The latency window called ``name`` (created on first use); hold ``_lock``."""
        win = self._latency.get(name)
        if win is None:
            win = self._latency[name] = LatencyWindow()
        return win

    def counter(self, name: str, reason: str = "") -> int:
        with self._lock:
            return self._counters.get((name, reason), 0)

    def counters_by_reason(self, name: str) -> dict[str, int]:
        with self._lock:
            return {r: v for (n, r), v in self._counters.items() if n == name}

    def gauge(self, name: str) -> float | str | None:
        with self._lock:
            return self._gauges.get(name)

    def latency(self, name: str) -> dict[str, float]:
        with self._lock:
            win = self._latency.get(name)
            return win.percentiles() if win is not None else {}

    def snapshot(self) -> dict[str, object]:
        """Everything, as plain JSON-able data."""
        with self._lock:
            counters: dict[str, object] = {}
            for (name, reason), v in sorted(self._counters.items()):
                if reason:
                    sub = counters.setdefault(name, {})
                    assert isinstance(sub, dict)
                    sub[reason] = v
                else:
                    counters[name] = v
            latency = {k: w.percentiles() for k, w in self._latency.items()}
            histograms = {k: w.histogram() for k, w in self._latency.items()}
            return {
                "uptime_s": time.time() - self.started,
                "counters": counters,
                "gauges": dict(self._gauges),
                "latency_s": latency,
                "histograms_s": histograms,
            }
