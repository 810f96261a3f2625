"""A candidate model run beside the active one on the same windows, never publishing.

``ShadowRunner.offer`` is called by the pipeline once per group of windows the active model ran
(with the active outputs): it only appends the group (references, no copy) to a pending list,
and when ``shadow.max_queue`` groups are pending already the group is skipped and counted
(``windows_skipped``): the shadow never slows the active path down. The shadow is not latency
sensitive, so its thread takes the pending groups in **batches**: it is woken when the first
group of a batch arrives, then gathers for up to ``BATCH_S`` (or until half the queue is
pending) before it runs them all. At 100 windows/s that is one thread wake-up per few windows
instead of one per window, and the tally runs once per batch. The thread runs at a lower OS
priority (``nice`` + ``SHADOW_NICE``); each ``invoke()`` releases the GIL, so the active thread
never waits for more than one window's Python work of the shadow.

Per window it re-encodes the windows for the candidate's input when its quantization differs
(decode with the active encoder, quantize for the candidate; bit-identical bytes when both are
the same), invokes the candidate's own interpreter (per stream for a stateful model: one clone
per stream, so the candidate never shares state with the active model or across streams) and
compares the two with NumPy: top-1 agreement (classification), mean and max absolute
difference per output, latency of each.

``report`` builds the ``ShadowReportV1`` the observe layer publishes at the metrics interval;
``save`` keeps the running counts on disk (``agent.pipeline.shadowcounts``) at that interval
and when the runner stops, and a runner for the same candidate goes on from them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.config import ClassificationPost, Config, DetectionPost
from agent.errors import EdgeAgentError, SampleError, ShapeMismatch
from agent.ingest.preprocess import Encoder, Preprocessor, check_model_input
from agent.ingest.window import Windows
from agent.metrics import LatencyWindow
from agent.model.active import ActiveModel
from agent.model.postprocess import build_postprocessor
from agent.model.runtime import INT_RANGES, Model
from agent.pipeline import shadowcounts
from agent.pipeline.shadowcounts import ShadowCounts
from agent.pipeline.streams import stream_models
from agent.wire.fieldcheck import (
    DisagreementV1,
    EventAgreementV1,
    LatencyPairMs,
    OutputDiffV1,
    ShadowReportV1,
)
from agent.wire.predictions import ModelRef

log = logging.getLogger(__name__)

SHADOW_NICE = 10
"""How much lower the shadow thread's OS priority is than the agent's (Linux: per thread)."""

BATCH_S = 0.05
"""Longest a pending group waits for others to be run with (the shadow is not latency
sensitive: fewer wake-ups of its thread, and one tally per batch)."""

Outputs = list[npt.NDArray[Any]]
_Item = tuple[Encoder, Windows, str, list[Outputs | None]]
_Row = tuple[Outputs, Outputs, int, Windows, str, npt.NDArray[Any]]
"""One compared window: candidate outputs, active outputs, row in its group, the group's
windows, stream, and the group's windows encoded for the candidate."""


class ShadowRunner:
    """Runs ``candidate`` on the windows the active model ran; see the module doc."""

    def __init__(
        self,
        cfg: Config,
        candidate: ActiveModel,
        active_latency: Callable[[], dict[str, float]],
        *,
        clock: Callable[[], float] = time.time,
        counts_file: Path | None = None,
    ) -> None:
        model = candidate.model
        if len(model.inputs) != 1:
            raise ShapeMismatch(
                f"shadow {candidate.version}: {len(model.inputs)} inputs; the pipeline feeds one"
            )
        self.cfg = cfg
        self.candidate = candidate
        self._shape = check_model_input(model.inputs[0], cfg.window.length, cfg.channels)
        self._encoder = Encoder(Preprocessor(cfg.preprocess, cfg.channels), model.feed)
        self._classify = isinstance(cfg.postprocess, ClassificationPost | DetectionPost)
        # a stateful candidate: its own interpreter per stream (agent/pipeline/streams.py), so
        # it never shares state with the active model or across streams
        self._per_stream = stream_models(
            model, cfg.window.max_streams, cfg.model.stream_state_limit_mb
        )
        self._active_latency = active_latency
        self._max_pending = cfg.shadow.max_queue
        self._batch = max(1, self._max_pending // 2)  # a batch this full is run at once
        self._pending: list[_Item] = []
        self._pending_lock = threading.Lock()  # the active side's only lock, held briefly
        self._wake = threading.Event()
        self._stopping = False
        self._lock = threading.Lock()
        self.since = clock()
        self._clock = clock
        self.compared = 0
        self.skipped = 0
        self.agreements = 0
        self.errors: dict[str, int] = {}
        n_out = len(model.outputs)
        self._abs_sum = np.zeros(n_out)
        self._abs_count = np.zeros(n_out)
        self._abs_max = np.zeros(n_out)
        self._latency = LatencyWindow()
        self._samples: deque[DisagreementV1] = deque(maxlen=cfg.shadow.disagreement_samples)
        self._events: EventMatcher | None = None
        if isinstance(cfg.postprocess, DetectionPost):
            self._events = EventMatcher(cfg, candidate)
        self._counts_file = counts_file
        if counts_file is not None:
            saved = shadowcounts.load(
                counts_file, candidate.name, candidate.version, candidate.sha256, n_out
            )
            if saved is not None:
                self._restore(saved)
        self._thread = threading.Thread(target=self._run, name="shadow", daemon=True)
        self.idle = threading.Event()
        """Set when no group is pending or being compared (tests wait on it)."""
        self.idle.set()

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2.0, *, save: bool = True) -> None:
        """Run what is pending, end the thread and (``save``) keep the counts on disk."""
        with self._pending_lock:
            self._stopping = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if save:
            self.save()

    # ---------------------------------------------------------------- the active side

    def offer(
        self, encoder: Encoder, windows: Windows, stream: str, outs: list[Outputs | None]
    ) -> None:
        """Hand over a group the active model ran (never blocks: skipped and counted when
        ``max_queue`` groups are pending). Wakes the shadow thread only for the first group
        of a batch, or when the batch is full."""
        with self._pending_lock:
            n = len(self._pending)
            if n >= self._max_pending:
                self.skipped += sum(o is not None for o in outs)
                return
            self._pending.append((encoder, windows, stream, outs))
            if n == 0:
                self.idle.clear()
            wake = n == 0 or n + 1 >= self._batch
        if wake:
            self._wake.set()

    # ---------------------------------------------------------------- the shadow thread

    def _run(self) -> None:
        with contextlib.suppress(OSError, AttributeError):  # not Linux: same priority
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), SHADOW_NICE)
        wake = self._wake
        while True:
            wake.wait()  # the first group of a batch is pending (or we are stopping)
            wake.clear()
            if not self._stopping:
                wake.wait(BATCH_S)  # gather more: a full batch or a stop ends it early
                wake.clear()
            with self._pending_lock:
                batch, self._pending = self._pending, []
                stopping = self._stopping
            try:
                self._compare_batch(batch)
            except Exception:  # a bug here must not end the shadow silently
                log.exception("shadow %s: comparing failed", self.candidate.version)
                self._count_error("error")
            with self._pending_lock:
                if not self._pending:
                    self.idle.set()
            if stopping:
                break

    def _compare_batch(self, batch: list[_Item]) -> None:
        rows: list[_Row] = []
        latencies: list[float] = []
        for item in batch:
            self._compare(*item, rows, latencies)
        with self._lock:  # report() reads the window from another thread
            self._latency.observe_many(latencies)
        if rows:
            self._tally(rows)

    def _model(self, stream: str) -> Model:
        if self._per_stream is None:
            return self.candidate.model
        return self._per_stream.get(stream)  # SampleError('too_many_streams') past the cap

    def _encode(self, active: Encoder, data: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """The windows in the candidate's input type (the same bytes when the types agree)."""
        mine = self._encoder
        if (active.dtype, active.scale, active.zero_point) == (
            mine.dtype,
            mine.scale,
            mine.zero_point,
        ):
            return data
        y = active.decode(data)
        if not mine.quantized:
            return y.astype(mine.dtype)
        q = np.rint(y / np.float32(mine.scale)) + np.float32(mine.zero_point)
        lo, hi = INT_RANGES[str(mine.dtype)]
        out: npt.NDArray[Any] = np.clip(q, lo, hi).astype(mine.dtype)
        return out

    def _compare(
        self,
        active: Encoder,
        windows: Windows,
        stream: str,
        outs: list[Outputs | None],
        rows: list[_Row],
        latencies: list[float],
    ) -> None:
        data = self._encode(active, windows.data)
        try:
            model = self._model(stream)
        except SampleError as exc:
            self._count_error(exc.reason)
            return
        run, shape, clock = model.run_native, self._shape, time.perf_counter
        hop, s0 = self.cfg.window.hop, windows.first * self.cfg.window.hop
        for i, a in enumerate(outs):
            if a is None:
                continue  # the active model failed on it: nothing to compare
            t0 = clock()
            try:
                c = run(data[i].reshape(shape))
            except EdgeAgentError as exc:
                self._count_error(getattr(exc, "reason", None) or "error")
                continue
            latencies.append(clock() - t0)
            rows.append((c, a, i, windows, stream, data))
            if self._events is not None:
                self._events.window(a, c, stream, s0 + i * hop)

    def _tally(self, rows: Sequence[_Row]) -> None:
        n = len(rows)
        sums, counts, maxes = [], [], []
        c0 = a0 = np.zeros((0, 0))
        for k in range(len(self._abs_sum)):
            c = np.stack([np.asarray(r[0][k], np.float64).reshape(-1) for r in rows])
            a = np.stack([np.asarray(r[1][k], np.float64).reshape(-1) for r in rows])
            if k == 0:
                c0, a0 = c, a  # the first output: top-1 below
            d = np.abs(c - a) if c.shape == a.shape else np.full(1, np.inf)
            sums.append(float(d.sum()))
            counts.append(d.size)
            maxes.append(float(d.max()) if d.size else 0.0)
        agree = 0
        diff_rows: list[int] = []
        if self._classify and c0.shape == a0.shape and c0.shape[1] > 1:
            ct, at = np.argmax(c0, axis=1), np.argmax(a0, axis=1)
            same = ct == at
            agree = int(same.sum())
            diff_rows = [int(j) for j in np.flatnonzero(~same)[: self._samples.maxlen or 0]]
        with self._lock:
            self.compared += n
            self.agreements += agree
            self._abs_sum += sums
            self._abs_count += counts
            np.maximum(self._abs_max, maxes, out=self._abs_max)
        for j in diff_rows:
            self._keep_sample(*rows[j])

    def _keep_sample(
        self,
        mine: Outputs,
        theirs: Outputs,
        row: int,
        windows: Windows,
        stream: str,
        data: npt.NDArray[Any],
    ) -> None:
        c0 = np.asarray(mine[0], np.float64).reshape(-1)
        a0 = np.asarray(theirs[0], np.float64).reshape(-1)
        window = None
        values = self._encoder.decode(data[row]).reshape(-1)
        if values.size * 8 <= self.cfg.shadow.max_sample_bytes:  # JSON floats: ~8 bytes each
            window = [round(float(v), 5) for v in values]
        sample = DisagreementV1(
            stream=stream,
            ts=float(windows.ts[row]),
            active=int(np.argmax(a0)),
            candidate=int(np.argmax(c0)),
            active_outputs=[round(float(v), 6) for v in a0[:64]],
            candidate_outputs=[round(float(v), 6) for v in c0[:64]],
            window=window,
        )
        with self._lock:
            self._samples.append(sample)

    def _count_error(self, reason: str) -> None:
        with self._lock:
            self.errors[reason] = self.errors.get(reason, 0) + 1

    # ---------------------------------------------------------------- the counts on disk

    def _restore(self, saved: ShadowCounts) -> None:
        self.since = saved.since
        self.compared, self.skipped, self.agreements = (
            saved.compared,
            saved.skipped,
            saved.agreements,
        )
        self.errors = dict(saved.errors)
        self._abs_sum = np.asarray(saved.abs_sum, np.float64)
        self._abs_count = np.asarray(saved.abs_count, np.float64)
        self._abs_max = np.asarray(saved.abs_max, np.float64)
        self._latency.observe_many(saved.latency_s)
        self._samples.extend(saved.disagreements)
        if self._events is not None and saved.events is not None:
            self._events.counts = [saved.events[0], saved.events[1]]
            self._events.matched = saved.events[2]

    def counts(self) -> ShadowCounts:
        """The running counts now (what ``save`` writes)."""
        with self._pending_lock:
            skipped = self.skipped
        with self._lock:
            ev = self._events
            return ShadowCounts(
                model=self.candidate.name,
                version=self.candidate.version,
                sha256=self.candidate.sha256,
                since=self.since,
                compared=self.compared,
                skipped=skipped,
                agreements=self.agreements,
                errors=dict(self.errors),
                abs_sum=[float(x) for x in self._abs_sum],
                abs_count=[float(x) for x in self._abs_count],
                abs_max=[float(x) for x in self._abs_max],
                latency_s=self._latency.recent(),
                events=(ev.counts[0], ev.counts[1], ev.matched) if ev is not None else None,
                disagreements=list(self._samples),
            )

    def save(self) -> None:
        """Keep the running counts on disk (at the metrics interval and at stop; a runner for
        the same candidate goes on from them). A failed write is logged: the shadow goes on."""
        if self._counts_file is None:
            return
        try:
            shadowcounts.save(self._counts_file, self.counts())
        except OSError as exc:
            log.warning("shadow %s: cannot save its counts: %s", self.candidate.version, exc)

    # ---------------------------------------------------------------- reading

    def report(self, device: str, active: ActiveModel) -> ShadowReportV1:
        with self._pending_lock:
            skipped = self.skipped
        with self._lock:
            compared, agree = self.compared, self.agreements
            mean = np.divide(
                self._abs_sum,
                self._abs_count,
                out=np.zeros_like(self._abs_sum),
                where=self._abs_count > 0,
            )
            maxes = self._abs_max.copy()
            errors = dict(self.errors)
            samples = list(self._samples)
            cand = self._latency.percentiles((50, 99))
        act = self._active_latency()
        latency = {}
        for name, p in (("active", act), ("candidate", cand)):
            if p:
                latency[name] = LatencyPairMs(
                    p50=round(p.get("p50", 0.0) * 1000, 4), p99=round(p.get("p99", 0.0) * 1000, 4)
                )
        outputs = [
            OutputDiffV1(name=t.name, mean_abs_diff=float(m), max_abs_diff=float(x))
            for t, m, x in zip(self.candidate.model.outputs, mean, maxes, strict=True)
        ]
        classify = self._classify
        return ShadowReportV1(
            device=device,
            ts=round(self._clock(), 3),
            active=ModelRef(name=active.name, version=active.version),
            candidate=ModelRef(name=self.candidate.name, version=self.candidate.version),
            candidate_sha256=self.candidate.sha256,
            since=round(self.since, 3),
            windows_compared=compared,
            windows_skipped=skipped,
            top1_agreements=agree if classify else None,
            top1_agreement=(agree / compared if compared else None) if classify else None,
            outputs=outputs,
            latency_ms=latency,
            errors=errors,
            disagreements=samples,
            events=self._events.report() if self._events is not None else None,
        )


class EventMatcher:
    """Detection: the events each model raises on the same windows, and how they match.

    Both sides run a detection postprocessor of their own (the configured one, with its own
    per-stream state) on the windows the shadow compared; an event of one model matches an
    unmatched event of the other with the same label whose sample span overlaps it. Unmatched
    events wait (the last ``PENDING`` per stream and side) for a partner raised a little later.
    Runs on the shadow thread only.
    """

    PENDING = 64

    def __init__(self, cfg: Config, candidate: ActiveModel) -> None:
        model = candidate.model
        kw: dict[str, Any] = {
            "input_size": cfg.window.length * cfg.channels,
            "max_streams": cfg.window.max_streams,
            "window_length": cfg.window.length,
        }
        labels = candidate.labels or None
        self._post = [
            build_postprocessor(cfg.postprocess, model.outputs, labels, **kw) for _ in range(2)
        ]  # [active side, candidate side]
        self._zeros = np.zeros((1, cfg.window.length, cfg.channels), np.float32)
        self.counts = [0, 0]
        self.matched = 0
        self._pending: dict[str, tuple[deque[tuple[str, int, int]], ...]] = {}

    def window(self, active: Outputs, candidate: Outputs, stream: str, sample: int) -> None:
        pend = self._pending.get(stream)
        if pend is None:
            pend = self._pending[stream] = (deque(maxlen=self.PENDING), deque(maxlen=self.PENDING))
        for side, outs in enumerate((active, candidate)):
            res = self._post[side](outs, self._zeros, stream, sample)
            if res is None or res.get("type") != "event":
                continue
            self.counts[side] += 1
            ev = (str(res["label"]), int(res["start_sample"]), int(res["end_sample"]))
            other = pend[1 - side]
            hit = next((o for o in other if o[0] == ev[0] and o[1] < ev[2] and ev[1] < o[2]), None)
            if hit is not None:
                other.remove(hit)
                self.matched += 1
            else:
                pend[side].append(ev)

    def report(self) -> EventAgreementV1:
        a, c = self.counts
        return EventAgreementV1(
            active=a,
            candidate=c,
            matched=self.matched,
            agreement=self.matched / max(a, c) if max(a, c) else None,
        )
