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

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.config import Config, MqttSource
from agent.delivery.publisher import PredictionRecord, Publisher
from agent.errors import InferenceError, SampleError, ShapeMismatch
from agent.ingest.preprocess import Encoder, Preprocessor, check_model_input
from agent.ingest.samples import RateLimitedLog, SampleBlock
from agent.ingest.sources import PushSource, Source, SourceContext, build_source
from agent.ingest.sources.pacing import StopSignal
from agent.ingest.window import StreamWindowers, Windows
from agent.metrics import Metrics
from agent.model.active import ActiveModel
from agent.model.postprocess import AnomalyPostprocessor, Postprocessor, build_postprocessor
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
    )


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
            self._run(item, inline=True)
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
        while True:
            try:
                item = self._ingest.get(timeout=1.0)
            except queue.Empty:
                continue
            if isinstance(item, _Eof):
                break
            with self._run_lock:
                self._run(item)
            self._done_queued()
        self.finished.set()

    def _run(self, item: _Item, inline: bool = False) -> None:
        """Run one item's windows (with ``_run_lock`` held: on the inference thread, or
        ``inline`` in the source thread that read them, which then also hands the predictions
        to the publisher inline when it is idle)."""
        st, windows, stream = item
        self._busy_since = time.monotonic()
        try:
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
