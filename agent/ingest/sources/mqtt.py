"""The MQTT source: raw sensor payloads from a topic filter, through the shared MQTT link.

This module does not import paho: it subscribes through ``ctx.subscriber`` (the agent's
``MqttLink``, which renews the subscription after every reconnect). Payloads are JSON or
little-endian binary (``agent.ingest.sources.parse``). With a wildcard filter every matching topic
is
a stream of its own, named ``<source name>:<topic>``; otherwise the stream is the source name.

The handler runs on the network thread: it parses, validates and calls ``emit``, which for
this source must not block (the pipeline gives it a ``put_nowait`` emitter that counts what
overflows). Malformed payloads go to ``ctx.reject`` and are skipped.
"""

from __future__ import annotations

import logging
import threading

from agent.config import MqttSource as MqttConfig
from agent.errors import SampleError, SourceError
from agent.ingest.sources.base import Emit, MessageHandler, SourceContext, Subscriber
from agent.ingest.sources.parse import PayloadFormat

log = logging.getLogger(__name__)


def has_wildcard(topic_filter: str) -> bool:
    """True when the topic filter has a ``+`` or ``#`` level."""
    return any(level in ("+", "#") for level in topic_filter.split("/"))


class MqttSubscription:
    """Subscribes ``topic`` (``attach``, else on ``run``) and turns every message into a block."""

    def __init__(self, cfg: MqttConfig, ctx: SourceContext) -> None:
        if ctx.subscriber is None:
            raise SourceError(f"mqtt source {cfg.name}: no MQTT link to subscribe with")
        self.name = cfg.name
        self.cfg = cfg
        self.ctx = ctx
        self._subscriber: Subscriber = ctx.subscriber
        self.format = PayloadFormat(cfg.channels, cfg.format, cfg.dtype, cfg.max_payload_bytes)
        self._attached = False

    def handler(self, emit: Emit, stop: threading.Event) -> MessageHandler:
        """The message handler ``run`` subscribes (public so tests can drive it directly)."""
        name, fmt, ctx = self.name, self.format, self.ctx
        per_topic = has_wildcard(self.cfg.topic)

        def on_message(topic: str, payload: bytes) -> None:
            if stop.is_set():
                return
            try:
                block = fmt.parse(f"{name}:{topic}" if per_topic else name, payload)
            except SampleError as err:
                ctx.reject(name, err)
                return
            emit(block)

        return on_message

    def attach(self, emit: Emit, stop: threading.Event) -> None:
        """Subscribe now (the link renews it on every connection, before its birth message)."""
        if self._attached:
            return
        self._attached = True
        self._subscriber.subscribe(self.cfg.topic, self.cfg.qos, self.handler(emit, stop))
        log.info("mqtt source %s: subscribed to %s", self.name, self.cfg.topic)

    def run(self, emit: Emit, stop: threading.Event) -> None:
        self.attach(emit, stop)
        stop.wait()
