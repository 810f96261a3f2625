"""Where samples come in: the sample sources, picked by ``type`` in config.

Each ``[[sources]]`` table builds one source through the ``SOURCES`` registry; several can run
at once, each in its own thread, each emitting ``SampleBlock``s to the pipeline.

* ``synthetic`` (``SyntheticSignal``): seeded sine + noise with injected anomalies (the demo).
* ``replay`` (``FileReplay``): a CSV, .npy or JSON-lines file, recorded / fixed / fast.
* ``mqtt`` (``MqttSubscription``): raw sensor topics, JSON or little-endian binary.
* ``command`` (``CommandProcess``): JSON lines from a sensor program, restarted with backoff.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
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

SOURCES: dict[str, tuple[str, str]] = {
    "synthetic": ("synthetic", "SyntheticSignal"),
    "replay": ("replay", "FileReplay"),
    "mqtt": ("mqtt", "MqttSubscription"),
    "command": ("command", "CommandProcess"),
}
"""``type`` -> (module, class): a source's module is imported when a source of its type is
built (the command source's ``subprocess`` and the others cost start-up time and memory on a
device that does not use them)."""


def _factory(module: str, name: str) -> SourceFactory:
    factory: SourceFactory = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    return factory


def __getattr__(name: str) -> Any:
    for module, cls in SOURCES.values():
        if cls == name:
            return _factory(module, cls)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_source(cfg: SourceConfig, ctx: SourceContext) -> Source:
    """The source for one ``[[sources]]`` table; ``SourceError`` when it cannot start."""
    where = SOURCES.get(cfg.type)
    if where is None:
        raise SourceError(f"source {cfg.name}: unknown type {cfg.type!r}, known: {sorted(SOURCES)}")
    return _factory(*where)(cfg, ctx)
