"""On-demand inference: one window from another program (the HTTP API), off the data path.

The inference thread's interpreter may hold streaming state and is busy with sensor windows,
so on-demand calls never touch it. ``OnDemandRunner`` keeps its *own* interpreter of the
active model, created lazily from the same bytes (with the same runtime, threads, kernels and
signature) and re-created when the active model changes (OTA swap); calls are serialised with
a lock. A stateful model starts each call from a fresh state.

Validation is the sensor path's: ``agent.ingest.samples.make_block`` (reasons ``non_numeric``,
``wrong_shape``, ``not_finite``), plus exactly ``window.length`` samples. Preprocessing is the
configured normalisation (as the windower applies it); postprocessing uses a private
postprocessor of the configured type without per-stream memory (no smoothing, no
publish-on-change: every call gets an answer).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from agent.config import ClassificationPost, Config, DetectionPost
from agent.errors import InferenceError, SampleError
from agent.ingest.preprocess import Preprocessor
from agent.ingest.samples import make_block
from agent.metrics import Metrics
from agent.model.postprocess import Postprocessor, build_postprocessor
from agent.model.runtime import Model

if TYPE_CHECKING:
    from agent.model.active import ActiveModel

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]


class OnDemandRunner:
    """Runs single windows on demand (HTTP API) with its own interpreter of the active model."""

    def __init__(self, cfg: Config, metrics: Metrics) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self._lock = threading.Lock()
        self._key: tuple[str, str, int] | None = None
        self._model: Model | None = None
        self._post: Postprocessor | None = None
        self._preprocess = Preprocessor(cfg.preprocess, cfg.channels)  # the windower's, too

    def _ensure(self, active: ActiveModel) -> tuple[Model, Postprocessor]:
        key = (active.model.sha256, active.version, id(active.model))
        if self._key != key or self._model is None or self._post is None:
            label = f"{active.name} {active.version} (on-demand)"
            self._model = active.model.clone(label)
            post_cfg = self.cfg.postprocess
            if isinstance(post_cfg, ClassificationPost):
                post_cfg = post_cfg.model_copy(update={"smoothing": 1, "publish_on_change": False})
            elif isinstance(post_cfg, DetectionPost):  # one window: no history to average
                post_cfg = post_cfg.model_copy(
                    update={"average_windows": 1, "refractory_windows": 0, "heartbeat_windows": 0}
                )
            self._post = build_postprocessor(
                post_cfg,
                self._model.outputs,
                active.labels or None,
                input_size=self.cfg.window.length * self.cfg.channels,
                max_streams=16,
            )
            self._key = key
            log.info("on-demand interpreter for %s %s ready", active.name, active.version)
        return self._model, self._post

    def predict(
        self,
        active: ActiveModel,
        input_shape: Sequence[int],
        values: object,
        stream: str,
    ) -> dict[str, Any]:
        """Validate ``values`` (window.length x channels), run the active model, postprocess.

        Raises ``SampleError`` (bad input), ``ShapeMismatch``, ``InferenceError``.
        """
        length = self.cfg.window.length
        try:
            block = make_block(stream, values, None, self.cfg.channels)
            if len(block) != length:
                raise SampleError(
                    "wrong_shape", f"expected {length} samples (one window), got {len(block)}"
                )
        except SampleError as exc:
            self.metrics.inc("on_demand_rejected", reason=exc.reason)
            raise
        t0 = time.perf_counter()
        x = np.ascontiguousarray(self._preprocess(block.values), dtype=np.float32).reshape(
            tuple(input_shape)
        )
        with self._lock:
            model, post = self._ensure(active)
            if model.stateful:
                model.reset_state()
            try:
                outs = model.run([x])
                latency = time.perf_counter() - t0
                if post.kind == "detection":
                    post.reset()  # each on-demand window is judged on its own
                result = post(outs, x, stream)
            except InferenceError as exc:
                self.metrics.inc("on_demand_errors", reason=exc.reason)
                raise
        self.metrics.inc("on_demand_predictions")
        self.metrics.observe("on_demand", latency)
        return {
            "model": {"name": active.name, "version": active.version},
            "stream": stream,
            "ts": float(block.ts[-1]),
            "outputs": result if result is not None else {},
            "latency_ms": round(latency * 1000.0, 4),
        }
