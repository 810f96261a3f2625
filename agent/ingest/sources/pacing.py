"""Real-time pacing of generated and replayed samples against the monotonic clock.

A ``Schedule`` is started once; every sample has a due *offset* from that start, so sleeping
until each deadline never accumulates drift. A source that wakes up late emits everything
that is due in one (bigger) block instead of falling further behind.
"""

from __future__ import annotations

import _thread
import threading
import time

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]

MAX_CATCHUP_SAMPLES = 4096
"""Largest block a late source emits to catch up (when its ``block_size`` is smaller)."""


STEP_S = 1.0
"""A wall clock that moved this much against the monotonic one was stepped (NTP)."""


class StopSignal(threading.Event):
    """The sources' stop flag: a ``threading.Event`` whose timed ``wait`` costs one C call.

    A paced source waits once per block (100 times a second for a sensor at 100 windows/s).
    ``Event.wait`` builds a ``Condition`` round per call (a lock allocated, ~12 Python calls);
    here a gate lock, held until ``set``, is acquired with the timeout: the same wake-up,
    ~8 µs of CPU less per wait on the development VM. Set once and never cleared (``clear``
    raises): a stopped pipeline is not restarted.
    """

    def __init__(self) -> None:
        super().__init__()
        self._gate = _thread.allocate_lock()
        self._gate.acquire()
        self._once = threading.Lock()
        self._up = False

    def set(self) -> None:
        with self._once:
            if self._up:
                return
            self._up = True
            super().set()
            self._gate.release()

    def clear(self) -> None:
        raise TypeError("a StopSignal is set once; make a new one")

    def wait(self, timeout: float | None = None) -> bool:
        if self._up:
            return True
        if self._gate.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
            self._gate.release()  # the next waiter passes too
            return True
        return self._up


class Schedule:
    """Deadlines as offsets (seconds) from the moment the schedule was made."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self._wall0 = time.time() - (time.monotonic() - self.t0)  # the wall time at t0

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

        One anchor (the wall time at the start) serves every block, so stamps within a stream
        never go backwards and keep the exact spacing of the rate: reading the two clocks
        again for every block made them jitter by microseconds, backwards at some block
        boundaries. Only a real step of the wall clock (NTP: more than ``STEP_S``) moves the
        anchor, and the stamps with it.
        """
        drift = time.time() - time.monotonic() - (self._wall0 - self.t0)
        if abs(drift) > STEP_S:
            self._wall0 += drift
        return self._wall0 + offsets
