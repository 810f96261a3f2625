"""The replay source: samples from a recorded file, at the recorded rate, a fixed rate, or fast.

The file is read whole into NumPy when the source is built (``agent.ingest.sources.recording``), so
a
missing or unusable file fails at start with a ``SourceError``, and emitting is slicing:

* ``fast``: no pacing, blocks of up to ``block_size`` samples (benchmarks run tens of
  thousands of windows per second through this).
* ``fixed``: ``rate_hz`` samples per second.
* ``recorded``: the gaps between the file's timestamps (the 'recorded' rate needs them).

Block timestamps (``ts``) are wall-clock emission times in every mode: in the paced modes each
sample is stamped with its due time (so a block of several samples is evenly spaced), in fast
mode the whole block with the time it is emitted. The file's own timestamps only set the pace.
When the file ends, ``run`` returns, or starts again with ``loop``.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import numpy.typing as npt

from agent.config import ReplaySource as ReplayConfig
from agent.ingest.samples import SampleBlock
from agent.ingest.sources.base import Emit, SourceContext
from agent.ingest.sources.pacing import MAX_CATCHUP_SAMPLES, Schedule
from agent.ingest.sources.recording import Recording, load_recording

log = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]


class FileReplay:
    """Replays one recording; see the module docstring for the rates."""

    def __init__(self, cfg: ReplayConfig, ctx: SourceContext) -> None:
        self.name = cfg.name
        self.cfg = cfg
        self.ctx = ctx
        self.recording: Recording = load_recording(
            cfg.path,
            cfg.channels,
            cfg.timestamp_column,
            want_ts=cfg.rate == "recorded",
            reject=lambda err: ctx.reject(self.name, err),
        )

    def run(self, emit: Emit, stop: threading.Event) -> None:
        if self.cfg.rate == "fast":
            self._run_fast(emit, stop)
        else:
            self._run_paced(emit, stop)

    def _run_fast(self, emit: Emit, stop: threading.Event) -> None:
        values = self.recording.values
        n, step, name = len(values), self.cfg.block_size, self.name
        while True:
            for i in range(0, n, step):
                if stop.is_set():
                    return
                block = values[i : i + step]
                emit(SampleBlock(name, np.full(block.shape[0], time.time()), block))
            if not self.cfg.loop:
                return

    def _due(self) -> _Due:
        """Each sample's due time within a pass, and the length of a pass (for ``loop``)."""
        n = len(self.recording)
        ts = self.recording.ts
        if ts is None:  # fixed rate
            return _Due(n, n / self.cfg.rate_hz, rate_hz=self.cfg.rate_hz)
        offsets = np.maximum.accumulate(ts - ts[0])  # a step back in time: at once
        span = float(offsets[-1])
        gap = span / (n - 1) if n > 1 and span > 0 else 1.0 / self.cfg.rate_hz
        return _Due(n, span + gap, offsets=offsets)

    def _run_paced(self, emit: Emit, stop: threading.Event) -> None:
        values = self.recording.values
        n, step, name = len(values), self.cfg.block_size, self.name
        due = self._due()
        cap = max(step, MAX_CATCHUP_SAMPLES)
        schedule = Schedule()
        base = 0.0
        while True:
            i = 0
            while i < n:
                k = min(step, n - i)
                if not schedule.wait(base + due.at(i + k - 1), stop):
                    return
                late = due.count(schedule.elapsed() - base)
                j = min(max(i + k, late), i + cap, n)
                emit(SampleBlock(name, schedule.wall(base + due.span(i, j)), values[i:j]))
                i = j
            if not self.cfg.loop:
                log.info("replay source %s: end of %s", name, self.cfg.path)
                return
            base += due.period


class _Due:
    """Each sample's due offset (s) within a pass: the recorded times, or ``i / rate_hz``
    computed when asked (a fixed rate keeps no array of one float64 per sample: 1.2 MB for
    a 96x96 image recording of 16 frames)."""

    def __init__(
        self, n: int, period: float, *, rate_hz: float = 0.0, offsets: F64 | None = None
    ) -> None:
        self.n = n
        self.period = period
        self.rate_hz = rate_hz
        self.offsets = offsets

    def at(self, i: int) -> float:
        return float(self.offsets[i]) if self.offsets is not None else i / self.rate_hz

    def span(self, i: int, j: int) -> F64:
        if self.offsets is not None:
            return self.offsets[i:j]
        return np.arange(i, j, dtype=np.float64) / self.rate_hz

    def count(self, t: float) -> int:
        """How many samples are due at or before ``t`` (``searchsorted(..., "right")``)."""
        if self.offsets is not None:
            return int(np.searchsorted(self.offsets, t, side="right"))
        if t < 0:
            return 0
        r, n = self.rate_hz, self.n
        k = min(int(t * r), n - 1)  # the last due sample, up to rounding: settle it exactly
        while k + 1 < n and (k + 1) / r <= t:
            k += 1
        while k >= 0 and k / r > t:
            k -= 1
        return k + 1
