"""Home Assistant discovery: the config messages, checked against HA's own key lists, with
their templates evaluated against real payloads; then read back from a real Mosquitto.

HA's Jinja is not installed here, so templates are checked with a small evaluator of the
only forms they use: paths (``value_json.a.b``, ``p.outputs['values'][0]``), the
``batch[-1]`` selection, and ``is defined`` guards. Every path must resolve in a payload the
agent really produces (postprocessors' outputs, MetricsV1), or be guarded.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import BaseModel

from agent.config import parse_config
from agent.model.postprocess import build_postprocessor
from agent.model.runtime import TensorInfo
from agent.observe.homeassistant import (
    COMPONENTS,
    HaBinarySensorConfig,
    HaSensorConfig,
    HaUpdateConfig,
    board_model,
    discovery_configs,
    discovery_messages,
    safe_id,
)
from agent.wire.metrics import MetricsV1
from agent.wire.predictions import PredictionBatchV1, PredictionV1, prediction_dict
from agent.wire.topics import Topics
from tests.agentproc import AgentProcess, write_config
from tests.broker import Broker
from tests.fleet.support import agent_config
from tests.mqttclient import Collector, Received, publish
from tests.observe.test_telemetry import FakeLink, FakeProcess, filled_metrics, snapshot

# --------------------------------------------------------------------------- HA's key lists

_COMMON = {
    "availability", "availability_mode", "availability_template", "availability_topic",
    "default_entity_id", "device", "enabled_by_default", "encoding", "entity_category",
    "entity_picture", "icon", "json_attributes_template", "json_attributes_topic", "name",
    "object_id", "origin", "payload_available", "payload_not_available", "platform", "qos",
    "unique_id",
}  # fmt: skip
HA_KEYS = {
    "sensor": _COMMON | {
        "device_class", "expire_after", "force_update", "last_reset_value_template", "options",
        "state_class", "state_topic", "suggested_display_precision", "unit_of_measurement",
        "value_template",
    },
    "binary_sensor": _COMMON | {
        "device_class", "expire_after", "force_update", "off_delay", "payload_off",
        "payload_on", "state_topic", "value_template",
    },
    "update": _COMMON | {
        "command_topic", "device_class", "display_precision", "latest_version_template",
        "latest_version_topic", "payload_install", "release_summary", "release_url", "retain",
        "state_topic", "title", "value_template",
    },
}  # fmt: skip
HA_DEVICE_KEYS = {
    "configuration_url", "connections", "hw_version", "identifiers", "manufacturer", "model",
    "model_id", "name", "serial_number", "suggested_area", "sw_version", "via_device",
}  # fmt: skip
HA_ENTITY_CATEGORIES = {"config", "diagnostic"}
HA_TOPIC = re.compile(
    r"^homeassistant/(sensor|binary_sensor|update)/[a-zA-Z0-9_-]+/[a-zA-Z0-9_-]+/config$"
)


def check_ha_config(topic: str, payload: bytes, device_id: str) -> dict[str, Any]:
    """Check one discovery message the way HA reads it; returns the config."""
    m = HA_TOPIC.match(topic)
    assert m, f"not a discovery topic HA accepts: {topic}"
    component = m.group(1)
    conf = json.loads(payload)
    unknown = set(conf) - HA_KEYS[component]
    assert not unknown, f"{topic}: keys HA does not know: {unknown}"
    assert set(conf["device"]) <= HA_DEVICE_KEYS
    assert conf["device"]["identifiers"] == [device_id]
    assert {"name", "model", "sw_version"} <= set(conf["device"])
    assert conf["availability_topic"] == f"edge/{device_id}/status"
    assert (conf["payload_available"], conf["payload_not_available"]) == ("online", "offline")
    assert conf.get("entity_category", "config") in HA_ENTITY_CATEGORIES
    assert conf["unique_id"] and re.fullmatch(r"[a-zA-Z0-9_-]+", conf["unique_id"])
    models: dict[str, type[BaseModel]] = {
        "sensor": HaSensorConfig,
        "binary_sensor": HaBinarySensorConfig,
        "update": HaUpdateConfig,
    }
    model = models[component]
    model.model_validate(conf)  # our schema
    return dict(conf)


# --------------------------------------------------------------------------- templates

_SET_P = "{% set p = value_json.batch[-1] if value_json.batch is defined else value_json %}"
_PATH = re.compile(
    r"\b(value_json|p)((?:\.[A-Za-z_][A-Za-z0-9_]*|\[(?:'[^']*'|-?\d+)\])*)(\s+is\s+defined)?"
)
_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\['([^']*)'\]|\[(-?\d+)\]")


def _resolve(root: Any, steps: str) -> Any:
    node = root
    for attr, key, idx in _STEP.findall(steps):
        if attr:
            assert attr not in {"values", "items", "keys", "get"}, (
                f".{attr} is a dict method in Jinja: use ['{attr}']"
            )
            node = node[attr]
        elif key:
            node = node[key]
        else:
            node = node[int(idx)]
    return node


def check_template(template: str, payload: Any) -> list[Any]:
    """Resolve every path of ``template`` in ``payload``; returns the values (KeyError if not)."""
    assert template.count("{{") == 1 and template.endswith("}}"), template
    p = payload
    if template.startswith(_SET_P):
        p = payload["batch"][-1] if "batch" in payload else payload
        template = template[len(_SET_P) :]
    assert "{%" not in template, template
    values = []
    failed_guards = set()
    for root, steps, guarded in _PATH.findall(template):
        if guarded:
            try:
                _resolve(payload if root == "value_json" else p, steps)
            except (KeyError, IndexError, TypeError):
                failed_guards.add(root + steps)
    for root, steps, guarded in _PATH.findall(template):
        if guarded:
            continue
        try:
            values.append(_resolve(payload if root == "value_json" else p, steps))
        except (KeyError, IndexError, TypeError):
            # fine only under an ``is defined`` guard that fails (the other branch applies)
            if not any((root + steps).startswith(g) for g in failed_guards):
                raise
    return values


# --------------------------------------------------------------------------- payloads


def outputs_of(post_cfg: dict[str, Any], outputs: list[np.ndarray]) -> dict[str, Any]:
    cfg = parse_config({"postprocess": post_cfg})
    infos = [
        TensorInfo(name=f"out{i}", index=i, shape=o.shape, dtype="float32", scale=0.0, zero_point=0)
        for i, o in enumerate(outputs)
    ]
    post = build_postprocessor(cfg.postprocess, infos, None, input_size=32 * 3)
    out = post(outputs, np.zeros((1, 32, 3), np.float32), "accel")
    assert out is not None
    return out


CASES: dict[str, tuple[dict[str, Any], list[np.ndarray]]] = {
    "classification": (
        {"type": "classification", "labels": ["normal", "anomaly"], "top_k": 2},
        [np.array([[0.2, 0.8]], np.float32)],
    ),
    "regression-named": (
        {"type": "regression", "names": ["temp", "rh"]},
        [np.array([[21.5, 40.0]], np.float32)],
    ),
    "regression": ({"type": "regression"}, [np.array([[3.25]], np.float32)]),
    "anomaly": ({"type": "anomaly", "threshold": 0.5}, [np.array([[0.9]], np.float32)]),
    "raw": ({"type": "raw"}, [np.array([[1.0, 2.0]], np.float32)]),
}


def prediction(outputs: dict[str, Any], seq: int = 7) -> dict[str, Any]:
    p = prediction_dict(seq, "pi.kitchen-1", "demo", "1.2.0", "accel", 1.7e9, outputs, 0.05)
    PredictionV1.model_validate(p)
    return p


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("batched", [False, True])
def test_discovery_configs_fit_ha_and_real_payloads(case: str, batched: bool) -> None:
    post_cfg, outs = CASES[case]
    cfg = parse_config(
        {
            "agent": {"device_id": "pi.kitchen-1"},
            "postprocess": post_cfg,
            "homeassistant": {"enabled": True},
        }
    )
    topics = Topics("edge", "pi.kitchen-1")
    msgs = discovery_messages(cfg, topics, "demo", "0.1.0", "Raspberry Pi 4", cpu_temp=False)
    pred = prediction(outputs_of(post_cfg, outs))
    if batched:
        pred = {"v": 1, "device": "pi.kitchen-1", "batch": [prediction(pred["outputs"], 6), pred]}
        PredictionBatchV1.model_validate(pred)
    metrics = json.loads(snapshot(filled_metrics()).model_dump_json())
    metrics["drift"] = {"score": 0.31, "alert": True}  # the parts the templates read
    ota_state = {"state": "downloading", "version": "1.3.0", "running": "1.2.0"}
    drift_alert = {"active": True, "channels": ["ch1"]}
    by_topic = {
        topics.prediction("demo"): pred,
        topics.metrics: metrics,
        topics.ota_state: ota_state,
        topics.drift: drift_alert,
    }
    seen_components = set()
    for msg in msgs:
        assert msg.retain and msg.qos == 1
        conf = check_ha_config(msg.topic, msg.payload, "pi.kitchen-1")
        seen_components.add(msg.topic.split("/")[1])
        assert "/pi_kitchen-1/" in msg.topic  # the '.' is not allowed in HA's node id
        for key, topic_key in (
            ("value_template", "state_topic"),
            ("json_attributes_template", "json_attributes_topic"),
            ("latest_version_template", "latest_version_topic"),
        ):
            if key in conf:
                values = check_template(conf[key], by_topic[conf[topic_key]])
                assert values, (key, conf[key])
    assert seen_components == {"sensor", "update", "binary_sensor"}  # drift: binary
    names = [json.loads(m.payload)["name"] for m in msgs]
    assert len(names) == len(set(names))
    # the headline value of each type
    state = json.loads(msgs[0].payload)["value_template"]
    got = check_template(state, pred)
    expected = {
        "classification": ["anomaly"],
        "regression-named": [21.5],
        "regression": [3.25],
        "anomaly": [0.9],
        "raw": [{"out0": [[1.0, 2.0]]}],
    }[case]
    assert got == expected


def test_update_entity_versions() -> None:
    cfg = parse_config({"homeassistant": {"enabled": True}})
    topics = Topics("edge", "demo-device")
    confs = dict(discovery_configs(cfg, topics, "demo", "0.1.0", "edge-agent"))
    update = next(c for c in confs.values() if isinstance(c, HaUpdateConfig))
    assert update.state_topic == topics.metrics and update.latest_version_topic == topics.ota_state
    metrics = json.loads(snapshot(filled_metrics()).model_dump_json())
    assert check_template(update.value_template, metrics) == ["1.2.0"]
    # the OTA state (OtaStateV1): the version being installed, else the running one
    installing = {"state": "downloading", "version": "1.3.0", "running": "1.2.0"}
    assert check_template(update.latest_version_template, installing) == [
        "1.3.0",
        "downloading",
        "1.2.0",
    ]
    failed = {"state": "failed", "version": "1.3.0", "running": "1.2.0"}
    assert "1.2.0" in check_template(update.latest_version_template, failed)


def test_metric_sensors_follow_the_config() -> None:
    topics = Topics("edge", "d")
    off = parse_config({"metrics": {"interval_s": 0}, "homeassistant": {"enabled": True}})
    # prediction, drift alert, model update
    assert len(discovery_configs(off, topics, "demo", "0.1.0", "x")) == 3
    on = parse_config({"homeassistant": {"enabled": True, "discovery_prefix": "ha"}})
    with_temp = discovery_configs(on, topics, "demo", "0.1.0", "x", cpu_temp=True)
    without = discovery_configs(on, topics, "demo", "0.1.0", "x", cpu_temp=False)
    assert len(with_temp) == len(without) + 1
    assert all(t.startswith("ha/") for t, _ in with_temp)
    assert {type(c) for _, c in with_temp} <= set(COMPONENTS)


def test_ids_and_board(tmp_path: Path) -> None:
    assert safe_id("pi.kitchen-1") == "pi_kitchen-1"
    model = tmp_path / "model"
    model.write_bytes(b"Raspberry Pi 4 Model B Rev 1.4\0")
    assert board_model([tmp_path / "missing", model]) == "Raspberry Pi 4 Model B Rev 1.4"
    assert board_model([tmp_path / "missing"]) == "edge-agent"


def test_fake_link_and_process_shapes() -> None:
    assert FakeLink().connected and FakeProcess().rss_bytes()


# --------------------------------------------------------------------------- the real agent


@pytest.mark.slow
def test_agent_publishes_retained_discovery(broker: Broker, tmp_path: Path) -> None:
    cfg = agent_config(
        tmp_path,
        broker,
        "ha-dev",
        metrics={"interval_s": 0.3},
        homeassistant={"enabled": True},
    )
    conf = write_config(tmp_path / "agent.toml", cfg)
    topics = ["homeassistant/#", "edge/ha-dev/#"]

    def ready(ms: list[Received]) -> bool:
        configs = {m.topic for m in ms if m.topic.startswith("homeassistant/")}
        return (
            len(configs) >= 6
            and any(m.topic.endswith("/prediction/demo") for m in ms)
            and any(m.topic.endswith("/metrics") and "invoke" in m.json()["latency_ms"] for m in ms)
        )

    with (
        Collector(broker.host, broker.port, topics) as live,
        AgentProcess(conf, tmp_path / "agent.log") as agent,
    ):
        live.wait_for(ready, timeout=30)
        configs = {
            m.topic: m.payload for m in live.messages if m.topic.startswith("homeassistant/")
        }
        # Retained: a subscriber arriving later (Home Assistant starting) gets them all.
        with Collector(broker.host, broker.port, ["homeassistant/#", "edge/ha-dev/status"]) as late:
            late.wait_for(lambda ms: len(ms) >= len(configs) + 1, timeout=10)
            assert all(m.retain for m in late.messages)
            assert {m.topic: m.payload for m in late.on("/config")} == configs
            assert late.on("/status")[-1].payload == b"online"
        # Home Assistant's birth message: everything is published again.
        before = len([m for m in live.messages if m.topic.startswith("homeassistant/")])
        publish(broker.host, broker.port, "homeassistant/status", b"online")
        live.wait_for(
            lambda ms: len([m for m in ms if m.topic.endswith("/config")]) >= before + len(configs),
            timeout=10,
        )
        assert agent.alive()
    prediction = next(m.json() for m in live.messages if m.topic.endswith("/prediction/demo"))
    metrics = next(
        m.json()
        for m in live.messages
        if m.topic.endswith("/metrics") and "invoke" in m.json()["latency_ms"]
    )
    MetricsV1.model_validate(metrics)
    by_topic = {"edge/ha-dev/prediction/demo": prediction, "edge/ha-dev/metrics": metrics}
    components = set()
    for topic, payload in configs.items():
        c = check_ha_config(topic, payload, "ha-dev")
        components.add(topic.split("/")[1])
        if c.get("state_topic") in by_topic and "drift" not in c["value_template"]:
            assert check_template(c["value_template"], by_topic[c["state_topic"]])
    # the demo model's package has no drift reference: the score falls back to 0
    assert components == {"sensor", "update", "binary_sensor"}
    update = next(
        json.loads(p) for t, p in configs.items() if t.startswith("homeassistant/update/")
    )
    assert check_template(update["value_template"], metrics) == ["1.0.0"]
    # after the agent stopped, its entities show unavailable: the retained status says so
    with Collector(broker.host, broker.port, ["edge/ha-dev/status"]) as after:
        after.wait_for(lambda ms: bool(ms), timeout=10)
        assert after.messages[-1].payload == b"offline"
