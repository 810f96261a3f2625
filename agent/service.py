"""The daemon: builds the pipeline from config, runs it, and handles its lifecycle.

- SIGTERM / SIGINT: stop the sources, finish the in-flight windows, commit everything to the
  spool, publish retained ``offline``, exit 0 — within ``agent.shutdown_timeout_s`` (< 5 s).
- SIGHUP: read the config again; if it is valid, rebuild the pipeline with it (the spool keeps
  whatever was not yet delivered); if not, log every problem and keep running as before.
- A model that is missing, corrupt or does not fit the pipeline is a start-up error (exit 2).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from agent.config import Config, load_config, read_password
from agent.errors import ConfigError, EdgeAgentError
from agent.metrics import Metrics
from agent.models import load_active_model
from agent.mqtt import MqttLink, OutgoingMessage
from agent.pipeline import Pipeline
from agent.publisher import Publisher
from agent.sources import SourceContext
from agent.spool import Spool
from agent.topics import OFFLINE, ONLINE, Topics

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_STARTUP = 2


@dataclass
class Running:
    """The live components of one configuration."""

    cfg: Config
    topics: Topics
    link: MqttLink
    spool: Spool
    publisher: Publisher
    pipeline: Pipeline


class Agent:
    def __init__(self, cfg: Config, config_path: Path | None = None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.metrics = Metrics()
        self._stop = threading.Event()
        self._reload = threading.Event()
        self.running: Running | None = None
        self.ready = threading.Event()

    # ---------------------------------------------------------------- control

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload.set()

    def install_signal_handlers(self) -> None:
        def on_term(signum: int, frame: FrameType | None) -> None:
            log.info("signal %s: shutting down", signal.Signals(signum).name)
            self._stop.set()

        def on_hup(signum: int, frame: FrameType | None) -> None:
            log.info("SIGHUP: reloading config")
            self._reload.set()

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
        signal.signal(signal.SIGHUP, on_hup)

    # ---------------------------------------------------------------- lifecycle

    def build(self, cfg: Config) -> Running:
        """Load the model and wire every component (raises EdgeAgentError on start-up errors)."""
        topics = Topics(cfg.mqtt.topic_prefix, cfg.agent.device_id)
        active = load_active_model(cfg)
        password = read_password(cfg.mqtt)
        link = MqttLink(
            cfg.mqtt,
            cfg.agent.device_id,
            will=OutgoingMessage(topics.status, OFFLINE, 1, True),
            birth=[OutgoingMessage(topics.status, ONLINE, 1, True)],
            password=password,
        )
        spool = Spool(cfg.spool_path(), cfg.queue.max_messages)
        publisher = Publisher(
            link,
            spool,
            cfg.agent.device_id,
            cfg.mqtt.qos,
            self.metrics,
            batch=cfg.mqtt.batch,
            window=cfg.mqtt.max_inflight,
        )
        ctx = SourceContext(metrics=self.metrics, subscriber=link)
        try:
            pipeline = Pipeline(cfg, active, publisher, self.metrics, topics, ctx)
        except EdgeAgentError:
            spool.close()
            raise
        return Running(cfg, topics, link, spool, publisher, pipeline)

    def start(self, r: Running) -> None:
        r.link.start()
        r.publisher.start()
        r.pipeline.start()
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
        self.ready.set()

    def shutdown(self, r: Running, final_status: bool) -> None:
        budget = r.cfg.agent.shutdown_timeout_s
        t0 = time.monotonic()
        r.pipeline.stop(timeout=budget * 0.4)
        r.publisher.stop(timeout=max(0.1, budget * 0.8 - (time.monotonic() - t0)))
        final = [OutgoingMessage(r.topics.status, OFFLINE, 1, True)] if final_status else []
        r.link.stop(final, timeout=max(0.1, budget - (time.monotonic() - t0)))
        r.spool.close()
        log.info("stopped in %.2fs (%d message(s) queued)", time.monotonic() - t0, r.spool.depth)

    def run(self) -> int:
        """Run until SIGTERM/SIGINT; returns the process exit code."""
        cfg = self.cfg
        try:
            r = self.build(cfg)
        except EdgeAgentError as exc:
            log.error("cannot start: %s", exc)
            return EXIT_STARTUP
        self.start(r)
        while True:
            while not self._stop.is_set() and not self._reload.is_set():
                self._stop.wait(0.5)
            if self._stop.is_set():
                self.shutdown(r, final_status=True)
                return EXIT_OK
            self._reload.clear()
            new_cfg = self._reread()
            if new_cfg is None:
                continue
            self.shutdown(r, final_status=False)
            try:
                r = self.build(new_cfg)
            except EdgeAgentError as exc:
                log.error("reloaded config cannot start (%s); keeping the previous one", exc)
                r = self.build(cfg)
            else:
                cfg = self.cfg = new_cfg
            self.start(r)

    def _reread(self) -> Config | None:
        try:
            return load_config(self.config_path)
        except ConfigError as exc:
            log.error("SIGHUP: config not reloaded:\n%s", exc)
            return None


def _version() -> str:
    from agent import __version__

    return __version__
