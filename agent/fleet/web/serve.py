"""Run the dashboard: one MQTT subscription feeding a ``Dashboard``, and uvicorn serving it.

The broker connection is the agent's own ``MqttLink`` (self-reconnecting; the page shows
"not connected" while it is down), subscribed to the fleet's status/OTA/metrics filters and
the channels' announcements; a device page adds that device's predictions.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from pathlib import Path

from agent.config import MqttSection
from agent.delivery.mqtt import MqttLink
from agent.fleet.web.auth import load_credentials
from agent.fleet.web.rollouts import Rollouts
from agent.fleet.web.state import Dashboard

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeOptions:
    """Options of the dashboard server (``edge-fleet serve``)."""

    host: str = "127.0.0.1"
    port: int = 8080
    token_file: Path | None = None
    basic_auth_file: Path | None = None
    actions: bool = True
    """Allow starting, aborting and promoting rollouts from the page."""
    state_dir: Path | None = None
    """The rollout store's folder (None: the CLI's default)."""


def connect(settings: MqttSection, password: str | None, dash: Dashboard) -> MqttLink:
    """A started link feeding ``dash`` (it reconnects by itself)."""
    link = MqttLink(settings, f"edge-fleet-web-{uuid.uuid4().hex[:10]}", password=password)
    for f in dash.filters():
        link.subscribe(f, 1, dash.handle)
    dash.subscribe = lambda topic_filter: link.subscribe(topic_filter, 0, dash.handle)
    dash.connected = lambda: link.connected
    link.add_connect_listener(dash.touch)
    link.add_disconnect_listener(dash.touch)
    link.start()
    return link


def serve(settings: MqttSection, password: str | None, opts: ServeOptions) -> None:
    """Serve until interrupted (Ctrl-C / SIGTERM)."""
    import uvicorn

    from agent.fleet.web.app import create_app

    creds = load_credentials(opts.host, opts.token_file, opts.basic_auth_file)
    dash = Dashboard(settings.topic_prefix)
    rollouts = Rollouts(settings, password, dash.touch, opts.state_dir) if opts.actions else None
    link = connect(settings, password, dash)
    try:
        app = create_app(dash, rollouts, creds)
        config = uvicorn.Config(
            app,
            host=opts.host,
            port=opts.port,
            log_level="warning",
            timeout_graceful_shutdown=1,
            access_log=False,
        )
        server = uvicorn.Server(config)
        host = f"[{opts.host}]" if ":" in opts.host else opts.host
        auth = "credentials required" if creds.required else "no credentials (loopback)"
        print(f"edge-fleet dashboard on http://{host}:{opts.port}/ ({auth})", flush=True)
        server.run()
    finally:
        link.stop()
