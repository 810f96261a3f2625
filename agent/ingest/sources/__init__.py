"""Where samples come in: the sample sources, picked by ``type`` in config.

Each ``[[sources]]`` table builds one source through the ``SOURCES`` registry; several can run
at once, each in its own thread, each emitting ``SampleBlock``s to the pipeline.

* ``synthetic`` (``SyntheticSignal``): seeded sine + noise with injected anomalies (the demo).
* ``replay`` (``FileReplay``): a CSV, .npy or JSON-lines file, recorded / fixed / fast.
* ``mqtt`` (``MqttSubscription``): raw sensor topics, JSON or little-endian binary.
* ``command`` (``CommandProcess``): JSON lines from a sensor program, restarted with backoff.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent.config import SourceConfig
from agent.errors import SourceError
from agent.ingest.sources.base import (
    Emit,
    MessageHandler,
    PushSource,
    Source,
    SourceContext,
    Subscriber,
)
from agent.ingest.sources.command import CommandProcess
from agent.ingest.sources.mqtt import MqttSubscription
from agent.ingest.sources.replay import FileReplay
from agent.ingest.sources.synthetic import SyntheticSignal

__all__ = [
    "SOURCES",
    "CommandProcess",
    "Emit",
    "FileReplay",
    "MessageHandler",
    "MqttSubscription",
    "PushSource",
    "Source",
    "SourceContext",
    "Subscriber",
    "SyntheticSignal",
    "build_source",
]

SourceFactory = Callable[[Any, SourceContext], Source]

SOURCES: dict[str, SourceFactory] = {
    "synthetic": SyntheticSignal,
    "replay": FileReplay,
    "mqtt": MqttSubscription,
    "command": CommandProcess,
}


def build_source(cfg: SourceConfig, ctx: SourceContext) -> Source:
    """The source for one ``[[sources]]`` table; ``SourceError`` when it cannot start."""
    factory = SOURCES.get(cfg.type)
    if factory is None:
        raise SourceError(f"source {cfg.name}: unknown type {cfg.type!r}, known: {sorted(SOURCES)}")
    return factory(cfg, ctx)
