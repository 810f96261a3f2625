"""Short-lived MQTT clients: publish and leave, read what is retained, probe a broker.

The tools (``edge-fleet``, ``edge-convert publish``, ``edge-agent doctor``) use these; the
agent's own connection is ``MqttLink``.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.config import MqttSection
from agent.delivery.mqtt.client import _connect, _make_client
from agent.delivery.mqtt.messages import OutgoingMessage
from agent.errors import PublishError

log = logging.getLogger(__name__)


def _start_short_lived(client: paho.Client, settings: MqttSection) -> str:
    """Connect a one-off client and start its network thread; returns 'host:port'."""
    where = f"{settings.host}:{settings.port}"
    try:
        _connect(client, settings)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise PublishError(
            PublishError.CONNECT, f"cannot connect to MQTT broker {where}: {exc}"
        ) from exc
    client.loop_start()
    return where


def publish_once(
    settings: MqttSection,
    client_id: str,
    messages: Sequence[OutgoingMessage],
    timeout_s: float = 10.0,
    password: str | None = None,
) -> None:
    """Connect, publish ``messages``, wait until every QoS>0 one is acknowledged, disconnect."""
    client = _make_client(settings, client_id, password)
    connected = threading.Event()
    refused: list[str] = []

    def on_connect(
        c: paho.Client, u: Any, flags: Any, reason: ReasonCode, props: Properties | None
    ) -> None:
        if reason.is_failure:
            refused.append(str(reason))
        connected.set()

    client.on_connect = on_connect
    where = _start_short_lived(client, settings)
    try:
        if not connected.wait(timeout_s) or refused:
            raise PublishError(
                PublishError.REFUSED,
                f"MQTT broker {where} did not accept us: {refused or 'timeout'}",
            )
        deadline = time.monotonic() + timeout_s
        infos = [
            (m, client.publish(m.topic, m.payload, qos=m.qos, retain=m.retain)) for m in messages
        ]
        for m, info in infos:
            remaining = max(0.0, deadline - time.monotonic())
            if info.rc != paho.MQTT_ERR_SUCCESS:
                raise PublishError(
                    PublishError.PUBLISH,
                    f"publish to {m.topic} failed: {paho.error_string(info.rc)}",
                )
            info.wait_for_publish(remaining)
            if not info.is_published():
                raise PublishError(
                    PublishError.PUBLISH,
                    f"publish to {m.topic} was not acknowledged in {timeout_s}s",
                )
    finally:
        client.disconnect()
        client.loop_stop()


def collect_retained(
    settings: MqttSection,
    client_id: str | None,
    topic_filters: Sequence[str],
    settle_s: float = 0.5,
    timeout_s: float = 10.0,
    password: str | None = None,
) -> dict[str, bytes]:
    """Snapshot the retained messages under ``topic_filters``.

    Retained messages arrive right after SUBACK; we stop once none has arrived for ``settle_s``.
    """
    client = _make_client(settings, client_id or f"edge-{uuid.uuid4().hex[:10]}", password)
    got: dict[str, bytes] = {}
    lock = threading.Lock()
    subscribed = threading.Event()
    last = [time.monotonic()]

    def on_connect(
        c: paho.Client, u: Any, flags: Any, reason: ReasonCode, props: Properties | None
    ) -> None:
        if not reason.is_failure:
            c.subscribe([(t, 1) for t in topic_filters])

    def on_subscribe(c: paho.Client, u: Any, mid: int, reasons: Any, props: Any) -> None:
        last[0] = time.monotonic()
        subscribed.set()

    def on_message(c: paho.Client, u: Any, msg: paho.MQTTMessage) -> None:
        if msg.retain:
            with lock:
                got[msg.topic] = bytes(msg.payload)
                last[0] = time.monotonic()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    where = _start_short_lived(client, settings)
    try:
        if not subscribed.wait(timeout_s):
            raise PublishError(
                PublishError.SUBSCRIBE, f"could not subscribe on {where} within {timeout_s}s"
            )
        quiet = threading.Event()
        while not quiet.wait(settle_s / 5):
            with lock:
                if time.monotonic() - last[0] >= settle_s:
                    break
        with lock:
            return dict(got)
    finally:
        client.disconnect()
        client.loop_stop()


@dataclass(frozen=True)
class ProbeStep:
    """One step of reaching the broker: ``ok`` None when it was not tried."""

    name: str
    ok: bool | None
    detail: str


def probe_broker(
    settings: MqttSection, client_id: str, password: str | None, timeout_s: float = 5.0
) -> list[ProbeStep]:
    """TCP connect, TLS handshake (when enabled), CONNACK with the configured credentials.

    ``client_id`` must not be the running agent's (the broker would drop that session).
    """
    where = f"{settings.host}:{settings.port}"
    skipped = "not tried: the previous step failed"
    try:
        sock = socket.create_connection((settings.host, settings.port), timeout=timeout_s)
    except OSError as exc:
        return [
            ProbeStep("broker TCP", False, f"{where}: {exc}"),
            ProbeStep("broker TLS", None, skipped),
            ProbeStep("broker CONNACK", None, skipped),
        ]
    steps = [ProbeStep("broker TCP", True, f"{where} reachable")]
    tls = settings.tls
    with sock:
        if tls.enabled:
            ctx = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
            if tls.insecure:
                ctx.check_hostname = False
            try:
                if tls.cert_file is not None and tls.key_file is not None:
                    ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
                with ctx.wrap_socket(sock, server_hostname=settings.host) as tsock:
                    steps.append(ProbeStep("broker TLS", True, f"{tsock.version()} handshake OK"))
            except (OSError, ssl.SSLError, ValueError) as exc:
                steps.append(ProbeStep("broker TLS", False, f"{where}: {exc}"))
                steps.append(ProbeStep("broker CONNACK", None, skipped))
                return steps
        else:
            steps.append(ProbeStep("broker TLS", None, "off (mqtt.tls.enabled = false)"))
    try:
        client = _make_client(settings, client_id, password)
    except PublishError as exc:
        steps.append(ProbeStep("broker CONNACK", False, str(exc)))
        return steps
    answered = threading.Event()
    reasons: list[ReasonCode] = []

    def on_connect(
        c: paho.Client, u: Any, flags: Any, reason: ReasonCode, props: Properties | None
    ) -> None:
        reasons.append(reason)
        answered.set()

    client.on_connect = on_connect
    try:
        _start_short_lived(client, settings)
    except PublishError as exc:
        steps.append(ProbeStep("broker CONNACK", False, str(exc)))
        return steps
    try:
        who = f"as {settings.username!r}" if settings.username else "anonymously"
        if not answered.wait(timeout_s):
            steps.append(ProbeStep("broker CONNACK", False, f"no CONNACK in {timeout_s:g}s"))
        elif reasons[0].is_failure:
            steps.append(ProbeStep("broker CONNACK", False, f"refused {who}: {reasons[0]}"))
        else:
            steps.append(ProbeStep("broker CONNACK", True, f"accepted {who}"))
    finally:
        client.disconnect()
        client.loop_stop()
    return steps
