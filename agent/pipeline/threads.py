"""The data path, wired: sources -> window -> preprocess -> infer -> postprocess -> publisher.

Threads:
- one per source. It reads ``SampleBlock``s and windows them right there (``StreamWindowers``
  of its own): each window is normalised and encoded into the model's own input type
  (``agent.ingest.preprocess.Encoder``: int8 for a quantized model) in one pass, so the bytes that
  reach the inference thread go to the interpreter as they are. Completed windows enter the
  bounded ingest queue (file and generator sources block when it is full: back-pressure; the
  MQTT source never blocks the network thread: a full queue drops the windows and counts
  ``ingest_overflow``);
- one inference thread: set the input, ``invoke()`` (which releases the GIL, so reading,
  encoding, serialising and publishing overlap with it), read the outputs, postprocess;
- the publisher thread (``agent.delivery.publisher``).

Several windows per invoke (``model.max_invoke_batch``, agent/model/batching.py): when items
queue up, the inference thread takes what else is queued for the same stages (never across a
swap; several streams only of a stateless model) and runs up to that many windows in one
invoke, postprocessed together (``postprocess_rows``); each prediction keeps its own stream,
sample and timestamp.

Inline runs: a source that spends more time idle than its windows take to run (a sensor at
100 windows/s, not a fast replay) runs its windows itself when nothing is queued or running,
under the same lock as the inference thread: in order, one hand-over and one thread wake-up
per window less (latency and CPU at low rates). Busy sources queue, so reading overlaps
``invoke()``.

A model swap (OTA) replaces the stages (model, encoder, postprocessor) that the source threads
encode for. Each queued item carries the stages it was encoded for and runs on that model, so
the switch falls between two windows of every stream: no sample is dropped or processed twice,
windows already queued finish on the old model, and every prediction names the version that
made it.

State per stream: a stateful (streaming) model gets one interpreter per stream
(``agent.pipeline.streams``), chosen once per queued item (an item holds one stream's windows);
a stateless model runs every stream on the one interpreter, with no per-window cost added.
Every prediction carries its stream and the index of its window's first sample
(``(windows.first + i) * hop``).
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.config import Config, MqttSource
from agent.delivery.publisher import PredictionRecord, Publisher
from agent.errors import BatchUnsupported, InferenceError, SampleError, ShapeMismatch
from agent.ingest.preprocess import Encoder, Preprocessor, check_model_input
from agent.ingest.samples import RateLimitedLog, SampleBlock
from agent.ingest.sources import PushSource, Source, SourceContext, build_source
from agent.ingest.sources.pacing import StopSignal
from agent.ingest.window import StreamWindowers, Windows
from agent.metrics import Metrics
from agent.model.active import ActiveModel
from agent.model.batching import InvokeBatch, invoke_batch
from agent.model.postprocess import (
    AnomalyPostprocessor,
    Postprocessor,
    build_postprocessor,
    postprocess_rows,
)
from agent.model.runtime import Array, Model
from agent.pipeline.ondemand import OnDemandRunner
from agent.pipeline.streams import PerStream, stream_models
from agent.wire.topics import Topics

if TYPE_CHECKING:  # imported when used: a device without drift or shadows does not pay for them
    from agent.pipeline.drift import DriftMonitor
    from agent.pipeline.shadow import ShadowRunner
    from agent.wire.fieldcheck import DriftAlertV1

log = logging.getLogger(__name__)


class _Eof:
    """Queued after the last window: the inference thread finishes."""


_EOF = _Eof()
_HANDOVER_S = 0.001  # longest a prediction waits in the inference thread for its group


@dataclass
class _Stages:
    """Everything that depends on the model: rebuilt and validated before a swap."""

    active: ActiveModel
    input_shape: tuple[int, ...]
    postprocessor: Postprocessor
    topic: str
    encoder: Encoder
    window: Callable[[Array], Array] | None
    """Turns an encoded window back into the normalised float one, for a postprocessor that
    reads the input (``score = 'mse'``); None when it is not needed (or already float)."""
    models: PerStream[Model] | None = None
    """A stateful model's interpreter per stream; None: every stream runs on ``active.model``."""
    hop: int = 1
    """Samples between window starts: window k of a stream starts at sample k * hop."""
    drift: DriftMonitor | None = None
    """The model's drift monitor (agent/pipeline/drift.py) when its package has a reference."""
    batch: InvokeBatch | None = None
    """Several queued windows per invoke (agent/model/batching.py); None: one per window."""


_Item = tuple[_Stages, Windows, str]
"""What the ingest queue carries: the stages a source encoded for, the windows, the stream."""


def build_stages(
    cfg: Config,
    active: ActiveModel,
    topics: Topics,
    on_drift: Callable[[DriftAlertV1], None] | None = None,
) -> _Stages:
    """Validate ``active`` against the configured pipeline (ShapeMismatch if it does not fit)."""
    model = active.model
    if len(model.inputs) != 1:
        names = [t.name for t in model.inputs]
        raise ShapeMismatch(
            f"model {active.name} {active.version} has {len(model.inputs)} inputs {names}: the "
            "streaming pipeline feeds one window to a single-input model (multi-input models "
            "run through `edge-agent predict`)"
        )
    inp = model.inputs[0]
    if cfg.model.input is not None and cfg.model.input != inp.name:
        raise ShapeMismatch(
            f"model.input = {cfg.model.input!r}, but the model's input is named {inp.name!r}"
        )
    shape = check_model_input(inp, cfg.window.length, cfg.channels)
    post = build_postprocessor(
        cfg.postprocess,
        model.outputs,
        active.labels or None,
        input_size=cfg.window.length * cfg.channels,
        max_streams=cfg.window.max_streams,
        window_length=cfg.window.length,
    )
    models = stream_models(model, cfg.window.max_streams, cfg.model.stream_state_limit_mb)
    batch = _invoke_batch(cfg, active)  # None for a stateful model (reason logged)
    encoder = Encoder(Preprocessor(cfg.preprocess, cfg.channels), model.feed)
    reads_input = isinstance(post, AnomalyPostprocessor) and post.mse
    return _Stages(
        active=active,
        input_shape=shape,
        postprocessor=post,
        topic=topics.prediction(active.name),
        encoder=encoder,
        window=encoder.decode if reads_input and encoder.quantized else None,
        models=models,
        hop=cfg.window.hop,
        drift=_drift_monitor(cfg, active, encoder, on_drift),
        batch=batch,
    )


def _invoke_batch(cfg: Config, active: ActiveModel) -> InvokeBatch | None:
    """The model's batched interpreter, or None (logged once per load, with the reason)."""
    size = cfg.model.max_invoke_batch
    if size <= 1:
        return None
    try:
        return invoke_batch(active.model, size)
    except BatchUnsupported as exc:
        log.info(
            "model %s %s: one invoke per window (%s: %s)",
            active.name,
            active.version,
            exc.reason,
            exc.detail,
        )
        return None


def _drift_monitor(
    cfg: Config,
    active: ActiveModel,
    encoder: Encoder,
    on_drift: Callable[[DriftAlertV1], None] | None,
) -> DriftMonitor | None:
    if active.reference is None or not cfg.drift.enabled:
        return None
    from agent.pipeline.drift import drift_monitor

    return drift_monitor(cfg, active, encoder, on_drift)


class Pipeline:
    """The data path: sources, windowing, inference and hand-off to the publisher."""

    def __init__(
        self,
        cfg: Config,
        active: ActiveModel,
        publisher: Publisher,
        metrics: Metrics,
        topics: Topics,
        ctx: SourceContext,
    ) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self._topics = topics
        self._publisher = publisher
        self.on_drift: Callable[[DriftAlertV1], None] | None = None  # set by agent.observe
        self._stages = build_stages(cfg, active, topics, self._drift_changed)
        self.shadow: ShadowRunner | None = None
        self._swap_lock = threading.Lock()
        self._ingest: queue.Queue[_Item | _Eof] = queue.Queue(
            maxsize=max(s.max_queue for s in cfg.sources)
        )
        self._stop_sources = StopSignal()  # a paced source waits on it once per block
        self._sources: list[tuple[Source, threading.Thread]] = []
        self._emits: list[Callable[[SampleBlock], None]] = []
        self._ctx = ctx
        self._warn = RateLimitedLog(log)
        self._infer_thread: threading.Thread | None = None
        self._live_sources = 0
        self._live_lock = threading.Lock()
        self._run_lock = threading.Lock()  # one item runs at a time: the model, in order
        self._queued_lock = threading.Lock()
        self._queued = 0  # items queued or running on the inference thread
        self._busy_since: float | None = None
        self.finished = threading.Event()
        self._on_demand = OnDemandRunner(cfg, metrics)  # HTTP API: its own interpreter
        for scfg in cfg.sources:
            src = build_source(scfg, ctx)
            emit = self._emitter(blocking=not isinstance(scfg, MqttSource))
            t = threading.Thread(
                target=self._run_source, args=(src, emit), name=f"source-{src.name}", daemon=True
            )
            self._sources.append((src, t))
            self._emits.append(emit)

    # ---------------------------------------------------------------- public

    @property
    def active(self) -> ActiveModel:
        return self._stages.active

    def start(self) -> None:
        self.metrics.set("model_version", self._stages.active.version)
        self._infer_thread = threading.Thread(
            target=self._infer_loop, name="inference", daemon=True
        )
        self._infer_thread.start()
        self._live_sources = len(self._sources)
        for (src, _), emit in zip(self._sources, self._emits, strict=True):
            if isinstance(src, PushSource):  # subscribed before the MQTT link connects
                src.attach(emit, self._stop_sources)
        for _, t in self._sources:
            t.start()

    def swap_model(self, active: ActiveModel) -> None:
        """Validate ``active`` now and switch to it: windows read from now on are encoded for
        and run on it; those already queued finish on the old model."""
        stages = build_stages(self.cfg, active, self._topics, self._drift_changed)
        with self._swap_lock:
            old, self._stages = self._stages.active, stages
        self.metrics.set("model_version", active.version)
        log.info("model %s: switched %s -> %s", active.name, old.version, active.version)

    @property
    def drift(self) -> DriftMonitor | None:
        return self._stages.drift

    def _drift_changed(self, alert: DriftAlertV1) -> None:
        if self.on_drift is not None:
            self.on_drift(alert)

    def set_shadow(self, candidate: ActiveModel | None, counts_file: Path | None = None) -> None:
        """Run ``candidate`` as a shadow from now on (None: stop shadowing); ShapeMismatch
        when it does not fit the pipeline (agent/pipeline/shadow.py). ``counts_file``: where
        its running counts are kept across restarts (the same candidate goes on from them)."""
        runner = None
        if candidate is not None:
            from agent.pipeline.shadow import ShadowRunner

            runner = ShadowRunner(
                self.cfg,
                candidate,
                lambda: self.metrics.latency("invoke"),
                counts_file=counts_file,
            )
            runner.start()
        old, self.shadow = self.shadow, runner
        if old is not None:
            old.stop(save=False)  # replaced or ended: its counts are not needed again
        self.metrics.set("shadow_version", candidate.version if candidate else "")

    def stop(self, timeout: float) -> None:
        """Stop the sources, finish the windows already read, hand everything to the publisher."""
        self._stop_sources.set()
        deadline = time.monotonic() + timeout
        for _, t in self._sources:
            t.join(max(0.0, deadline - time.monotonic()))
        self._ingest.put(_EOF)
        if self._infer_thread is not None:
            self._infer_thread.join(max(0.0, deadline - time.monotonic()))
        if self.shadow is not None:
            self.shadow.stop(max(0.0, deadline - time.monotonic()))

    @property
    def heartbeat(self) -> float:
        """``time.monotonic()`` of the last sign of progress: when the window now being run
        started, or now when nothing is running (the watchdog's stall check reads it)."""
        busy = self._busy_since
        return busy if busy is not None else time.monotonic()

    def inference_alive(self) -> bool:
        return self._infer_thread is not None and self._infer_thread.is_alive()

    # ---------------------------------------------------------------- on demand (HTTP API)

    def predict_window(self, values: object, stream: str) -> dict[str, Any]:
        """One window from another program, validated like sensor input (``make_block``) and
        run on the ACTIVE model through a separate interpreter (agent/ondemand.py), never the
        inference thread's. Raises SampleError / ShapeMismatch / InferenceError."""
        st = self._stages
        return self._on_demand.predict(st.active, st.input_shape, values, stream)

    # ---------------------------------------------------------------- sources

    def _emitter(self, *, blocking: bool) -> Callable[[SampleBlock], None]:
        """The ``emit`` a source calls with each block, in its own thread: window and encode
        the block, then run the windows it completed or queue them."""
        cfg = self.cfg
        windowers = StreamWindowers(
            cfg.window.length, cfg.window.hop, cfg.channels, max_streams=cfg.window.max_streams
        )
        metrics = self.metrics
        clock = time.perf_counter
        idle_from = 0.0  # when this source's previous emit returned
        inline_cost = 0.0  # how long its last inline run took

        def emit(block: SampleBlock) -> None:
            nonlocal idle_from, inline_cost
            metrics.inc("samples_in", len(block))
            st = self._stages  # one read: a swap between two blocks, never inside one
            try:
                windows = windowers.push(block, st.encoder)
            except SampleError as exc:
                self._ctx.reject(block.stream, exc)
                return
            if len(windows) == 0:
                return
            item: _Item = (st, windows, block.stream)
            t0 = clock()
            # A source that idles longer than running its windows takes (a sensor at 100
            # windows/s) runs them itself when nothing is queued or running: no hand-over to
            # the inference thread, one thread wake-up less per window. A busy one (a fast
            # replay, a burst) queues them, so that reading overlaps with invoke(). Never on
            # a thread that must not block (MQTT sources run on a network thread: handing
            # over may wait for the publisher, which may wait for that thread's acks).
            if blocking and t0 - idle_from > inline_cost and self._run_inline(item):
                idle_from = clock()
                inline_cost = idle_from - t0
                return
            self._enqueue(item, len(block), blocking)
            idle_from = clock()
            # The cost is measured on inline runs only: one slow run (a preemption, the
            # first invoke) must not keep a slow source queueing for good. Halve it on every
            # queued item, so an idle source tries inline again within a few windows (and a
            # busy one, whose idle time is ~0, still queues).
            inline_cost *= 0.5

        return emit

    def _run_inline(self, item: _Item) -> bool:
        with self._queued_lock:  # nothing queued or running: this item is next in order
            if self._queued or not self._run_lock.acquire(blocking=False):
                return False
        try:
            self._run([item], inline=True)
        finally:
            self._run_lock.release()
        return True

    def _enqueue(self, item: _Item, samples: int, blocking: bool) -> None:
        with self._queued_lock:
            self._queued += 1
        stream = item[2]
        if not blocking:
            try:
                self._ingest.put_nowait(item)
            except queue.Full:
                self._done_queued()
                self.metrics.inc("samples_dropped", samples, reason="ingest_overflow")
                self._warn.warning(
                    "overflow", "inference is behind: dropped a block from %s", stream
                )
            return
        while not self._stop_sources.is_set():
            try:
                self._ingest.put(item, timeout=0.2)
                return
            except queue.Full:
                continue
        # stopping: the block was read but cannot be processed; count it honestly
        self._done_queued()
        self.metrics.inc("samples_dropped", samples, reason="shutdown")

    def _done_queued(self) -> None:
        with self._queued_lock:
            self._queued -= 1

    def _run_source(self, src: Source, emit: Callable[[SampleBlock], None]) -> None:
        try:
            src.run(emit, self._stop_sources)
        except Exception:
            log.exception("source %s failed", src.name)
            self.metrics.inc("source_failures", reason=src.name)
        finally:
            with self._live_lock:
                self._live_sources -= 1
                last = self._live_sources == 0
            if last and not self._stop_sources.is_set():
                log.info("all sources finished")
                self._ingest.put(_EOF)

    # ---------------------------------------------------------------- inference

    def _infer_loop(self) -> None:
        held: _Item | _Eof | None = None  # taken off the queue, but not for the group it ended
        while True:
            if held is not None:
                item, held = held, None
            else:
                try:
                    item = self._ingest.get(timeout=1.0)
                except queue.Empty:
                    continue
            if isinstance(item, _Eof):
                break
            group = [item]
            st = item[0]
            if st.batch is not None and st.batch.usable and st.models is None:
                # Take what else is queued for the same stages (the same model), up to one
                # batched invoke's worth: several streams may share it, a swap ends it.
                n, size, get = len(item[1]), st.batch.size, self._ingest.get_nowait
                while n < size:
                    try:
                        nxt = get()
                    except queue.Empty:
                        break
                    if isinstance(nxt, _Eof) or nxt[0] is not st:
                        held = nxt
                        break
                    group.append(nxt)
                    n += len(nxt[1])
            with self._run_lock:
                self._run(group)
            for _ in group:
                self._done_queued()
        self.finished.set()

    def _run(self, group: list[_Item], inline: bool = False) -> None:
        """Run a group of items of the same stages (with ``_run_lock`` held: on the inference
        thread, or ``inline`` in the source thread that read the one item, which then also
        hands the predictions to the publisher inline when it is idle)."""
        st = group[0][0]
        self._busy_since = time.monotonic()
        try:
            batch = st.batch
            if batch is not None and batch.usable and st.models is None:
                n = sum(len(w) for _, w, _ in group)
                if n >= batch.pad_from and (batch.model is not None or _enable(st, batch, group)):
                    self._process_batched(st, batch, group, inline)
                    return
            for _, windows, stream in group:
                self._process(st, windows, stream, inline)
        finally:
            self._busy_since = None

    def _process(self, st: _Stages, windows: Windows, stream: str, inline: bool) -> None:
        n = len(windows)
        self.metrics.inc("windows_run", n)
        x_all, ts_all, t_in = windows.data, windows.ts.tolist(), windows.t_in
        hop = st.hop
        s0 = windows.first * hop
        if st.models is None:
            run = st.active.model.run_native
        else:
            try:
                run = st.models.get(stream).run_native  # this stream's own state
            except SampleError as exc:
                self.metrics.inc("windows_dropped", n, reason=exc.reason)
                self._warn.warning("streams", "dropped windows of %s: %s", stream, exc.detail)
                return
        post, shape, window = st.postprocessor, st.input_shape, st.window
        topic, name, version = st.topic, st.active.name, st.active.version
        clock, submit, record = time.perf_counter, self._publisher.submit_many, PredictionRecord
        out: list[PredictionRecord] = []
        latencies: list[float] = []
        out_due = 0.0
        shadow = self.shadow  # drift and shadow see each window's outputs, once per group
        kept: list[list[Array] | None] = [None] * n if st.drift or shadow else []
        try:
            for i in range(n):
                x = x_all[i].reshape(shape)
                sample = s0 + i * hop  # the window's first sample in its stream
                t0 = clock()
                try:
                    outs = run(x)
                    latency = clock() - t0
                    if kept:
                        kept[i] = outs
                    result = post(outs, x if window is None else window(x), stream, sample)
                except InferenceError as exc:
                    self.metrics.inc("inference_errors", reason=exc.reason)
                    self._warn.warning("infer", "inference failed on %s: %s", stream, exc)
                    continue
                latencies.append(latency)
                if result is None:
                    continue
                # Hand predictions over in groups (one publisher wake-up per group), but never
                # hold one back for longer than _HANDOVER_S of inference: bounds the latency.
                if not out:
                    out_due = t0 + _HANDOVER_S
                out.append(
                    record(
                        topic,
                        name,
                        version,
                        stream,
                        ts_all[i],
                        result,
                        round(latency * 1000, 4),
                        t_in,
                        sample,
                    )
                )
                if t0 + latency >= out_due:
                    submit(out, inline=inline)
                    out = []
        finally:
            self.metrics.observe_many("invoke", latencies)
        if out:
            submit(out, inline=inline)
        if kept:
            if st.drift is not None:
                st.drift.observe(windows.data, kept)
            if shadow is not None:
                shadow.offer(st.encoder, windows, stream, kept)

    def _process_batched(
        self, st: _Stages, batch: InvokeBatch, group: list[_Item], inline: bool
    ) -> None:
        """``_process`` for a group of a stateless model, ``batch.size`` windows per invoke.

        The group's windows (one or more items, possibly of several streams) run in chunks of
        ``batch.size``; a last chunk of at least ``batch.pad_from`` windows is padded (the
        padding's outputs are dropped), a smaller one runs one invoke per window. Outputs are
        postprocessed per chunk, vectorised (``postprocess_rows``: the same payloads as one
        call per window). ``latency_ms`` of a window: from when this group started running to
        when its chunk's outputs were read (its own wait in the group + the chunk's invoke);
        the ``invoke`` metric gets each window's share of its invoke (the chunk's time / its
        windows), comparable with one-window invokes.
        """
        t_start = time.perf_counter()
        size, brun = batch.size, batch.run
        hop, shape = st.hop, st.input_shape
        bshape = (size, *shape[1:])
        post, window = st.postprocessor, st.window
        topic, name, version = st.topic, st.active.name, st.active.version
        clock, submit, record = time.perf_counter, self._publisher.submit_many, PredictionRecord
        single = st.active.model.run_native
        # per window: its stream, first sample, timestamp, arrival; one array of all windows
        streams: list[str] = []
        samples: list[int] = []
        ts: list[float] = []
        t_ins: list[float] = []
        for _, windows, stream in group:
            k = len(windows)
            s0 = windows.first * hop
            streams += [stream] * k
            samples += range(s0, s0 + k * hop, hop)
            ts += windows.ts.tolist()
            t_ins += [windows.t_in] * k
        n = len(streams)
        self.metrics.inc("windows_run", n)
        if len(group) == 1:
            x_all = group[0][1].data.reshape((n, *shape[1:]))
        else:
            x_all = np.concatenate([w.data for _, w, _ in group]).reshape((n, *shape[1:]))
        shadow = self.shadow
        kept: list[list[Array] | None] = [None] * n if st.drift or shadow else []
        out: list[PredictionRecord] = []
        shares: list[float] = []
        out_due = t_start + _HANDOVER_S
        try:
            for a in range(0, n, size):
                m = min(size, n - a)
                xs = x_all[a : a + m]
                t0 = clock()
                outs: list[Array] | None = None
                try:
                    if m == size:
                        outs = brun(xs.reshape(bshape))
                    elif batch.pad is not None and m >= batch.pad_from:
                        padded = batch.pad.copy()
                        padded[:m] = xs
                        outs = [o[:m] for o in brun(padded)]
                except InferenceError:
                    outs = None  # the batched invoke failed: each window gets its own outcome
                if outs is not None:
                    t1 = clock()
                    shares += [(t1 - t0) / m] * m
                    lat = [round((t1 - t_start) * 1000, 4)] * m
                    results = postprocess_rows(
                        post,
                        outs,
                        streams[a : a + m],
                        samples[a : a + m],
                        functools.partial(_row_input, xs, shape, window),
                    )
                    rows: list[list[Array] | None] = (
                        [[o[j : j + 1] for o in outs] for j in range(m)] if kept else []
                    )
                else:
                    results, rows, lat = [], [], []
                    for j in range(m):
                        x = xs[j].reshape(shape)
                        tj = clock()
                        try:
                            one = single(x)
                        except InferenceError as exc:
                            results.append(exc)
                            rows.append(None)
                            lat.append(0.0)
                            continue
                        t1 = clock()
                        shares.append(t1 - tj)
                        lat.append(round((t1 - t_start) * 1000, 4))
                        rows.append(one)
                        try:
                            results.append(
                                post(one, _as_input(x, window), streams[a + j], samples[a + j])
                            )
                        except InferenceError as exc:
                            results.append(exc)
                if kept:  # drift and shadow see every window that has outputs
                    kept[a : a + m] = rows
                for j, result in enumerate(results):
                    if result is None:
                        continue
                    i = a + j
                    if isinstance(result, InferenceError):
                        self.metrics.inc("inference_errors", reason=result.reason)
                        self._warn.warning(
                            "infer", "inference failed on %s: %s", streams[i], result
                        )
                        continue
                    out.append(
                        record(
                            topic,
                            name,
                            version,
                            streams[i],
                            ts[i],
                            result,
                            lat[j],
                            t_ins[i],
                            samples[i],
                        )
                    )
                if out and clock() >= out_due:
                    submit(out, inline=inline)
                    out = []
                    out_due = clock() + _HANDOVER_S
        finally:
            self.metrics.observe_many("invoke", shares)
        if out:
            submit(out, inline=inline)
        if kept:
            base = 0
            for _, windows, stream in group:
                part = kept[base : base + len(windows)]
                base += len(windows)
                if st.drift is not None:
                    st.drift.observe(windows.data, part)
                if shadow is not None:
                    shadow.offer(st.encoder, windows, stream, part)


def _enable(st: _Stages, batch: InvokeBatch, group: list[_Item]) -> bool:
    """The first full group: check the model on its windows (agent/model/batching.py)."""
    shape, size = st.input_shape, batch.size
    data = [w.data for _, w, _ in group]
    x = data[0] if len(data) == 1 else np.concatenate(data)
    return batch.enable(np.ascontiguousarray(x[:size]).reshape((size, *shape[1:])))


def _row_input(
    xs: Array, shape: tuple[int, ...], window: Callable[[Array], Array] | None, j: int
) -> Array:
    return _as_input(xs[j].reshape(shape), window)


def _as_input(x: Array, window: Callable[[Array], Array] | None) -> Array:
    """The window as the postprocessor reads it (decoded to float for ``score = 'mse'``)."""
    return x if window is None else window(x)
