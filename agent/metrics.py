"""The agent's own numbers: counters, gauges and latency summaries.

One ``Metrics`` object is shared by every stage. Counters are keyed by name and an optional
``reason`` label (``samples_dropped{reason="not_finite"}``). Writes take a lock: a handful of
increments per window costs far less than the invoke they count.
"""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np


class LatencyWindow:
    """The most recent ``size`` observations (seconds), for percentiles."""

    def __init__(self, size: int = 2048) -> None:
        self._values: deque[float] = deque(maxlen=size)

    def observe(self, seconds: float) -> None:
        self._values.append(seconds)

    def observe_many(self, seconds: list[float]) -> None:
        self._values.extend(seconds)

    def percentiles(self, qs: tuple[float, ...] = (50, 95, 99)) -> dict[str, float]:
        if not self._values:
            return {f"p{int(q)}": 0.0 for q in qs}
        arr = np.fromiter(self._values, dtype=np.float64)
        return {f"p{int(q)}": float(np.percentile(arr, q)) for q in qs}

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
            return {
                "uptime_s": time.time() - self.started,
                "counters": counters,
                "gauges": dict(self._gauges),
                "latency_s": latency,
            }
