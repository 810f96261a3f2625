"""Real-time pacing of generated and replayed samples against the monotonic clock.

A ``Schedule`` is started once; every sample has a due *offset* from that start, so sleeping
until each deadline never accumulates drift. A source that wakes up late emits everything
that is due in one (bigger) block instead of falling further behind.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]

MAX_CATCHUP_SAMPLES = 4096
"""Largest block a late source emits to catch up (when its ``block_size`` is smaller)."""


class Schedule:
    """Deadlines as offsets (seconds) from the moment the schedule was made."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def wait(self, offset_s: float, stop: threading.Event) -> bool:
        """Sleep until ``offset_s`` after the start; False as soon as ``stop`` is set."""
        delay = self.t0 + offset_s - time.monotonic()
        if delay > 0:
            return not stop.wait(delay)
        return not stop.is_set()

    def wall(self, offsets: F64) -> F64:
        """Epoch seconds of the given due offsets (now, when a sample is on time).

        Computed from the current monotonic/wall pair, so a wall clock step (NTP) moves the
        stamps with it instead of skewing the spacing between samples.
        """
        mono, wall = time.monotonic(), time.time()
        return wall - (mono - self.t0) + offsets
