"""Drift monitoring on the device: the package's reference against the recent windows.

``DriftMonitor.observe`` runs once per group of windows (after the inference thread ran them),
never per sample: it bins the newest ``hop`` rows of each window (each sample once) with
``agent.release.reference.bin_counts`` and the group's top-1 classes or scores with one
``bincount``. It bins the encoded values as they are (an int8 window: the reference's edges
mapped to the quantized scale once), so nothing is decoded. Counts go into ``RollingCounts``:
a ring of ``chunks`` partial sums, so memory is bounded and the rolling window moves by a
chunk at a time.

Each time a chunk closes, the PSI per channel (and output) is computed on ``bins + 2`` values
per channel and the alert judged: raised when a PSI reaches ``drift.threshold`` once the
window is ``min_fill`` full, cleared when every PSI is below ``drift.clear_below``
(hysteresis). ``on_change`` hears every raise and clear (the observe layer publishes the
retained alert).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.config import AnomalyPost, ClassificationPost, Config, DriftSection, RegressionPost
from agent.ingest.preprocess import Encoder
from agent.model.active import ActiveModel
from agent.release.reference import Reference, bin_counts, psi
from agent.wire.fieldcheck import OUTPUT, DriftAlertV1, DriftScoreV1, DriftV1, channel_name
from agent.wire.predictions import ModelRef

log = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]
FLUSH_SAMPLES = 256
"""Samples per channel gathered before they are binned together (at most a chunk)."""


class RollingCounts:
    """Sums over the last ``chunks`` chunks of about ``chunk_size`` items each."""

    def __init__(self, shape: tuple[int, ...], chunk_size: int, chunks: int) -> None:
        self.chunk_size = chunk_size
        self._ring: deque[tuple[F64, int]] = deque()
        self._chunks = chunks
        self._total = np.zeros(shape, np.float64)
        self._n_total = 0
        self._cur = np.zeros(shape, np.float64)
        self._n_cur = 0

    def add(self, values: npt.NDArray[np.floating | np.integer], n: int) -> bool:
        """Add ``values`` (the sums of ``n`` items); True when that closed a chunk."""
        self._cur += values
        self._n_cur += n
        if self._n_cur < self.chunk_size:
            return False
        self._ring.append((self._cur, self._n_cur))
        self._total += self._cur
        self._n_total += self._n_cur
        if len(self._ring) > self._chunks:
            old, n_old = self._ring.popleft()
            self._total -= old
            self._n_total -= n_old
        self._cur = np.zeros_like(self._cur)
        self._n_cur = 0
        return True

    @property
    def count(self) -> int:
        """Items in the closed chunks (what ``sums`` covers)."""
        return self._n_total

    @property
    def capacity(self) -> int:
        return self.chunk_size * self._chunks

    def sums(self) -> F64:
        return self._total.copy()


class DriftMonitor:
    """The rolling statistics of one model's input and output against its reference."""

    def __init__(
        self,
        ref: Reference,
        cfg: DriftSection,
        encoder: Encoder,
        *,
        hop: int,
        model: ModelRef,
        output_kind: str | None,
        on_change: Callable[[DriftAlertV1], None] | None = None,
        device: str = "",
    ) -> None:
        self.ref = ref
        self.cfg = cfg
        self.model = model
        self.device = device
        self.on_change = on_change
        self._hop = hop
        self._bins = ref.bins
        lo, hi = ref.ranges()
        # Bin the encoded values directly: q = y / scale + zero_point is monotone, so the
        # reference's edges map once and nothing is decoded per window.
        self._scale, self._zp = encoder.scale, float(encoder.zero_point)
        self._lo = lo / self._scale + self._zp
        self._hi = hi / self._scale + self._zp
        self._ref_in = ref.shares()
        c = len(ref.channels)
        step = max(1, cfg.window_samples // cfg.chunks)
        # per channel: bins + 2 counts, then sum and sum of squares (encoded scale)
        self._inputs = RollingCounts((c, self._bins + 4), step, cfg.chunks)
        self._out_kind: str | None = None
        self._ref_out: F64 | None = None
        self._out_lo = self._out_hi = np.zeros(1)
        out = ref.output
        if out is not None and output_kind is not None and out.kind == output_kind:
            self._out_kind = out.kind
            if out.frequencies is not None:
                self._ref_out = np.array(out.frequencies, np.float64)
            elif out.scores is not None:
                self._ref_out = np.array(out.scores.hist, np.float64)
                self._out_lo = np.array([out.scores.lo])
                self._out_hi = np.array([out.scores.hi])
        elif out is not None:
            log.info("drift: the reference's output (%s) does not fit; inputs only", out.kind)
        width = 0 if self._ref_out is None else len(self._ref_out)
        out_step = max(1, cfg.window_predictions // cfg.chunks)
        self._outputs = RollingCounts((max(width, 1),), out_step, cfg.chunks)
        self._lock = threading.Lock()
        self._psi_in = np.zeros(c)
        self._psi_out: float | None = None
        self.alert = False
        self._alert_channels: list[str] = []
        self.last_alert: DriftAlertV1 | None = None
        self.windows_seen = 0
        self._pending: list[npt.NDArray[np.generic]] = []
        self._pending_out: list[Sequence[npt.NDArray[Any]] | None] = []
        self._pending_n = 0
        self._flush_at = min(FLUSH_SAMPLES, step)

    # ---------------------------------------------------------------- per group of windows

    def observe(
        self, data: npt.NDArray[np.generic], outputs: Sequence[Sequence[npt.NDArray[Any]] | None]
    ) -> None:
        """``data``: the encoded windows ``(n, length, channels)``; ``outputs``: each window's
        outputs (None for a failed one). Kept (one copy of the new rows, the output arrays'
        references) until ``FLUSH_SAMPLES`` samples are pending, then binned in one pass: a
        group of one window costs a copy and two list appends."""
        n, length = data.shape[0], data.shape[1]
        self.windows_seen += n
        self._pending.append(data[:, max(0, length - self._hop) :, :].copy())
        self._pending_n += n * min(length, self._hop)
        if self._ref_out is not None:
            self._pending_out.extend(outputs)
        if self._pending_n >= self._flush_at:
            self.flush()

    def flush(self) -> None:
        """Bin what is pending (``observe`` calls it; tests and readers may too)."""
        if not self._pending:
            return
        rows_list, outputs = self._pending, self._pending_out
        self._pending, self._pending_out, self._pending_n = [], [], 0
        rows = rows_list[0] if len(rows_list) == 1 else np.concatenate(rows_list)
        n = rows.shape[0]
        x = rows.reshape(-1, rows.shape[-1]).astype(np.float32)
        counts = bin_counts(x, self._lo, self._hi, self._bins)
        s1 = x.sum(axis=0, dtype=np.float64)
        s2 = np.einsum("ij,ij->j", x, x, dtype=np.float64)
        block = np.concatenate([counts, s1[:, None], s2[:, None]], axis=1)
        with self._lock:
            closed = self._inputs.add(block, x.shape[0])
        if self._ref_out is not None:
            outs = [o[0] for o in outputs if o is not None]
            if outs:
                y = np.stack([np.asarray(o, np.float32).reshape(-1) for o in outs])
                if self._out_kind == "classes":
                    k = len(self._ref_out)
                    top = np.argmax(y[:, :k], axis=1)
                    oc = np.bincount(top, minlength=k)[:k].astype(np.float64)
                else:
                    oc = bin_counts(y[:, :1], self._out_lo, self._out_hi, self._bins)[0]
                with self._lock:
                    closed = self._outputs.add(oc, len(outs)) or closed
        if closed and n:
            self._judge()

    def _judge(self) -> None:
        with self._lock:
            sums, out_sums = self._inputs.sums(), self._outputs.sums()
            out_n = self._outputs.count
        b = self._bins + 2
        psi_in = psi(sums[:, :b], self._ref_in)
        psi_out = None
        if self._ref_out is not None and out_n:
            psi_out = float(psi(out_sums, self._ref_out))
        with self._lock:
            self._psi_in, self._psi_out = psi_in, psi_out
        if not self._judged():
            return
        scores = self._named_psi()
        cfg = self.cfg
        over = [k for k, v in scores.items() if v >= cfg.threshold]
        if not self.alert and over:
            self._set_alert(True, over, scores)
        elif self.alert and all(v < cfg.clear_below for v in scores.values()):
            self._set_alert(False, [], scores)

    def _judged(self) -> bool:
        need = self.cfg.min_fill
        ok = self._inputs.count >= need * self._inputs.capacity
        if self._ref_out is not None:
            ok = ok and self._outputs.count >= need * self._outputs.capacity
        return ok

    def _named_psi(self) -> dict[str, float]:
        scores = {channel_name(i): float(v) for i, v in enumerate(self._psi_in)}
        if self._psi_out is not None:
            scores[OUTPUT] = self._psi_out
        return scores

    def _set_alert(self, active: bool, channels: list[str], scores: dict[str, float]) -> None:
        self.alert = active
        self._alert_channels = channels
        msg = DriftAlertV1(
            device=self.device,
            ts=round(time.time(), 3),
            model=self.model,
            active=active,
            channels=channels,
            psi={k: round(v, 6) for k, v in scores.items()},
            threshold=self.cfg.threshold,
            clear_below=self.cfg.clear_below,
        )
        self.last_alert = msg
        if active:
            log.warning("drift alert raised: %s (PSI %s)", ", ".join(channels), msg.psi)
        else:
            log.info("drift alert cleared (PSI %s)", msg.psi)
        if self.on_change is not None:
            self.on_change(msg)

    # ---------------------------------------------------------------- reading

    def snapshot(self) -> DriftV1:
        """The scores as of the last closed chunk (cheap: read by metrics and the HTTP API)."""
        b = self._bins + 2
        with self._lock:
            psi_in, psi_out = self._psi_in.copy(), self._psi_out
            sums, oc = self._inputs.sums(), self._outputs.sums()
            n, n_out = self._inputs.count, self._outputs.count
        chans: list[DriftScoreV1] = []
        for i in range(len(self.ref.channels)):
            counts = sums[i, :b]
            total = max(counts.sum(), 1.0)
            oor = float((counts[0] + counts[-1]) / total) if n else 0.0
            mean = std = None
            if n:
                mq = sums[i, b] / n
                var = max(sums[i, b + 1] / n - mq * mq, 0.0)
                mean = round(float((mq - self._zp) * self._scale), 6)
                std = round(float(np.sqrt(var) * self._scale), 6)
            chans.append(
                DriftScoreV1(
                    name=channel_name(i),
                    psi=round(float(psi_in[i]), 6),
                    out_of_range=round(oor, 6),
                    mean=mean,
                    std=std,
                )
            )
        if psi_out is not None:
            oor = 0.0
            if self._out_kind == "scores":
                oor = float((oc[0] + oc[-1]) / max(oc.sum(), 1.0))
            chans.append(DriftScoreV1(name=OUTPUT, psi=round(psi_out, 6), out_of_range=oor))
        score = max((c.psi for c in chans), default=0.0)
        return DriftV1(
            model=self.model,
            samples=n,
            predictions=n_out if self._ref_out is not None else 0,
            judged=self._judged(),
            score=score,
            alert=self.alert,
            threshold=self.cfg.threshold,
            clear_below=self.cfg.clear_below,
            channels=chans,
        )


def drift_monitor(
    cfg: Config,
    active: ActiveModel,
    encoder: Encoder,
    on_change: Callable[[DriftAlertV1], None] | None = None,
) -> DriftMonitor | None:
    """The monitor for ``active``; None when drift is off or its package has no reference,
    or when the reference does not describe the configured channels."""
    ref = active.reference
    if not cfg.drift.enabled or ref is None:
        return None
    if len(ref.channels) != cfg.channels:
        log.warning(
            "drift: the reference of %s %s has %d channel(s), the pipeline %d: not monitored",
            active.name,
            active.version,
            len(ref.channels),
            cfg.channels,
        )
        return None
    post = cfg.postprocess
    kind = (
        "classes"
        if isinstance(post, ClassificationPost)
        else "scores"
        if isinstance(post, RegressionPost | AnomalyPost)
        else None
    )
    return DriftMonitor(
        ref,
        cfg.drift,
        encoder,
        hop=cfg.window.hop,
        model=ModelRef(name=active.name, version=active.version),
        output_kind=kind,
        on_change=on_change,
        device=cfg.agent.device_id,
    )
