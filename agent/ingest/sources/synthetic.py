"""The synthetic source: a seeded multi-channel sine + noise signal with injected anomalies.

Channel ``c`` of sample ``i`` is ``amplitude * sin(2 pi f_c t + c pi / 3) + N(0, noise_std)``
with ``t = i / rate_hz`` and ``f_c = frequency_hz[c % len(frequency_hz)]``. While no anomaly
is active, each sample starts one with ``anomalies.probability``; it adds ``magnitude`` to
every channel for ``duration_samples`` samples.

The same seed gives the same signal whatever the block sizes: noise and anomalies draw from
two independent generators spawned from the seed, in sample order. This is the demo's source.
"""

from __future__ import annotations

import logging
import math
import threading

import numpy as np
import numpy.typing as npt

from agent.config import SyntheticSource as SyntheticConfig
from agent.errors import SourceError
from agent.ingest.samples import SampleBlock
from agent.ingest.sources.base import Emit, SourceContext
from agent.ingest.sources.pacing import MAX_CATCHUP_SAMPLES, Schedule

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]


class SignalGenerator:
    """The deterministic part: consecutive samples of the signal, ``next(n)`` at a time."""

    def __init__(self, cfg: SyntheticConfig) -> None:
        if not cfg.frequency_hz:
            raise SourceError(f"synthetic source {cfg.name}: frequency_hz is empty")
        self.cfg = cfg
        noise_seed, anomaly_seed = np.random.SeedSequence(cfg.seed).spawn(2)
        self._noise = np.random.default_rng(noise_seed)
        self._anomaly = np.random.default_rng(anomaly_seed)
        freqs = [cfg.frequency_hz[c % len(cfg.frequency_hz)] for c in range(cfg.channels)]
        self._omega = 2.0 * math.pi * np.asarray(freqs, dtype=np.float64)
        self._phase = np.arange(cfg.channels, dtype=np.float64) * (math.pi / 3.0)
        self.index = 0
        """Index of the next sample."""
        self.anomalies_started = 0
        self._anomaly_left = 0  # samples left of the active anomaly

    def next(self, n: int) -> F32:
        """The next ``n`` samples, shape ``(n, channels)``."""
        cfg = self.cfg
        t = np.arange(self.index, self.index + n, dtype=np.float64) / cfg.rate_hz
        values = cfg.amplitude * np.sin(t[:, None] * self._omega + self._phase)
        if cfg.noise_std > 0:
            values += self._noise.normal(0.0, cfg.noise_std, size=values.shape)
        if cfg.anomalies.probability > 0:
            mask = self._anomaly_mask(n)
            values[mask] += cfg.anomalies.magnitude
        self.index += n
        return values.astype(np.float32)

    def _anomaly_mask(self, n: int) -> BoolArray:
        """Which of the next ``n`` samples lie in an anomaly (one uniform draw per sample)."""
        spec = self.cfg.anomalies
        mask = np.zeros(n, dtype=np.bool_)
        starts = np.flatnonzero(self._anomaly.random(n) < spec.probability)
        busy_until = self._anomaly_left  # first index (in this block) free of the active one
        mask[: min(busy_until, n)] = True
        for j in starts.tolist():
            if j < busy_until:
                continue  # an anomaly is active: no new one starts
            busy_until = j + spec.duration_samples
            mask[j:busy_until] = True
            self.anomalies_started += 1
        self._anomaly_left = max(0, busy_until - n)
        return mask


class SyntheticSignal:
    """Emits the signal in real time, ``block_size`` samples per block, until stopped."""

    def __init__(self, cfg: SyntheticConfig, ctx: SourceContext) -> None:
        self.name = cfg.name
        self.cfg = cfg
        self.ctx = ctx
        self.generator = SignalGenerator(cfg)

    def run(self, emit: Emit, stop: threading.Event) -> None:
        cfg = self.cfg
        rate = cfg.rate_hz
        schedule = Schedule()
        cap = max(cfg.block_size, MAX_CATCHUP_SAMPLES)
        sent = 0
        log.info("synthetic source %s: %g Hz, %d channel(s)", self.name, rate, cfg.channels)
        while True:
            left = cfg.max_samples - sent if cfg.max_samples is not None else cap
            if left <= 0:
                log.info("synthetic source %s: %d samples, done", self.name, sent)
                return
            k = min(cfg.block_size, left)
            # A block is ready when its last sample is due (sample i is due at i / rate).
            if not schedule.wait((sent + k - 1) / rate, stop):
                return
            due = math.floor(schedule.elapsed() * rate) + 1
            n = min(max(k, due - sent), cap, left)
            values = self.generator.next(n)
            offsets = np.arange(sent, sent + n, dtype=np.float64) / rate
            emit(SampleBlock(self.name, schedule.wall(offsets), values))
            sent += n
