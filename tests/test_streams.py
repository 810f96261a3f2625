"""State per stream, through the real agent process and a real broker.

A stateful model (resource variables: an EMA and a frame counter, built by tests/modelzoo.py)
fed two replay streams must give, for each stream, exactly what a separate interpreter fed
only that stream gives (reference kernels on, lossless payload floats). The replays use
``exit_when_done``: the agent exits 0 by itself once everything was delivered.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from agent.wire.predictions import PredictionV1
from tests.agentproc import AgentProcess, write_config
from tests.broker import Broker
from tests.modelzoo import CHANNELS, run_frames, streaming_model
from tests.mqttclient import Collector, Received


def _config(
    tmp: Path, broker: Broker, model: Path, sources: list[dict[str, Any]], **model_over: Any
) -> dict[str, Any]:
    return {
        "agent": {"device_id": "dev-s", "state_dir": str(tmp / "state")},
        "model": {
            "path": str(model),
            "name": "ema",
            "version": "1",
            "reference_kernels": True,
            **model_over,
        },
        "sources": sources,
        "window": {"length": 1, "hop": 1, "max_streams": 4},
        "postprocess": {"type": "raw", "precision": "lossless"},
        "mqtt": {"host": broker.host, "port": broker.port, "reconnect_min_s": 0.1},
    }


def _replay(name: str, path: Path) -> dict[str, Any]:
    return {
        "type": "replay",
        "name": name,
        "path": str(path),
        "channels": CHANNELS,
        "rate": "fast",
        "block_size": 7,
        "exit_when_done": True,
    }


def _predictions(msgs: list[Received]) -> list[dict[str, Any]]:
    return [m.json() for m in msgs if "/prediction/" in m.topic]


def test_two_streams_into_a_stateful_model_equal_two_separate_interpreters(
    tmp_path: Path, broker: Broker
) -> None:
    zoo = streaming_model()
    rng = np.random.default_rng(12)
    recs = {
        "left": rng.normal(0, 1, (60, CHANNELS)).astype(np.float32),
        "right": rng.normal(5, 2, (45, CHANNELS)).astype(np.float32),
    }
    sources = []
    for name, x in recs.items():
        np.save(tmp_path / f"{name}.npy", x)
        sources.append(_replay(name, tmp_path / f"{name}.npy"))
    conf = write_config(tmp_path / "agent.toml", _config(tmp_path, broker, zoo.path, sources))
    total = sum(len(x) for x in recs.values())
    with Collector(broker.host, broker.port, ["edge/dev-s/prediction/#"]) as col:
        agent = AgentProcess(conf, tmp_path / "agent.log").start()
        try:
            code = agent.wait(60)  # exit_when_done: no signal needed
        finally:
            if agent.alive():
                agent.kill()
        assert code == 0, agent.output()
        msgs = col.wait_for(lambda m: len(_predictions(m)) >= total, timeout=30)
    preds = [PredictionV1.model_validate(p) for p in _predictions(msgs)]
    assert len(preds) == total
    for name, x in recs.items():
        mine = [p for p in preds if p.stream == name]
        assert [p.sample for p in mine] == list(range(len(x))), name
        expected = run_frames(zoo.content, [{"x": row[None]} for row in x])
        for p, e in zip(mine, expected, strict=True):
            got_ema = np.asarray(p.outputs["tensors"]["ema"], np.float32)
            got_count = np.asarray(p.outputs["tensors"]["count"], np.float32)
            assert np.array_equal(got_ema, e["ema"]), (name, p.sample, got_ema, e["ema"])
            assert np.array_equal(got_count, e["count"]), (name, p.sample, got_count, e["count"])
    assert "one interpreter per stream" in agent.output()


def test_stateful_model_beyond_the_memory_limit_is_refused_at_start(
    tmp_path: Path, broker: Broker
) -> None:
    zoo = streaming_model()
    np.save(tmp_path / "a.npy", np.zeros((4, CHANNELS), np.float32))
    cfg = _config(
        tmp_path,
        broker,
        zoo.path,
        [_replay("a", tmp_path / "a.npy")],
        stream_state_limit_mb=0.001,
    )
    conf = write_config(tmp_path / "agent.toml", cfg)
    agent = AgentProcess(conf, tmp_path / "agent.log").start()
    try:
        code = agent.wait(60)
    finally:
        if agent.alive():
            agent.kill()
    out = agent.output()
    assert code == 2, out
    assert "stateful" in out and "window.max_streams" in out
    assert "model.stream_state_limit_mb" in out
