"""The daemon: builds the pipeline from config, runs it, and handles its lifecycle.

- SIGTERM / SIGINT: stop the sources, finish the in-flight windows, commit everything to the
  spool, publish retained ``offline``, exit 0 — within ``agent.shutdown_timeout_s`` (< 5 s).
- SIGHUP: read the config again; if it is valid, rebuild the pipeline with it (the spool keeps
  whatever was not yet delivered); if not, log every problem and keep running as before.
- Before anything starts, ``agent.app.preflight`` runs every check ``check-config`` runs: a
  model that is missing, corrupt or does not fit the pipeline is a start-up error (exit 2); a
  config that contradicts its model package, a missing TLS/key file or a runtime that cannot
  work here is a configuration error (exit 78: systemd does not restart it).
- When the model comes from a package, its manifest decides (``agent.model.compat.resolve``):
  the pipeline, the OTA updater and the reports run with the configuration it decided.
- Batch evaluation (a replay source with ``exit_when_done = true``): once every source has
  finished and every prediction has been acknowledged by the broker (the spool is empty), shut
  down as on SIGTERM and exit 0 (1 if a source failed: a partial evaluation is no result).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, cast

from agent.app.preflight import PreflightError, preflight
from agent.app.systemd import Notifier, WatchdogPinger
from agent.clock import ClockStatus
from agent.config import Config, load_config, read_password
from agent.delivery.mqtt import MqttLink, OutgoingMessage
from agent.delivery.publisher import Publisher
from agent.delivery.spool import Spool
from agent.errors import ConfigError, EdgeAgentError
from agent.ingest.sources import SourceContext
from agent.metrics import Metrics
from agent.model.active import ActiveModel
from agent.model.loading import load_active_model
from agent.observe.view import STALL_S, is_live, liveness
from agent.observe.wiring import Observability
from agent.pipeline.threads import Pipeline
from agent.wire.topics import OFFLINE, ONLINE, Topics

if TYPE_CHECKING:  # imported when OTA is enabled: cryptography and the manifests cost ~10 MB
    from agent.ota import Updater

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_STARTUP = 2
EXIT_CONFIG = 78  # EX_CONFIG: the unit's RestartPreventExitStatus (retrying cannot help)


@dataclass
class Running:
    """The live components of one configuration."""

    cfg: Config
    topics: Topics
    link: MqttLink
    spool: Spool
    publisher: Publisher
    pipeline: Pipeline
    updater: Updater | None = None


class Agent:
    """The agent process: runs the pipeline, reloads on SIGHUP, stops on SIGTERM."""

    def __init__(self, cfg: Config, config_path: Path | None = None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.metrics = Metrics()
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._wake = threading.Event()  # set with either of the two above
        self.running: Running | None = None
        self.ready = threading.Event()
        self.notifier = Notifier.from_environ()
        self.stall_s = STALL_S
        self._pinger: WatchdogPinger | None = None
        self.observability: Observability | None = None  # metrics/HTTP API/HA (observability.py)

    # ---------------------------------------------------------------- control

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def request_stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def request_reload(self) -> None:
        self._reload.set()
        self._wake.set()

    def install_signal_handlers(self) -> None:
        def on_term(signum: int, frame: FrameType | None) -> None:
            log.info("signal %s: shutting down", signal.Signals(signum).name)
            self.request_stop()

        def on_hup(signum: int, frame: FrameType | None) -> None:
            log.info("SIGHUP: reloading config")
            self.request_reload()

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
        signal.signal(signal.SIGHUP, on_hup)

    # ---------------------------------------------------------------- lifecycle

    @staticmethod
    def _startup_model(cfg: Config) -> ActiveModel | None:
        """With OTA on, an installed version (``<state_dir>/models/current``) wins over
        ``model.path``; ``startup_model`` also finishes or rolls back an interrupted update.
        None: no model yet (``model.path = "none"``), the first comes over OTA."""
        if cfg.ota.enabled:
            from agent.ota import startup_model

            installed = startup_model(cfg)
            if installed is not None:
                return installed
        return None if cfg.awaiting_model else load_active_model(cfg)

    def build(self, cfg: Config) -> Running:
        """Load the model and wire every component (raises EdgeAgentError on start-up errors).

        ``cfg`` is the operator's configuration; the components get the one the model's
        package decided (``Running.cfg``)."""
        prepared = preflight(cfg, self._startup_model)
        cfg, active = prepared.cfg, prepared.active
        topics = Topics(cfg.mqtt.topic_prefix, cfg.agent.device_id)
        password = read_password(cfg.mqtt)
        link = MqttLink(
            cfg.mqtt,
            cfg.agent.device_id,
            will=OutgoingMessage(topics.status, OFFLINE, 1, True),
            birth=[OutgoingMessage(topics.status, ONLINE, 1, True)],
            password=password,
        )
        spool = Spool(cfg.spool_path(), cfg.queue.max_messages)
        if spool.damage is not None:  # quarantined or lost at open: the fleet must see it
            self.metrics.inc("spool_damaged", reason=spool.damage.kind)
        publisher = Publisher(
            link,
            spool,
            cfg.agent.device_id,
            cfg.mqtt.qos,
            self.metrics,
            batch=cfg.mqtt.batch,
            window=cfg.mqtt.max_inflight,
            clock=ClockStatus(cfg.agent.state_dir),
            write_behind_ms=cfg.queue.write_behind_ms,
        )
        ctx = SourceContext(metrics=self.metrics, subscriber=link)
        running: Running | None = None

        def first_model(new: ActiveModel) -> Pipeline:
            """The first release arrived (provisioning): the pipeline its package decides."""
            eff = resolve_model(cfg, new)
            p = Pipeline(eff, new, publisher, self.metrics, topics, ctx)
            if running is not None:
                running.cfg = eff
            return p

        try:
            if active is None:  # provisioning: the updater installs the first model
                from agent.app.provisioning import AwaitingModel

                # AwaitingModel has the Pipeline surface the service, updater and view use
                pipeline = cast(Pipeline, AwaitingModel(cfg.model.name, first_model))
            else:
                pipeline = Pipeline(cfg, active, publisher, self.metrics, topics, ctx)
            updater = None
            if cfg.ota.enabled:
                from agent.ota import Updater

                updater = Updater(cfg, link, pipeline, self.metrics, topics)
        except EdgeAgentError:
            spool.close()
            raise
        running = Running(cfg, topics, link, spool, publisher, pipeline, updater)
        return running

    def start(self, r: Running) -> None:
        # the pipeline first: its MQTT sources subscribe before the link connects, so the
        # link announces 'online' only once those subscriptions are acknowledged
        r.publisher.start()
        r.pipeline.start()
        r.link.start()
        if r.updater is not None:
            r.updater.start()
        self.running = r
        self.metrics.set("model_version", r.pipeline.active.version)
        log.info(
            "edge-agent %s running model %s %s (%s) for device %s -> %s:%s",
            _version(),
            r.pipeline.active.name,
            r.pipeline.active.version,
            r.pipeline.active.model.runtime_name,
            r.cfg.agent.device_id,
            r.cfg.mqtt.host,
            r.cfg.mqtt.port,
        )
        # -- observability: metrics reporter, HTTP API, Home Assistant discovery (never raises)
        self.observability = Observability.start(self, r)
        self.ready.set()
        # -- systemd: READY once the model is loaded and the pipeline runs; watchdog pings only
        # while the inference loop makes passes and the MQTT and publisher threads are alive
        self.notifier.ready(self.summary())
        self._pinger = WatchdogPinger(self.notifier, self.healthy, status=self.summary)
        self._pinger.start()

    def healthy(self) -> bool:
        """The pipeline is really making progress (what the systemd watchdog is fed from)."""
        r = self.running
        return r is not None and is_live(liveness(r, self.stall_s))

    def summary(self) -> str:
        """One line for systemd's STATUS=."""
        r = self.running
        if r is None:
            return "starting"
        m = self.metrics
        awaiting = getattr(r.pipeline, "awaiting", False)
        model = (
            f"awaiting model {r.pipeline.active.name} over OTA"
            if awaiting
            else (f"model {r.pipeline.active.name} {r.pipeline.active.version}")
        )
        return (
            f"{model}; "
            f"mqtt {'up' if r.link.connected else 'down'}; "
            f"{m.counter('predictions_out')} predictions; queue {r.publisher.queue_depth}"
        )

    def shutdown(self, r: Running, final_status: bool) -> None:
        budget = r.cfg.agent.shutdown_timeout_s
        if final_status:
            self.notifier.stopping("stopping")
        if self._pinger is not None:
            self._pinger.stop(timeout=1.0)
            self._pinger = None
        # -- observability first: no new on-demand work, no reports from a stopping agent
        if self.observability is not None:
            self.observability.stop()
            self.observability = None
        t0 = time.monotonic()
        if r.updater is not None:
            r.updater.stop(timeout=budget * 0.2)
        r.pipeline.stop(timeout=budget * 0.4)
        r.publisher.stop(timeout=max(0.1, budget * 0.8 - (time.monotonic() - t0)))
        final = [OutgoingMessage(r.topics.status, OFFLINE, 1, True)] if final_status else []
        r.link.stop(final, timeout=max(0.1, budget - (time.monotonic() - t0)))
        r.spool.close()
        log.info("stopped in %.2fs (%d message(s) queued)", time.monotonic() - t0, r.spool.depth)
        if final_status:
            self.notifier.close()

    def run(self) -> int:
        """Run until SIGTERM/SIGINT; returns the process exit code."""
        cfg = self.cfg
        try:
            r = self.build(cfg)
        except EdgeAgentError as exc:
            log.error("cannot start: %s", exc)
            return exit_code(exc)
        self.start(r)
        while True:
            while not self._wake.wait(0.2 if self.cfg.exit_when_done else 1.0):
                if self.cfg.exit_when_done and self._all_done(r):
                    failed = sum(self.metrics.counters_by_reason("source_failures").values())
                    log.info(
                        "every source finished and every prediction was delivered: exiting "
                        "(exit_when_done)%s",
                        f"; {failed} source(s) failed" if failed else "",
                    )
                    self.shutdown(r, final_status=True)
                    return EXIT_FAILED if failed else EXIT_OK
            self._wake.clear()
            if self._stop.is_set():
                self.shutdown(r, final_status=True)
                return EXIT_OK
            self._reload.clear()
            new_cfg = self._reread()
            if new_cfg is None:
                continue
            self.notifier.reloading()
            self.shutdown(r, final_status=False)
            try:
                r = self.build(new_cfg)
            except EdgeAgentError as exc:
                log.error("reloaded config cannot start (%s); keeping the previous one", exc)
                r = self.build(cfg)
            else:
                cfg = self.cfg = new_cfg
            self.start(r)

    @staticmethod
    def _all_done(r: Running) -> bool:
        """Batch evaluation is over: the sources finished, their windows ran, and the spool
        holds nothing unacknowledged."""
        return r.pipeline.finished.is_set() and r.publisher.drained()

    def _reread(self) -> Config | None:
        try:
            return load_config(self.config_path)
        except ConfigError as exc:
            log.error("SIGHUP: config not reloaded:\n%s", exc)
            return None


def resolve_model(cfg: Config, active: ActiveModel) -> Config:
    """The configuration ``active`` runs with: its package decides (``agent.model.compat``)."""
    if active.manifest is None:
        return cfg
    from agent.model.compat import resolve_and_check

    return resolve_and_check(cfg, active.manifest)


def exit_code(exc: EdgeAgentError) -> int:
    """78 when the configuration must change (systemd does not restart), else 2."""
    if isinstance(exc, PreflightError):
        return EXIT_CONFIG if exc.config else EXIT_STARTUP
    return EXIT_CONFIG if isinstance(exc, ConfigError) else EXIT_STARTUP


def _version() -> str:
    from agent import __version__

    return __version__
