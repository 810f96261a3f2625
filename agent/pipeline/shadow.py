"""A candidate model run beside the active one on the same windows, never publishing.

``ShadowRunner.offer`` is called by the pipeline once per group of windows the active model ran
(with the active outputs): it only puts the group on a small queue, and when the queue is full
the group is skipped and counted (``windows_skipped``): the shadow never slows the active path
down. Its own thread runs at a lower OS priority (``nice`` + ``SHADOW_NICE``), re-encodes the
windows for the candidate's input when its quantization differs (decode with the active
encoder, quantize for the candidate; bit-identical bytes when both are the same), invokes the
candidate's own interpreter (per stream for a stateful model: one clone per stream, so the
candidate never shares state with the active model or across streams) and compares the two per
group with NumPy: top-1 agreement (classification), mean and max absolute difference per
output, latency of each.

``report`` builds the ``ShadowReportV1`` the observe layer publishes at the metrics interval.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
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

Outputs = list[npt.NDArray[Any]]
_Item = tuple[Encoder, Windows, str, list[Outputs | None]]


class _Stop:
    pass


_STOP = _Stop()


class ShadowRunner:
    """Runs ``candidate`` on the windows the active model ran; see the module doc."""

    def __init__(
        self,
        cfg: Config,
        candidate: ActiveModel,
        active_latency: Callable[[], dict[str, float]],
        *,
        clock: Callable[[], float] = time.time,
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
        self._queue: queue.Queue[_Item | _Stop] = queue.Queue(maxsize=cfg.shadow.max_queue)
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
        self._thread = threading.Thread(target=self._run, name="shadow", daemon=True)
        self.idle = threading.Event()
        self.idle.set()

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        with contextlib.suppress(queue.Full):
            self._queue.put(_STOP, timeout=timeout)
        self._thread.join(timeout)

    # ---------------------------------------------------------------- the active side

    def offer(
        self, encoder: Encoder, windows: Windows, stream: str, outs: list[Outputs | None]
    ) -> None:
        """Queue a group the active model ran (never blocks: skipped and counted when full)."""
        try:
            self.idle.clear()
            self._queue.put_nowait((encoder, windows, stream, outs))
        except queue.Full:
            with self._lock:
                self.skipped += sum(o is not None for o in outs)
            if self._queue.empty():
                self.idle.set()

    # ---------------------------------------------------------------- the shadow thread

    def _run(self) -> None:
        with contextlib.suppress(OSError, AttributeError):  # not Linux: same priority
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), SHADOW_NICE)
        while True:
            item = self._queue.get()
            if isinstance(item, _Stop):
                break
            try:
                self._compare(*item)
            except Exception:  # a bug here must not end the shadow silently
                log.exception("shadow %s: comparing failed", self.candidate.version)
                self._count_error("error")
            if self._queue.empty():
                self.idle.set()

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
        self, active: Encoder, windows: Windows, stream: str, outs: list[Outputs | None]
    ) -> None:
        data = self._encode(active, windows.data)
        try:
            model = self._model(stream)
        except SampleError as exc:
            self._count_error(exc.reason)
            return
        run, shape, clock = model.run_native, self._shape, time.perf_counter
        mine: list[Outputs] = []
        theirs: list[Outputs] = []
        rows: list[int] = []
        latencies: list[float] = []
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
            mine.append(c)
            theirs.append(a)
            rows.append(i)
            if self._events is not None:
                self._events.window(a, c, stream, s0 + i * hop)
        self._latency.observe_many(latencies)
        if mine:
            self._tally(mine, theirs, rows, windows, stream, data)

    def _tally(
        self,
        mine: Sequence[Outputs],
        theirs: Sequence[Outputs],
        rows: list[int],
        windows: Windows,
        stream: str,
        data: npt.NDArray[Any],
    ) -> None:
        n = len(mine)
        sums, counts, maxes = [], [], []
        for k in range(len(self._abs_sum)):
            c = np.stack([np.asarray(o[k], np.float64).reshape(-1) for o in mine])
            a = np.stack([np.asarray(o[k], np.float64).reshape(-1) for o in theirs])
            d = np.abs(c - a) if c.shape == a.shape else np.full(1, np.inf)
            sums.append(float(d.sum()))
            counts.append(d.size)
            maxes.append(float(d.max()) if d.size else 0.0)
        agree = 0
        diff_rows: list[int] = []
        if self._classify:
            c0 = np.stack([np.asarray(o[0]).reshape(-1) for o in mine])
            a0 = np.stack([np.asarray(o[0]).reshape(-1) for o in theirs])
            if c0.shape == a0.shape and c0.shape[1] > 1:
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
            self._keep_sample(mine[j], theirs[j], rows[j], windows, stream, data)

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

    # ---------------------------------------------------------------- reading

    def report(self, device: str, active: ActiveModel) -> ShadowReportV1:
        with self._lock:
            compared, skipped, agree = self.compared, self.skipped, self.agreements
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
