"""Provisioning without a model (issue 11): ``model.path = "none"`` with OTA on. The real agent
process starts with no model, reports ``awaiting_model``, takes its first release from a real
Mosquitto + HTTP store through the full update path, and then predicts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.config import MqttSection, parse_config
from agent.errors import ConfigError
from agent.wire.ota import OtaStateV1
from converters.publish import publish_package
from converters.settings import PublishSettings
from tests.agentproc import REPO, AgentProcess, write_config
from tests.broker import Broker
from tests.mqttclient import Collector, Received
from tests.ota import models, pkgs
from tests.ota.conftest import Keys
from tests.ota.httpserver import FileServer

pytestmark = pytest.mark.slow

OTA_TOPIC = "edge/dev-1/ota"


def states(msgs: list[Received]) -> list[OtaStateV1]:
    return [OtaStateV1.model_validate_json(m.payload) for m in msgs if m.topic == OTA_TOPIC]


def predictions(msgs: list[Received]) -> list[dict[str, Any]]:
    return [m.json() for m in msgs if "/prediction/" in m.topic]


def metrics(msgs: list[Received]) -> list[dict[str, Any]]:
    return [m.json() for m in msgs if m.topic == "edge/dev-1/metrics"]


def test_no_model_needs_ota() -> None:
    with pytest.raises(ConfigError, match=r"needs ota\.enabled"):
        parse_config({"model": {"path": "none"}})


def test_an_agent_without_a_model_installs_its_first_release_and_predicts(
    tmp_path: Path, broker: Broker, keys: Keys, http: FileServer
) -> None:
    conf = write_config(
        tmp_path / "agent.toml",
        {
            "agent": {"device_id": "dev-1", "state_dir": str(tmp_path / "state")},
            "model": {"path": "none", "name": "m"},
            "sources": [{"type": "synthetic", "name": "syn", "rate_hz": 200.0, "block_size": 4}],
            "mqtt": {"host": broker.host, "port": broker.port, "reconnect_min_s": 0.1},
            "metrics": {"interval_s": 1.0},
            "ota": {
                "enabled": True,
                "trusted_keys": [str(keys.release_pub)],
                "health_window_s": 1.0,
            },
        },
    )
    check = subprocess.run(
        [sys.executable, "-m", "agent", "check-config", "--config", str(conf)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert check.returncode == 0, check.stderr
    pkg = pkgs.build(models.dense(1), "1.0.0", keys.release)  # raw outputs, no preprocess
    settings = PublishSettings(
        store=str(http.root),
        base_url=http.base_url,
        channel="stable",
        mqtt=MqttSection(host=broker.host, port=broker.port),
    )
    with (
        Collector(broker.host, broker.port, ["edge/dev-1/#"]) as col,
        AgentProcess(conf, tmp_path / "agent.log") as agent,
    ):
        col.wait_for(
            lambda m: (
                any(s.state == "awaiting_model" for s in states(m))
                and any(x["model"]["version"] == "none" for x in metrics(m))
            ),
            60,
        )
        assert predictions(col.messages) == []
        awaiting = next(s for s in states(col.messages) if s.state == "awaiting_model")
        assert (awaiting.model, awaiting.running) == ("m", "none")
        publish_package(pkg, settings)
        msgs = col.wait_for(
            lambda m: (
                any(
                    (s.state, s.version, s.health) == ("active", "1.0.0", "passed")
                    for s in states(m)
                )
                and len(predictions(m)) >= 10
            ),
            90,
        )
        code, _ = agent.terminate()
        assert code == 0, agent.output()
    seen = [s.state for s in states(msgs)]
    for phase in ("awaiting_model", "downloading", "verifying", "active"):
        assert phase in seen, seen
    preds = predictions(msgs)
    assert {p["model"]["version"] for p in preds} == {"1.0.0"}
    assert all(p["model"]["name"] == "m" for p in preds)
    assert "smoke test of" in agent.output()
    assert "first model installed: m 1.0.0" in agent.output()
