"""Provisioning without a model: the pipeline's place until the first release is installed.

With ``model.path = "none"`` and OTA on, the agent starts without a model: it connects, reports
``awaiting_model`` (OTA state, metrics, status, Home Assistant), and its OTA updater follows
the channel of ``model.name``. The updater handles the first offer exactly like any other
(signature, version floor, compatibility judged with the package deciding, download, sha256,
smoke test, health window); its ``swap_model`` lands here, which builds the real pipeline with
the configuration the package decided and starts it. From then on everything is the real
pipeline's. A rollback of that first version stops the pipeline and waits again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from agent.errors import EdgeAgentError
from agent.model.active import ActiveModel
from agent.model.runtime import Model
from agent.pipeline.threads import Pipeline

if TYPE_CHECKING:
    from agent.pipeline.drift import DriftMonitor
    from agent.pipeline.shadow import ShadowRunner
    from agent.wire.fieldcheck import DriftAlertV1

log = logging.getLogger(__name__)

AWAITING_VERSION = "none"
"""The running version an agent without a model reports."""


@dataclass(frozen=True)
class _NoModel:
    """What status and metrics read of a model, for an agent that has none yet."""

    runtime_name: str = "none"
    stateful: bool = False
    sha256: str = ""


class AwaitingModel:
    """Stands in for ``Pipeline`` (the parts the service, the updater and the view use)."""

    awaiting: bool

    def __init__(self, name: str, build: Callable[[ActiveModel], Pipeline]) -> None:
        self._build = build
        self._lock = threading.Lock()
        self._pipeline: Pipeline | None = None
        self.placeholder = ActiveModel(
            model=cast(Model, _NoModel()), name=name, version=AWAITING_VERSION
        )
        self._idle = threading.Event()  # never set: awaiting is not "all sources finished"
        self.awaiting = True
        self._on_drift: Callable[[DriftAlertV1], None] | None = None

    # ---------------------------------------------------------------- what the updater calls

    @property
    def active(self) -> ActiveModel:
        p = self._pipeline
        return p.active if p is not None else self.placeholder

    def swap_model(self, active: ActiveModel) -> None:
        with self._lock:
            if active is self.placeholder:  # the first version rolled back: wait again
                if self._pipeline is not None:
                    self._pipeline.stop(timeout=2.0)
                    self._pipeline = None
                self.awaiting = True
                log.warning("back to awaiting a model")
                return
            if self._pipeline is not None:
                self._pipeline.swap_model(active)
                return
            pipeline = self._build(active)  # raises EdgeAgentError: the updater fails it
            pipeline.on_drift = self._on_drift
            pipeline.start()
            self._pipeline = pipeline
            self.awaiting = False
        log.info("first model installed: %s %s, pipeline started", active.name, active.version)

    # ---------------------------------------------------------------- what the service calls

    def start(self) -> None:
        log.info("no model yet: awaiting the first release of %r over OTA", self.placeholder.name)

    def stop(self, timeout: float) -> None:
        with self._lock:
            if self._pipeline is not None:
                self._pipeline.stop(timeout)

    @property
    def finished(self) -> threading.Event:
        p = self._pipeline
        return p.finished if p is not None else self._idle

    def inference_alive(self) -> bool:
        p = self._pipeline
        return p.inference_alive() if p is not None else True

    @property
    def heartbeat(self) -> float:
        p = self._pipeline
        return p.heartbeat if p is not None else time.monotonic()

    # ---------------------------------------------------------------- shadow and drift

    @property
    def shadow(self) -> ShadowRunner | None:
        p = self._pipeline
        return p.shadow if p is not None else None

    def set_shadow(self, candidate: ActiveModel | None, counts_file: Path | None = None) -> None:
        p = self._pipeline
        if p is not None:
            p.set_shadow(candidate, counts_file)
        elif candidate is not None:
            raise EdgeAgentError("no model is installed yet: nothing to shadow")

    @property
    def drift(self) -> DriftMonitor | None:
        p = self._pipeline
        return p.drift if p is not None else None

    @property
    def on_drift(self) -> Callable[[DriftAlertV1], None] | None:
        return self._on_drift

    @on_drift.setter
    def on_drift(self, fn: Callable[[DriftAlertV1], None] | None) -> None:
        self._on_drift = fn  # handed to the pipeline when the first model builds it
        if self._pipeline is not None:
            self._pipeline.on_drift = fn

    def predict_window(self, samples: object, stream: str) -> dict[str, Any]:
        p = self._pipeline
        if p is None:
            raise EdgeAgentError("awaiting_model: no model is installed yet")
        return p.predict_window(samples, stream)
