"""The data path, wired: sources -> window -> preprocess -> infer -> postprocess -> publisher.

Threads:
- one per source, each emitting ``SampleBlock``s into the bounded ingest queue (file and
  generator sources block when it is full: back-pressure; the MQTT source never blocks the
  network thread: a full queue drops the block and counts ``ingest_overflow``);
- one inference thread that owns the windowers, the model and the postprocessor. ``invoke()``
  releases the GIL, so reading, serialising and publishing overlap with it;
- the publisher thread (``agent.publisher``).

A model swap (OTA) is handed to the inference thread and applied *between* two invocations:
no sample is dropped or processed twice, and every prediction names the version that made it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.config import Config, MqttSource
from agent.errors import InferenceError, SampleError, ShapeMismatch
from agent.metrics import Metrics
from agent.ondemand import OnDemandRunner
from agent.postprocess import Postprocessor, build_postprocessor
from agent.preprocess import Preprocessor, check_model_input
from agent.publisher import PredictionRecord, Publisher
from agent.runtime import Model
from agent.samples import RateLimitedLog, SampleBlock
from agent.sources import Source, SourceContext, build_source
from agent.topics import Topics
from agent.window import StreamWindowers

log = logging.getLogger(__name__)

_EOF = object()
_HANDOVER_S = 0.001  # longest a prediction waits in the inference thread for its group


@dataclass
class ActiveModel:
    """A loaded model plus what the pipeline needs to run it."""

    model: Model
    name: str
    version: str
    labels: list[str] = field(default_factory=list)
    sha256: str = ""


@dataclass
class _Stages:
    """Everything that depends on the model: rebuilt and validated before a swap."""

    active: ActiveModel
    input_shape: tuple[int, ...]
    postprocessor: Postprocessor
    topic: str


def build_stages(cfg: Config, active: ActiveModel, topics: Topics) -> _Stages:
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
    )
    return _Stages(
        active=active, input_shape=shape, postprocessor=post, topic=topics.prediction(active.name)
    )


class Pipeline:
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
        self._stages = build_stages(cfg, active, topics)
        self._pending_swap: tuple[_Stages, threading.Event] | None = None
        self._swap_lock = threading.Lock()
        self._ingest: queue.Queue[object] = queue.Queue(
            maxsize=max(s.max_queue for s in cfg.sources)
        )
        self._stop_sources = threading.Event()
        self._sources: list[tuple[Source, threading.Thread]] = []
        self._ctx = ctx
        self._windowers = StreamWindowers(
            cfg.window.length,
            cfg.window.hop,
            cfg.channels,
            transform=Preprocessor(cfg.preprocess, cfg.channels),
        )
        self._warn = RateLimitedLog(log)
        self._infer_thread: threading.Thread | None = None
        self._live_sources = 0
        self._live_lock = threading.Lock()
        self.heartbeat = time.monotonic()
        self.finished = threading.Event()
        self._on_demand = OnDemandRunner(cfg, metrics)  # HTTP API: its own interpreter
        for scfg in cfg.sources:
            src = build_source(scfg, ctx)
            emit = self._emit_nowait if isinstance(scfg, MqttSource) else self._emit_blocking
            t = threading.Thread(
                target=self._run_source, args=(src, emit), name=f"source-{src.name}", daemon=True
            )
            self._sources.append((src, t))

    # ---------------------------------------------------------------- public

    @property
    def active(self) -> ActiveModel:
        return self._stages.active

    def start(self) -> None:
        self._infer_thread = threading.Thread(
            target=self._infer_loop, name="inference", daemon=True
        )
        self._infer_thread.start()
        self._live_sources = len(self._sources)
        for _, t in self._sources:
            t.start()

    def swap_model(self, active: ActiveModel) -> threading.Event:
        """Validate ``active`` now, switch to it between two invocations; returns a done event."""
        stages = build_stages(self.cfg, active, self._topics)
        done = threading.Event()
        with self._swap_lock:
            self._pending_swap = (stages, done)
        self._ingest.put(None)  # wake the inference thread if it is idle
        return done

    def stop(self, timeout: float) -> None:
        """Stop the sources, finish the windows already read, hand everything to the publisher."""
        self._stop_sources.set()
        deadline = time.monotonic() + timeout
        for _, t in self._sources:
            t.join(max(0.0, deadline - time.monotonic()))
        self._ingest.put(_EOF)
        if self._infer_thread is not None:
            self._infer_thread.join(max(0.0, deadline - time.monotonic()))

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

    def _emit_blocking(self, block: SampleBlock) -> None:
        self.metrics.inc("samples_in", len(block))
        while not self._stop_sources.is_set():
            try:
                self._ingest.put(block, timeout=0.2)
                return
            except queue.Full:
                continue
        # stopping: the block was read but cannot be processed; count it honestly
        self.metrics.inc("samples_dropped", len(block), reason="shutdown")

    def _emit_nowait(self, block: SampleBlock) -> None:
        self.metrics.inc("samples_in", len(block))
        try:
            self._ingest.put_nowait(block)
        except queue.Full:
            self.metrics.inc("samples_dropped", len(block), reason="ingest_overflow")
            self._warn.warning(
                "overflow", "inference is behind: dropped a block from %s", block.stream
            )

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

    def _apply_swap(self) -> None:
        with self._swap_lock:
            pending, self._pending_swap = self._pending_swap, None
        if pending is None:
            return
        stages, done = pending
        old = self._stages.active
        self._stages = stages
        self.metrics.set("model_version", stages.active.version)
        log.info(
            "model %s: switched %s -> %s", stages.active.name, old.version, stages.active.version
        )
        done.set()

    def _infer_loop(self) -> None:
        self.metrics.set("model_version", self._stages.active.version)
        while True:
            self.heartbeat = time.monotonic()
            try:
                item = self._ingest.get(timeout=1.0)
            except queue.Empty:
                continue
            if self._pending_swap is not None:
                self._apply_swap()
            if item is None:
                continue
            if item is _EOF:
                break
            assert isinstance(item, SampleBlock)
            self._process(item)
        self.finished.set()

    def _process(self, block: SampleBlock) -> None:
        try:
            windows = self._windowers.push(block)  # normalised on the way (fused copy)
        except SampleError as exc:
            self._ctx.reject(block.stream, exc)
            return
        n = len(windows)
        if n == 0:
            return
        self.metrics.inc("windows_run", n)
        st = self._stages
        x_all = windows.data
        run = st.active.model.run1
        out: list[PredictionRecord] = []
        out_due = 0.0
        for i in range(n):
            if self._pending_swap is not None:
                self._apply_swap()
                st = self._stages
                run = st.active.model.run1
            x = x_all[i].reshape(st.input_shape)
            t0 = time.perf_counter()
            try:
                outs = run(x)
                latency = time.perf_counter() - t0
                result = st.postprocessor(outs, x, block.stream)
            except InferenceError as exc:
                self.metrics.inc("inference_errors", reason=_reason(exc))
                self._warn.warning("infer", "inference failed on %s: %s", block.stream, exc)
                continue
            self.metrics.observe("invoke", latency)
            if result is None:
                continue
            # Hand predictions over in groups (one publisher wake-up per group), but never hold
            # one back for longer than _HANDOVER_S of inference: bounds the latency it adds.
            if not out:
                out_due = t0 + _HANDOVER_S
            out.append(
                PredictionRecord(
                    topic=st.topic,
                    model_name=st.active.name,
                    model_version=st.active.version,
                    stream=block.stream,
                    ts=float(windows.ts[i]),
                    outputs=result,
                    latency_ms=round(latency * 1000, 4),
                    t_in=windows.t_in,
                )
            )
            if t0 + latency >= out_due:
                self._publisher.submit_many(out)
                out = []
        if out:
            self._publisher.submit_many(out)


def _reason(exc: Exception) -> str:
    text = str(exc).lower()
    if "finite" in text or "nan" in text:
        return "non_finite"
    return "error"
