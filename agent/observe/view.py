"""The running agent seen from outside: health, status, metrics and on-demand predictions.

``RunningAgentView`` implements ``agent.observe.httpapi.AgentView`` on the live components
(``Running``: ``agent.app.service.Running`` fits) and builds the ``MetricsV1`` snapshot that the
metrics reporter publishes and ``/metrics`` renders. It reads the agent's *current* ``Running`` on
every call, so it stays right across a SIGHUP reload.

Health: *live* when the inference thread, the publisher and the MQTT link thread run (an
inference thread that finished because every source ended counts as live) and the inference
loop's heartbeat is recent; *ready* once the agent has started. A broker outage does not make
the agent unready: predictions are queued, and on-demand inference works offline.
"""

from __future__ import annotations

import json
import threading
import time
from typing import TYPE_CHECKING, Any, Protocol

from agent.errors import EdgeAgentError
from agent.metrics import KNOWN_COUNTERS, ON_DEMAND_COUNTERS, OTA_COUNTERS, Metrics
from agent.observe.prometheus import render_prometheus
from agent.observe.telemetry import (
    LinuxProcessStats,
    ProcessStats,
    RateMeter,
    build_metrics,
)
from agent.wire.metrics import MetricsV1

if TYPE_CHECKING:
    from agent.config import Config
    from agent.delivery.mqtt import MqttLink
    from agent.delivery.publisher import Publisher
    from agent.delivery.spool import Spool
    from agent.pipeline.threads import Pipeline
    from agent.wire.topics import Topics

STALL_S = 10.0
"""An inference loop that has not come round for this long is hung: ``/healthz`` says so and
the systemd watchdog pings are withheld (one definition of "healthy": ``liveness``)."""


def liveness(r: Running, stall_s: float = STALL_S) -> dict[str, bool]:
    """The checks that make a running agent healthy, and whether the broker is connected.

    ``inference``: the inference thread is alive and its last pass is recent (or every source
    ended: idle, not hung); ``publisher`` and ``mqtt_link``: their threads are alive. A live
    agent passes the first three; ``mqtt_connected`` is reported, not required (an outage is
    what the spool is for).
    """
    p = r.pipeline
    ended = p.finished.is_set()
    inference = ended or (p.inference_alive() and time.monotonic() - p.heartbeat < stall_s)
    return {
        "inference": inference,
        "publisher": r.publisher.alive(),
        "mqtt_link": r.link.thread_alive(),
        "mqtt_connected": r.link.connected,
    }


def is_live(checks: dict[str, bool]) -> bool:
    """Liveness: inference, publisher and MQTT link all healthy."""
    return checks["inference"] and checks["publisher"] and checks["mqtt_link"]


class OtaStateSource(Protocol):
    """What the view reads of the OTA updater (``agent.ota.Updater`` fits)."""

    def ota_state(self) -> dict[str, Any] | None: ...


class Running(Protocol):
    """The live components of one configuration that the view reads
    (``agent.app.service.Running`` fits)."""

    @property
    def updater(self) -> OtaStateSource | None: ...

    cfg: Config
    topics: Topics
    link: MqttLink
    spool: Spool
    publisher: Publisher
    pipeline: Pipeline


class AgentLike(Protocol):
    """The part of ``agent.app.service.Agent`` the view reads."""

    cfg: Config
    metrics: Metrics
    ready: threading.Event
    stall_s: float

    @property
    def running(self) -> Running | None: ...

    def request_reload(self) -> None:
        """Re-read the config and rebuild (SIGHUP; the restart button). Only sets events."""
        ...


def _version() -> str:
    from agent import __version__

    return __version__


def _spool_status(spool: Spool) -> dict[str, Any]:
    """The queue's file, boot counter and any damage found at start (quarantined, lost)."""
    d = spool.damage
    return {
        "path": str(spool.path),
        "boot": spool.boot,
        "damage": None
        if d is None
        else {
            "kind": d.kind,
            "detail": d.detail,
            "moved_to": str(d.moved_to) if d.moved_to else None,
        },
    }


def recent_predictions(payloads: list[bytes], keep: int = 5) -> list[dict[str, Any]]:
    """The newest ``keep`` predictions (newest first) from spooled payloads (single or batch)."""
    out: list[dict[str, Any]] = []
    for raw in payloads:
        try:
            obj = json.loads(raw)
        except ValueError:
            continue
        items = obj.get("batch") if isinstance(obj, dict) and "batch" in obj else [obj]
        if isinstance(items, list):
            out.extend(p for p in items if isinstance(p, dict))
    return out[::-1][:keep]


class RunningAgentView:
    """Metrics, status and health of a running agent, for MQTT metrics and the HTTP API."""

    def __init__(self, agent: AgentLike, process: ProcessStats | None = None) -> None:
        self._agent = agent
        self._process = process or LinuxProcessStats()
        self._rates = RateMeter(agent.metrics.started)

    def _running(self) -> Running:
        r = self._agent.running
        if r is None:
            raise EdgeAgentError("the agent is not running")
        return r

    # ---------------------------------------------------------------- metrics

    def collect(self) -> MetricsV1:
        """One snapshot of the agent's metrics (the MQTT payload and the /metrics source)."""
        r = self._running()
        active = r.pipeline.active
        m = build_metrics(
            self._agent.metrics,
            device=r.cfg.agent.device_id,
            groups=r.cfg.agent.groups,
            ota_channels=r.cfg.ota.channels if r.cfg.ota.enabled else (),
            agent_version=_version(),
            model_name=active.name,
            model_version=active.version,
            link=r.link,
            queue_depth=r.publisher.queue_depth,
            rates=self._rates,
            process=self._process,
        )
        return self._field(m, r)

    def _field(self, m: MetricsV1, r: Running) -> MetricsV1:
        drift = r.pipeline.drift
        shadow = r.pipeline.shadow
        agreement = None
        if shadow is not None and shadow.compared:
            agreement = round(shadow.agreements / shadow.compared, 6)
        if drift is None and agreement is None:
            return m
        return m.model_copy(
            update={
                "drift": drift.snapshot() if drift is not None else None,
                "shadow_agreement": agreement,
            }
        )

    def field(self) -> dict[str, Any]:
        """``GET /drift``: the drift scores (null: the package has no reference) and the
        shadow report (null: no shadow runs)."""
        r = self._running()
        d, s = r.pipeline.drift, r.pipeline.shadow
        return {
            "drift": d.snapshot().model_dump(mode="json") if d is not None else None,
            "shadow": s.report(r.cfg.agent.device_id, r.pipeline.active).model_dump(mode="json")
            if s is not None
            else None,
        }

    def metrics_text(self) -> str:
        return render_prometheus(self.collect(), self.known_counters())

    def known_counters(self) -> dict[str, tuple[str, ...]]:
        """Every counter this configuration can move, with its label values (shown at 0)."""
        cfg = self._running().cfg
        known = dict(KNOWN_COUNTERS)
        sources = tuple(s.name for s in cfg.sources)
        known["source_failures"] = sources
        if any(s.type == "command" for s in cfg.sources):
            known["source_restarts"] = tuple(s.name for s in cfg.sources if s.type == "command")
        if cfg.ota.enabled:
            known.update(OTA_COUNTERS)
        if cfg.http.enabled:
            known.update(ON_DEMAND_COUNTERS)
        return known

    # ---------------------------------------------------------------- health & status

    def health(self) -> dict[str, Any]:
        r = self._agent.running
        if r is None:
            return {"status": "starting", "live": True, "ready": False, "checks": {}}
        checks = liveness(r, self._agent.stall_s)
        live = is_live(checks)
        ready = self._agent.ready.is_set()
        status = "ok" if live and ready else ("starting" if live else "unhealthy")
        return {"status": status, "live": live, "ready": ready, "checks": checks}

    def status(self) -> dict[str, Any]:
        r = self._running()
        active = r.pipeline.active
        cfg = r.cfg
        return {
            "device": cfg.agent.device_id,
            "groups": list(cfg.agent.groups),
            "agent_version": _version(),
            "health": self.health(),
            "model": {
                "name": active.name,
                "version": active.version,
                "sha256": active.sha256,
                "runtime": active.model.runtime_name,
                "labels": list(active.labels),
            },
            "input": {"window": cfg.window.length, "channels": cfg.channels},
            "mqtt": {
                "host": cfg.mqtt.host,
                "port": cfg.mqtt.port,
                "connected": r.link.connected,
                "reconnects": r.link.reconnects,
                "last_error": r.link.last_error,
            },
            "spool": _spool_status(r.spool),
            "metrics": self.collect().model_dump(mode="json"),
            "ota": None if r.updater is None else r.updater.ota_state(),
            "recent_predictions": recent_predictions(r.publisher.recent()),
        }

    # ---------------------------------------------------------------- inference

    def predict(self, samples: object, stream: str) -> dict[str, Any]:
        return self._running().pipeline.predict_window(samples, stream)
