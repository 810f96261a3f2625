"""The agent's optional side-cars, started and stopped with each ``Running``.

- the metrics reporter (``agent.observe.telemetry``), when ``metrics.interval_s > 0``;
- the local HTTP API (``agent.observe.httpapi``), when ``http.enabled``;
- Home Assistant discovery (``agent.observe.homeassistant``), when ``homeassistant.enabled``.

None of them may stop the data path: a side-car that cannot start (the HTTP port is taken, the
token file is unreadable) is logged as an error and left out, and the agent runs on.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from agent.delivery.mqtt import OutgoingMessage
from agent.errors import EdgeAgentError
from agent.observe.fieldreports import FieldReporter
from agent.observe.telemetry import MetricsReporter, cpu_temperature_c
from agent.observe.view import AgentLike, Running, RunningAgentView

if TYPE_CHECKING:
    from agent.observe.homeassistant import HomeAssistantDiscovery
    from agent.observe.httpapi import HttpApi

log = logging.getLogger(__name__)


class Observability:
    """The agent's observability parts (view, metrics reporter, HTTP API, HA, field reports)."""

    def __init__(self) -> None:
        self.view: RunningAgentView | None = None
        self.reporter: MetricsReporter | None = None
        self.http: HttpApi | None = None
        self.discovery: HomeAssistantDiscovery | None = None
        self.field: FieldReporter | None = None

    @classmethod
    def start(cls, agent: AgentLike, r: Running) -> Observability:
        """Start what ``r.cfg`` enables; errors are logged, never raised."""
        self = cls()
        cfg = r.cfg
        view = self.view = RunningAgentView(agent)
        self.field = FieldReporter(r)  # drift alert and shadow reports (fieldreports.py)
        self.field.start()
        if cfg.metrics.interval_s > 0:
            self.reporter = MetricsReporter(
                r.link, r.topics.metrics, cfg.metrics.interval_s, view.collect
            )
            self.reporter.start()  # one snapshot now if connected, then one per connect
        if cfg.http.enabled:
            # imported only when enabled: a device without the API does not pay its memory
            from agent.observe.httpapi import HttpApi, read_token

            try:
                http = HttpApi(cfg.http, view, token=read_token(cfg.http))
                if (warning := cfg.http.exposure_warning()) is not None:
                    log.warning("%s", warning)
                http.start()
            except EdgeAgentError as exc:
                log.error("HTTP API not started: %s", exc)
            else:
                self.http = http
        if cfg.homeassistant.enabled:
            from agent import __version__
            from agent.observe.homeassistant import (
                HomeAssistantDiscovery,
                board_model,
                discovery_messages,
                node_filter,
            )

            board = board_model()
            has_temp = cpu_temperature_c() is not None

            def messages() -> list[OutgoingMessage]:
                return discovery_messages(
                    cfg,
                    r.topics,
                    r.pipeline.active.name,
                    __version__,
                    board,
                    cpu_temp=has_temp,
                    labels=r.pipeline.active.labels,
                    drift=r.pipeline.drift is not None,
                )

            prefix = cfg.homeassistant.discovery_prefix
            self.discovery = HomeAssistantDiscovery(
                r.link,
                messages,
                prefix,
                node_topics=node_filter(prefix, cfg.agent.device_id),
                command_topic=r.topics.command,
                on_restart=agent.request_reload,
            )
            self.discovery.start()
            if r.link.connected:
                self.discovery.publish()
        return self

    def stop(self) -> None:
        """Stop serving and reporting (first in shutdown: no new on-demand work)."""
        if self.http is not None:
            self.http.stop()
            self.http = None
        if self.reporter is not None:
            self.reporter.stop()
            self.reporter = None
        if self.field is not None:
            self.field.stop()
            self.field = None
        if self.discovery is not None:
            self.discovery.stop()
            self.discovery = None
