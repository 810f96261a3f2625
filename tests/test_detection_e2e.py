"""Detection on a recording with known events, through the real agent and broker.

The model scores each class by its channel's mean over the window, so a recording of one-hot
rows is a recording of known scores. Expected: exactly the events listed (count, labels,
sample spans), none during warm-up (a "yes" in the first windows only), none inside the
refractory period (a second "yes" burst right after the first).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import TypeAdapter

from agent.wire.detection import DetectionOutputs
from agent.wire.predictions import PredictionV1
from tests.agentproc import AgentProcess, write_config
from tests.broker import Broker
from tests.modelzoo import window_mean_model
from tests.mqttclient import Collector

LENGTH, HOP, AVERAGE, REFRACTORY = 4, 2, 3, 12
LABELS = ["bg", "yes", "no"]


def recording() -> np.ndarray:
    x = np.zeros((200, 3), np.float32)
    x[:, 0] = 1.0
    bursts = {
        1: [(0, 4), (40, 52), (58, 64), (150, 160)],  # warm-up, event, refractory, event
        2: [(100, 110)],
    }
    for k, spans in bursts.items():
        for a, b in spans:
            x[a:b] = 0.0
            x[a:b, k] = 1.0
    return x


EXPECTED = [  # (label, start_sample, end_sample): the span of the AVERAGE averaged windows
    # Window k covers samples [2k, 2k + 4). "yes" at 0..3: windows 0, 1 score 1, .5 but the
    # first decision (window 2) sees a mean of .5, not > .5: nothing. "yes" at 40..51: windows
    # 19, 20, 21 score .5, 1, 1 -> mean .83 at window 21, span [38, 46). "yes" at 58..63
    # rises at window 30, 9 windows after the event: inside the refractory period (12), so
    # nothing (with a shorter period it would be ("yes", 56, 64)).
    ("yes", 38, 46),
    ("no", 98, 106),
    ("yes", 148, 156),
]


def test_detection_events_on_a_recording(tmp_path: Path, broker: Broker) -> None:
    zoo = window_mean_model(LENGTH, 3)
    np.save(tmp_path / "rec.npy", recording())
    cfg = {
        "agent": {"device_id": "dev-d", "state_dir": str(tmp_path / "state")},
        "model": {"path": str(zoo.path), "name": "kws", "version": "1", "reference_kernels": True},
        "sources": [
            {
                "type": "replay",
                "name": "mic",
                "path": str(tmp_path / "rec.npy"),
                "channels": 3,
                "rate": "fast",
                "block_size": 5,
                "exit_when_done": True,
            }
        ],
        "window": {"length": LENGTH, "hop": HOP},
        "postprocess": {
            "type": "detection",
            "labels": LABELS,
            "ignore": ["bg"],
            "average_windows": AVERAGE,
            "threshold": 0.5,
            "refractory_windows": REFRACTORY,
        },
        "mqtt": {"host": broker.host, "port": broker.port, "reconnect_min_s": 0.1},
    }
    conf = write_config(tmp_path / "agent.toml", cfg)
    with Collector(broker.host, broker.port, ["edge/dev-d/prediction/#"]) as col:
        agent = AgentProcess(conf, tmp_path / "agent.log").start()
        try:
            code = agent.wait(60)
        finally:
            if agent.alive():
                agent.kill()
        assert code == 0, agent.output()
        msgs = col.wait_for(lambda m: len(m) >= len(EXPECTED), timeout=30)
    preds = [PredictionV1.model_validate(m.json()) for m in msgs]
    outs = [TypeAdapter(DetectionOutputs).validate_python(p.outputs) for p in preds]
    got = [(o.label, o.start_sample, o.end_sample) for o in outs if o.type == "event"]
    assert got == EXPECTED
    assert len(preds) == len(EXPECTED)  # no heartbeat configured: events only
    for p, (_, _, end) in zip(preds, EXPECTED, strict=True):
        assert p.sample == end - LENGTH  # the newest averaged window's first sample
        assert p.stream == "mic"
