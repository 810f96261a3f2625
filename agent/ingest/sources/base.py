"""What every source is: a thing that runs in its own thread and emits ``SampleBlock``s.

A source never raises for bad input: it hands each malformed message to ``ctx.reject`` (which
counts it under ``samples_rejected{reason=...}`` and logs a rate-limited warning) and goes on.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from agent.errors import SampleError
from agent.ingest.samples import RateLimitedLog, SampleBlock
from agent.metrics import Metrics

log = logging.getLogger(__name__)

Emit = Callable[[SampleBlock], None]
MessageHandler = Callable[[str, bytes], None]


class Subscriber(Protocol):
    """The part of the MQTT link an MQTT source needs (see ``agent.delivery.mqtt.MqttLink``).

    ``handler(topic, payload)`` runs on the network thread: it must not block.
    Subscriptions are renewed after every reconnect by the link.
    """

    def subscribe(self, topic_filter: str, qos: int, handler: MessageHandler) -> None: ...


class Source(Protocol):
    """A sample source. ``run`` blocks until ``stop`` is set (or the source is exhausted)."""

    name: str

    def run(self, emit: Emit, stop: threading.Event) -> None: ...


@runtime_checkable
class PushSource(Source, Protocol):
    """A source fed by callbacks (MQTT). ``attach`` registers them; the pipeline calls it in
    ``Pipeline.start``, before the MQTT link connects, so that the link subscribes before it
    announces the device ``online`` (whoever sees ``online`` may publish samples)."""

    def attach(self, emit: Emit, stop: threading.Event) -> None: ...


@dataclass
class SourceContext:
    """What the pipeline hands every source."""

    metrics: Metrics
    subscriber: Subscriber | None = None
    warn: RateLimitedLog = field(default_factory=lambda: RateLimitedLog(log))

    def reject(self, source: str, err: SampleError) -> None:
        """Count and (rate-limited) log one malformed message; the source goes on."""
        self.metrics.inc("samples_rejected", reason=err.reason)
        self.warn.warning(f"{source}:{err.reason}", "source %s: skipped a sample: %s", source, err)
