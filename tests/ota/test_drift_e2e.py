"""Drift end to end: a package built by the converters carries the reference of its calibration
data; the real agent runs it, and sensor data over a real broker whose middle part is shifted in
one channel raises the retained drift alert naming that channel only, and clears it when the data
returns. Scores are in the metrics payload."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agent.wire.fieldcheck import DriftAlertV1
from agent.wire.metrics import MetricsV1
from converters.dataset import Dataset
from tests.agentproc import AgentProcess, write_config
from tests.broker import Broker
from tests.mqttclient import Collector, Received, publish
from tests.ota import models, pkgs

pytestmark = pytest.mark.slow

WINDOW = 32
PHASE = 60  # windows per phase: normal, channel 1 shifted, normal again
DRIFT_TOPIC = "edge/dev-1/drift"


def _alerts(msgs: list[Received]) -> list[DriftAlertV1]:
    return [DriftAlertV1.model_validate_json(m.payload) for m in msgs if m.topic == DRIFT_TOPIC]


def _predictions(msgs: list[Received]) -> int:
    return sum("/prediction/" in m.topic for m in msgs)


def test_shift_in_one_channel_raises_and_clears_the_retained_alert(
    tmp_path: Path, broker: Broker
) -> None:
    rng = np.random.default_rng(5)
    calibration = rng.normal(0, 1, (400, WINDOW, 3)).astype(np.float32)
    pkg = pkgs.build(models.dense(1), "1.0.0", None, data=Dataset("cal.npy", [calibration], None))
    assert pkg.manifest.reference is not None
    path = tmp_path / "m.eapkg"
    path.write_bytes(pkg.to_bytes())
    conf = write_config(
        tmp_path / "agent.toml",
        {
            "agent": {"device_id": "dev-1", "state_dir": str(tmp_path / "state")},
            "model": {"path": str(path)},
            "window": {"length": WINDOW, "hop": WINDOW},
            "postprocess": {"type": "raw"},
            "sources": [{"type": "mqtt", "name": "r", "topic": "sensors/dev-1", "channels": 3}],
            "mqtt": {"host": broker.host, "port": broker.port, "reconnect_min_s": 0.1},
            "metrics": {"interval_s": 0.3},
            "drift": {"window_samples": 512, "chunks": 4},
        },
    )

    def send(windows: np.ndarray) -> None:
        for w in windows:
            publish(broker.host, broker.port, "sensors/dev-1", json.dumps(w.tolist()))

    shifted = rng.normal(0, 1, (PHASE, WINDOW, 3)).astype(np.float32)
    shifted[..., 1] += 2.0
    with (
        Collector(broker.host, broker.port, ["edge/dev-1/#"]) as col,
        AgentProcess(conf, tmp_path / "agent.log") as agent,
    ):
        col.wait_for(lambda m: any(r.payload == b"online" for r in m), 30)
        send(rng.normal(0, 1, (PHASE, WINDOW, 3)).astype(np.float32))
        col.wait_for(lambda m: _predictions(m) >= PHASE, 60)
        assert _alerts(col.messages) == [], "calibration-like data raised the alert"
        send(shifted)
        msgs = col.wait_for(lambda m: any(a.active for a in _alerts(m)), 60)
        raised = next(a for a in _alerts(msgs) if a.active)
        assert raised.channels == ["ch1"], raised
        assert raised.model.version == "1.0.0" and raised.psi["ch1"] >= 0.25
        send(rng.normal(0, 1, (PHASE, WINDOW, 3)).astype(np.float32))
        msgs = col.wait_for(lambda m: _predictions(m) >= 3 * PHASE, 60)
        msgs = col.wait_for(lambda m: [a.active for a in _alerts(m)] == [True, False], 30)
        metrics = [
            MetricsV1.model_validate_json(m.payload)
            for m in msgs
            if m.topic == "edge/dev-1/metrics"
        ]
        assert metrics and all(m.drift is not None for m in metrics)

        def calm(ms: list[Received]) -> bool:
            last = [m for m in ms if m.topic == "edge/dev-1/metrics"][-1]
            d = MetricsV1.model_validate_json(last.payload).drift
            return d is not None and not d.alert

        msgs = col.wait_for(calm, 30)  # the metrics after the clear say so too
        last = [m for m in msgs if m.topic == "edge/dev-1/metrics"][-1]
        drift = MetricsV1.model_validate_json(last.payload).drift
        assert drift is not None and [c.name for c in drift.channels] == ["ch0", "ch1", "ch2"]
        assert drift.score < 0.1 and drift.judged
        code, _ = agent.terminate()
        assert code == 0, agent.output()
    with Collector(broker.host, broker.port, [DRIFT_TOPIC]) as late:  # retained: cleared
        late.wait_for(lambda m: bool(m), 10)
        assert not _alerts(late.messages)[-1].active
