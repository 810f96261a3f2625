"""The source registry: every configured ``type`` builds its source."""

from __future__ import annotations

import sys
import typing
from pathlib import Path

import numpy as np

from agent.config import (
    CommandSource,
    MqttSource,
    ReplaySource,
    SourceConfig,
    SyntheticSource,
)
from agent.ingest.sources import (
    SOURCES,
    CommandProcess,
    FileReplay,
    MessageHandler,
    MqttSubscription,
    SourceContext,
    SyntheticSignal,
    build_source,
)
from agent.ingest.sources.base import Source
from tests.ingest.sources._sink import make_ctx


class NullSubscriber:
    def subscribe(self, topic_filter: str, qos: int, handler: MessageHandler) -> None:
        pass


def test_every_config_type_is_registered() -> None:
    union = typing.get_args(SourceConfig)[0]
    types = {typing.get_args(m.model_fields["type"].annotation)[0] for m in typing.get_args(union)}
    assert types == set(SOURCES)


def test_build_source_picks_by_type(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((4, 3)))
    ctx = SourceContext(metrics=make_ctx().metrics, subscriber=NullSubscriber())
    cases: list[tuple[SyntheticSource | ReplaySource | MqttSource | CommandSource, type]] = [
        (SyntheticSource(name="a"), SyntheticSignal),
        (ReplaySource(name="b", path=tmp_path / "x.npy"), FileReplay),
        (MqttSource(name="c", topic="t/#"), MqttSubscription),
        (CommandSource(name="d", argv=[sys.executable, "-c", "pass"]), CommandProcess),
    ]
    for cfg, cls in cases:
        source: Source = build_source(cfg, ctx)
        assert isinstance(source, cls)
        assert source.name == cfg.name
