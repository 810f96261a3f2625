"""Samples as they enter the agent: blocks of timestamped multi-channel values.

Sources emit ``SampleBlock``s, never single Python floats: a replay file in 'fast' mode or a
high-rate sensor hands over thousands of samples in one block, and the windower slices them
with NumPy. A block belongs to one *stream* (a source, or one topic of an MQTT source); each
stream is windowed on its own.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from agent.errors import SampleError

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class SampleBlock:
    """``n`` samples of one stream: ``ts`` (n,) epoch seconds, ``values`` (n, channels)."""

    stream: str
    ts: F64
    values: F32
    t_in: float = field(default_factory=time.perf_counter)
    """``time.perf_counter()`` when the block entered the agent (for end-to-end latency)."""

    def __len__(self) -> int:
        return int(self.values.shape[0])


def make_block(stream: str, values: object, ts: object | None, channels: int) -> SampleBlock:
    """Validate raw values into a block, raising ``SampleError`` with a stable reason.

    ``values`` is one sample (``channels`` numbers) or many (``n`` x ``channels``). ``ts`` is one
    timestamp per sample, a single timestamp for a single sample, or None (now).
    Reasons: ``non_numeric``, ``wrong_shape``, ``not_finite``.
    """
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            arr = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError, OverflowError) as exc:
        raise SampleError("non_numeric", f"values are not numbers: {exc}") from None
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2 or arr.shape[1] != channels or arr.shape[0] == 0:
        raise SampleError(
            "wrong_shape", f"expected {channels} value(s) per sample, got shape {arr.shape}"
        )
    if not np.isfinite(arr).all():
        raise SampleError("not_finite", "NaN or Inf in sample values")
    n = arr.shape[0]
    if ts is None:
        t = np.full(n, time.time(), dtype=np.float64)
    else:
        try:
            t = np.asarray(ts, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise SampleError("bad_timestamp", f"timestamp is not a number: {exc}") from None
        if t.shape[0] == 1 and n > 1:
            t = np.full(n, t[0])
        if t.shape[0] != n or not np.isfinite(t).all():
            raise SampleError("bad_timestamp", f"need {n} finite timestamp(s), got {t.shape[0]}")
    return SampleBlock(stream, t, np.ascontiguousarray(arr))


class RateLimitedLog:
    """Log a warning at most once per ``interval_s`` per key, with a count of the suppressed."""

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0) -> None:
        self._log = logger
        self._interval = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def warning(self, key: str, msg: str, *args: object) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._interval:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return
            self._last[key] = now
            suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            self._log.warning(msg + " (%d similar suppressed)", *args, suppressed)
        else:
            self._log.warning(msg, *args)
