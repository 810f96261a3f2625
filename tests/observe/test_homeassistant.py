"""Home Assistant discovery: every config checked against the fields and types of HA's own
MQTT schemas (kept as data: tests/observe/data/ha_mqtt_schema.json, with where they come
from), its templates rendered the way HA renders them (Jinja2's sandbox, ``value_json`` set
only for a JSON payload) against real payloads and against an empty one; then read back from
a real Mosquitto with the real agent.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import BaseModel

from agent.config import parse_config
from agent.delivery.mqtt import OutgoingMessage
from agent.model.postprocess import build_postprocessor
from agent.model.runtime import TensorInfo
from agent.observe.homeassistant import (
    COMPONENTS,
    HaBinarySensorConfig,
    HaButtonConfig,
    HaEventConfig,
    HaSensorConfig,
    HaUpdateConfig,
    HomeAssistantDiscovery,
    board_model,
    discovery_configs,
    discovery_messages,
    node_filter,
    safe_id,
)
from agent.wire.detection import DetectionEventV1, DetectionHeartbeatV1
from agent.wire.metrics import MetricsV1
from agent.wire.ota import MARKED_BAD_REASONS, OtaStateV1
from agent.wire.predictions import PredictionBatchV1, PredictionV1, prediction_dict
from agent.wire.topics import Topics
from tests.agentproc import AgentProcess, write_config
from tests.broker import Broker
from tests.fleet.support import agent_config
from tests.mqttclient import Collector, Received, publish
from tests.observe.test_telemetry import FakeLink, FakeProcess, filled_metrics, snapshot

# --------------------------------------------------------------------------- HA's schemas

SCHEMA: dict[str, Any] = json.loads(
    (Path(__file__).parent / "data" / "ha_mqtt_schema.json").read_text(encoding="utf-8")
)
HA_TOPIC = re.compile(
    r"^homeassistant/(sensor|binary_sensor|update|button|event)/[a-zA-Z0-9_-]+/[a-zA-Z0-9_-]+"
    r"/config$"
)
_ICON = re.compile(r"^[a-z0-9-]+:[a-z0-9-]+$")


def _check_type(where: str, kind: str, v: Any) -> None:
    """One value against one of the schema data's type names (see its ``_about``)."""
    if kind.startswith("enum:"):
        assert v in kind[5:].split("|"), f"{where}: {v!r} is not one of {kind[5:]}"
    elif kind in {"string", "template"}:
        assert isinstance(v, str), f"{where}: {v!r} is not a string"
    elif kind == "icon":
        assert isinstance(v, str) and _ICON.match(v), f"{where}: {v!r} is not an icon"
    elif kind in {"subscribe_topic", "publish_topic"}:
        assert isinstance(v, str) and v and "//" not in v and len(v.encode()) <= 65535, where
        assert "\0" not in v, where
        if kind == "publish_topic":
            assert "+" not in v and "#" not in v, f"{where}: wildcard in a publish topic {v!r}"
    elif kind == "percentage_or_null":
        assert v is None or (isinstance(v, int | float) and 0 <= v <= 100), f"{where}: {v!r}"
    elif kind == "boolean":
        assert isinstance(v, bool), f"{where}: {v!r} is not a boolean"
    elif kind == "positive_int":
        assert isinstance(v, int) and not isinstance(v, bool) and v >= 0, where
    elif kind == "qos":
        assert v in (0, 1, 2), where
    elif kind == "string_list":
        assert isinstance(v, list) and all(isinstance(x, str) for x in v), where
    elif kind == "device":
        _check_object(where, SCHEMA["device"], v)
        assert any(v.get(k) for k in SCHEMA["device"]["one_of_required"]), where
    elif kind == "origin":
        _check_object(where, SCHEMA["origin"], v)
    else:
        raise AssertionError(f"{where}: the schema data uses a type {kind!r} we do not check")


def _check_object(where: str, schema: dict[str, Any], obj: Any) -> None:
    assert isinstance(obj, dict), f"{where}: not an object"
    unknown = set(obj) - set(schema["fields"])
    assert not unknown, f"{where}: keys HA does not know (discovery drops them): {unknown}"
    missing = set(schema.get("required", [])) - set(obj)
    assert not missing, f"{where}: required keys missing: {missing}"
    for k, v in obj.items():
        _check_type(f"{where}.{k}", schema["fields"][k], v)


def check_ha_config(topic: str, payload: bytes, device_id: str) -> dict[str, Any]:
    """Check one discovery message the way HA's schema for its component reads it."""
    m = HA_TOPIC.match(topic)
    assert m, f"not a discovery topic HA accepts: {topic}"
    component = m.group(1)
    conf = json.loads(payload)
    comp = SCHEMA["components"][component]
    _check_object(
        topic,
        {"fields": {**SCHEMA["common"], **comp["fields"]}, "required": comp["required"]},
        conf,
    )
    # sensor.py: a device class restricts the unit
    units = SCHEMA["sensor_units"]
    if component == "sensor" and "unit_of_measurement" in conf and "device_class" in conf:
        assert conf["device_class"] in units, f"{topic}: add the units of {conf['device_class']}"
        assert conf["unit_of_measurement"] in units[conf["device_class"]], topic
    assert conf["device"]["identifiers"] == [device_id]
    assert {"name", "model", "sw_version"} <= set(conf["device"])
    assert conf["origin"]["name"] == "edge-agent" and conf["origin"]["sw_version"]
    assert conf["availability_topic"] == f"edge/{device_id}/status"
    assert (conf["payload_available"], conf["payload_not_available"]) == ("online", "offline")
    assert conf["unique_id"] and re.fullmatch(r"[a-zA-Z0-9_-]+", conf["unique_id"])
    models: dict[str, type[BaseModel]] = {
        "sensor": HaSensorConfig,
        "binary_sensor": HaBinarySensorConfig,
        "update": HaUpdateConfig,
        "button": HaButtonConfig,
        "event": HaEventConfig,
    }
    models[component].model_validate(conf)  # our schema
    return dict(conf)


def test_the_checker_refuses_what_ha_refuses() -> None:
    cfg = parse_config({"agent": {"device_id": "d"}, "homeassistant": {"enabled": True}})
    topic, conf = discovery_configs(cfg, Topics("edge", "d"), "demo", "0.1.0", "x")[0]
    good = json.loads(conf.model_dump_json(exclude_none=True))
    check_ha_config(topic, json.dumps(good).encode(), "d")
    for bad in (
        {**good, "unit_of_measurment": "ms"},  # a typo HA would drop silently
        {**good, "state_class": "average"},
        {**good, "state_topic": ""},
        {**good, "device_class": "duration", "unit_of_measurement": "1/s"},
        {**good, "origin": {"sw_version": "1"}},
        {**good, "device": {"name": "d"}},
    ):
        with pytest.raises(AssertionError):
            check_ha_config(topic, json.dumps(bad).encode(), "d")


# --------------------------------------------------------------------------- templates

_ENV = ImmutableSandboxedEnvironment()


def render(template: str, payload: bytes | str | Any) -> str:
    """Render as HA's ``MqttValueTemplate.async_render_with_possible_json_value`` does:
    ``value`` is the payload text, ``value_json`` exists only when it parses as JSON."""
    if not isinstance(payload, (bytes, str)):
        payload = json.dumps(payload)
    text = payload.decode() if isinstance(payload, bytes) else payload
    variables: dict[str, Any] = {"value": text}
    with contextlib.suppress(ValueError):
        variables["value_json"] = json.loads(text)
    return _ENV.from_string(template).render(**variables).strip()


def number(text: str) -> float:
    return float(text)


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


TEMPLATES = ("value_template", "json_attributes_template")


def ha_config(**tables: Any) -> Any:
    return parse_config(
        {"agent": {"device_id": "pi.kitchen-1"}, "homeassistant": {"enabled": True}, **tables}
    )


def ota_state(state: str, version: str | None = "1.3.0", **more: Any) -> dict[str, Any]:
    msg = OtaStateV1(
        device="pi.kitchen-1",
        model="demo",
        state=state,  # type: ignore[arg-type]
        version=version,
        running=more.pop("running", "1.2.0"),
        ts=1.7e9,
        **more,
    )
    return msg.model_dump(mode="json")


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("batched", [False, True])
def test_discovery_configs_fit_ha_and_real_payloads(case: str, batched: bool) -> None:
    post_cfg, outs = CASES[case]
    cfg = ha_config(postprocess=post_cfg, ota={"enabled": True, "allow_unsigned": True})
    topics = Topics("edge", "pi.kitchen-1")
    msgs = discovery_messages(cfg, topics, "demo", "0.1.0", "Raspberry Pi 4", cpu_temp=False)
    pred = prediction(outputs_of(post_cfg, outs))
    if batched:
        pred = {"v": 1, "device": "pi.kitchen-1", "batch": [prediction(pred["outputs"], 6), pred]}
        PredictionBatchV1.model_validate(pred)
    metrics = json.loads(snapshot(filled_metrics()).model_dump_json())
    by_topic = {
        topics.prediction("demo"): pred,
        topics.metrics: metrics,
        topics.ota_state: ota_state("downloading", progress={"bytes": 50, "total": 200}),
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
        ):
            if key in conf:
                out = render(conf[key], by_topic[conf[topic_key]])
                assert out and out != "None", (msg.topic, key, conf[key])
                # an empty retained payload (a cleared topic) or junk: unknown or ignored
                for junk in (b"", b"not json", b"[1, 2]"):
                    assert render(conf[key], junk) in {"None", ""}, (msg.topic, key, junk)
    assert seen_components == (
        {"sensor", "update", "button", "binary_sensor"}
        if case == "anomaly"
        else {"sensor", "update", "button"}
    )
    names = [json.loads(m.payload)["name"] for m in msgs]
    assert len(names) == len(set(names))
    # the headline value of each type
    state = json.loads(msgs[0].payload)["value_template"]
    got = render(state, pred)
    expected = {
        "classification": "anomaly",
        "regression-named": "21.5",
        "regression": "3.25",
        "anomaly": "0.9",
        "raw": json.dumps({"out0": [[1.0, 2.0]]}),
    }[case]
    assert got == expected


def test_detection_is_an_event_entity() -> None:
    """``type = "detection"``: an HA event entity fired once per detection event (the label
    as ``event_type``); heartbeats and empty payloads are ignored (``None``)."""
    cfg = ha_config(
        postprocess={
            "type": "detection",
            "labels": ["background", "hey_pi"],
            "ignore": ["background"],
        }
    )
    topics = Topics("edge", "pi.kitchen-1")
    msgs = discovery_messages(cfg, topics, "kws", "0.1.0", "x", cpu_temp=False)
    confs = {m.topic: check_ha_config(m.topic, m.payload, "pi.kitchen-1") for m in msgs}
    events = [c for t, c in confs.items() if "/event/" in t]
    assert len(events) == 1 and not any(t.endswith("kws_prediction/config") for t in confs)
    ev = events[0]
    assert ev["event_types"] == ["hey_pi"] and ev["state_topic"] == topics.prediction("kws")
    event = DetectionEventV1(
        label="hey_pi", mean=0.95, peak=0.99, threshold=0.9, start_sample=38, end_sample=46,
        windows=3,
    ).model_dump(mode="json")  # fmt: skip
    beat = DetectionHeartbeatV1(means={"hey_pi": 0.01}, start_sample=8, end_sample=16)
    fired = json.loads(render(ev["value_template"], prediction(event)))
    assert fired == {"event_type": "hey_pi", "mean": 0.95, "peak": 0.99, "stream": "accel"}
    batch = {"v": 1, "device": "pi.kitchen-1", "batch": [prediction(event, 6), prediction(event)]}
    assert json.loads(render(ev["value_template"], batch))["event_type"] == "hey_pi"
    assert render(ev["value_template"], prediction(beat.model_dump(mode="json"))) == "None"
    assert render(ev["value_template"], b"") == "None"
    # labels from the model's package when the config names none
    cfg2 = ha_config(postprocess={"type": "detection", "ignore": ["_silence"]})
    confs2 = discovery_configs(cfg2, topics, "kws", "0", "x", labels=["_silence", "yes", "no"])
    ev2 = next(c for _, c in confs2 if isinstance(c, HaEventConfig))
    assert ev2.event_types == ["yes", "no"]


def test_prediction_attributes_hold_nothing_volatile() -> None:
    """Each change of attributes is a recorder row: two predictions that differ in every
    volatile field (seq, latency, scores, stream, ts) give the same attributes."""
    cfg = ha_config(postprocess=CASES["classification"][0])
    confs = dict(discovery_configs(cfg, Topics("edge", "pi.kitchen-1"), "demo", "0.1.0", "x"))
    sensor = next(c for t, c in confs.items() if t.endswith("demo_prediction/config"))
    assert isinstance(sensor, HaSensorConfig) and sensor.json_attributes_template
    a = prediction(outputs_of(*CASES["classification"]), seq=1)
    b = prediction(outputs_of(CASES["classification"][0], [np.array([[0.3, 0.7]], np.float32)]))
    b.update(seq=2, latency_ms=9.5, stream="other", ts=a["ts"] + 1)
    attrs = [json.loads(render(sensor.json_attributes_template, p)) for p in (a, b)]
    assert attrs[0] == attrs[1] == {"model_version": "1.2.0"}
    # and the state itself only changes with the label
    assert render(sensor.value_template, a) == render(sensor.value_template, b) == "anomaly"
    below = prediction({"label": None, "score": 0.4, "top": []})
    assert render(sensor.value_template, below) == "None"  # below threshold: unknown


def _update(cfg: Any) -> HaUpdateConfig:
    confs = discovery_configs(cfg, Topics("edge", "pi.kitchen-1"), "demo", "0.1.0", "x")
    return next(c for _, c in confs if isinstance(c, HaUpdateConfig))


def test_update_entity_only_with_ota_and_from_the_ota_state() -> None:
    off = discovery_configs(ha_config(), Topics("edge", "d"), "demo", "0.1.0", "x")
    assert not any(isinstance(c, HaUpdateConfig) for _, c in off)
    topics = Topics("edge", "pi.kitchen-1")
    update = _update(ha_config(ota={"enabled": True, "allow_unsigned": True}))
    assert update.state_topic == topics.ota_state
    assert (update.command_topic, update.payload_install) == (topics.ota_command, "install")

    def ha(state: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(render(update.value_template, state))
        _check_object("update state", SCHEMA["update_state_json"], out)  # HA's own schema
        return out

    assert ha(ota_state("idle", "1.2.0")) == {
        "installed_version": "1.2.0",
        "latest_version": "1.2.0",
        "in_progress": False,
        "update_percentage": None,
        "release_summary": "",
    }
    dl = ha(ota_state("downloading", progress={"bytes": 512, "total": 2048}))
    assert (dl["installed_version"], dl["latest_version"]) == ("1.2.0", "1.3.0")
    assert dl["in_progress"] is True and dl["update_percentage"] == 25
    for phase in ("verifying", "staged"):
        got = ha(ota_state(phase))
        assert got["in_progress"] is True and got["update_percentage"] is None
        assert got["latest_version"] == "1.3.0"
    # after a swap: installed is the running version at once (no false "update available")
    swapped = ha(ota_state("active", running="1.3.0", health="watching"))
    assert swapped["installed_version"] == swapped["latest_version"] == "1.3.0"
    assert swapped["in_progress"] is False
    # a download that failed can be installed again; a build marked bad cannot
    retry = ha(ota_state("failed", reason="download_timeout", detail="slow"))
    assert retry["latest_version"] == "1.3.0" and retry["installed_version"] == "1.2.0"
    assert "download_timeout" in retry["release_summary"]
    for reason in sorted(MARKED_BAD_REASONS):
        assert ha(ota_state("failed", reason=reason))["latest_version"] == "1.2.0"
    assert ha(ota_state("rolled_back", reason="error_rate"))["latest_version"] == "1.2.0"
    # an empty retained payload renders nothing: HA ignores it
    assert render(update.value_template, b"") == ""


def test_metric_sensors_no_made_up_zero_before_the_first_prediction() -> None:
    cfg = ha_config()
    confs = discovery_configs(cfg, Topics("edge", "pi.kitchen-1"), "demo", "0.1.0", "x")
    sensors = {t.split("/")[3]: c for t, c in confs if isinstance(c, HaSensorConfig)}
    fresh = MetricsV1.model_validate(
        {
            **json.loads(snapshot(filled_metrics()).model_dump_json()),
            "predictions_out": 0,
            "latency_ms": {},
            "rates": {"samples_per_s": 0.0, "predictions_per_s": 0.0},
            "queue": {"depth": 0, "dropped": 0},
        }
    )
    payload = fresh.model_dump_json()
    assert render(sensors["invoke_p95"].value_template, payload) == "None"
    assert render(sensors["prediction_rate"].value_template, payload) == "None"
    assert render(sensors["queue_depth"].value_template, payload) == "0"  # a real 0
    busy = snapshot(filled_metrics()).model_dump_json()
    assert number(render(sensors["invoke_p95"].value_template, busy)) > 0
    assert number(render(sensors["prediction_rate"].value_template, busy)) >= 0
    assert render(sensors["queue_depth"].value_template, busy) == "12"
    assert number(render(sensors["memory"].value_template, busy)) == 41_000_000


def test_metric_sensors_follow_the_config() -> None:
    topics = Topics("edge", "d")
    off = parse_config({"metrics": {"interval_s": 0}, "homeassistant": {"enabled": True}})
    kinds = sorted(type(c).__name__ for _, c in discovery_configs(off, topics, "demo", "0", "x"))
    assert kinds == ["HaButtonConfig", "HaSensorConfig"]  # prediction + restart
    on = parse_config({"homeassistant": {"enabled": True, "discovery_prefix": "ha"}})
    with_temp = discovery_configs(on, topics, "demo", "0.1.0", "x", cpu_temp=True)
    without = discovery_configs(on, topics, "demo", "0.1.0", "x", cpu_temp=False)
    assert len(with_temp) == len(without) + 1
    assert all(t.startswith("ha/") for t, _ in with_temp)
    assert {type(c) for _, c in with_temp} <= set(COMPONENTS)


def test_ids_and_board(tmp_path: Path) -> None:
    assert safe_id("pi.kitchen-1") == "pi_kitchen-1"
    assert node_filter("homeassistant", "pi.kitchen-1") == "homeassistant/+/pi_kitchen-1/+/config"
    model = tmp_path / "model"
    model.write_bytes(b"Raspberry Pi 4 Model B Rev 1.4\0")
    assert board_model([tmp_path / "missing", model]) == "Raspberry Pi 4 Model B Rev 1.4"
    assert board_model([tmp_path / "missing"]) == "edge-agent"


def test_fake_link_and_process_shapes() -> None:
    assert FakeLink().connected and FakeProcess().rss_bytes()


class _Link:
    """The discovery's link seam: records publishes and subscriptions; ``up`` = connected."""

    def __init__(self) -> None:
        self.sent: list[OutgoingMessage] = []
        self.subs: dict[str, Any] = {}
        self.listeners: list[Any] = []
        self.up = True

    def publish(self, msg: OutgoingMessage, on_ack: Any = None) -> bool:
        if self.up:
            self.sent.append(msg)
        return self.up

    def add_connect_listener(self, fn: Any) -> None:
        self.listeners.append(fn)

    def subscribe(self, topic_filter: str, qos: int, handler: Any) -> None:
        self.subs[topic_filter] = handler


def test_stale_configs_are_removed_and_restart_is_taken() -> None:
    link = _Link()
    restarts: list[int] = []
    current = [OutgoingMessage("ha/sensor/n/a/config", b"{}", 1, True)]
    d = HomeAssistantDiscovery(
        link,
        lambda: current,
        "ha",
        node_topics="ha/+/n/+/config",
        command_topic="edge/n/set",
        on_restart=lambda: restarts.append(1),
    )
    d.start()
    assert set(link.subs) == {"ha/status", "ha/+/n/+/config", "edge/n/set"}
    on_config = link.subs["ha/+/n/+/config"]
    # retained configs arrive with the SUBACKs, before the link counts as connected: the
    # removal waits for the connect
    link.up = False
    on_config("ha/update/n/demo_model/config", b"{...}")
    on_config("ha/sensor/n/a/config", b"{}")  # one we publish: kept
    assert link.sent == [] and d.removed == []
    link.up = True
    link.listeners[0]()  # the connect: configs published, then the stale one removed
    assert [(m.topic, m.payload, m.retain) for m in link.sent] == [
        ("ha/sensor/n/a/config", b"{}", True),
        ("ha/update/n/demo_model/config", b"", True),
    ]
    assert d.removed == ["ha/update/n/demo_model/config"] and d.published == 1
    on_config("ha/update/n/demo_model/config", b"")  # our removal echoed back: nothing
    on_config("ha/button/n/old/config", b"{}")  # while connected: removed at once
    assert link.sent[-1].topic == "ha/button/n/old/config" and link.sent[-1].payload == b""
    assert len(link.sent) == 3
    link.subs["edge/n/set"]("edge/n/set", b"something")
    assert restarts == []
    link.subs["edge/n/set"]("edge/n/set", b"restart")
    assert restarts == [1]
    d.stop()
    link.subs["edge/n/set"]("edge/n/set", b"restart")
    assert restarts == [1]


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
    # a config from an earlier run with OTA on: the agent must remove it
    stale = "homeassistant/update/ha-dev/demo_model/config"
    publish(broker.host, broker.port, stale, b'{"name": "old"}', retain=True)

    def ready(ms: list[Received]) -> bool:
        configs = {m.topic for m in ms if m.topic.startswith("homeassistant/") and m.payload}
        return (
            len(configs - {stale}) >= 6
            and any(m.topic == stale and not m.payload for m in ms)
            and any(m.topic.endswith("/prediction/demo") for m in ms)
            and any(m.topic.endswith("/metrics") and "invoke" in m.json()["latency_ms"] for m in ms)
        )

    with (
        Collector(broker.host, broker.port, topics) as live,
        AgentProcess(conf, tmp_path / "agent.log") as agent,
    ):
        live.wait_for(ready, timeout=30)
        configs = {
            m.topic: m.payload
            for m in live.messages
            if m.topic.startswith("homeassistant/") and m.payload
        }
        configs.pop(stale)
        # Retained: a subscriber arriving later (Home Assistant starting) gets them all, and
        # not the removed one.
        with Collector(broker.host, broker.port, ["homeassistant/#", "edge/ha-dev/status"]) as late:
            late.wait_for(lambda ms: len(ms) >= len(configs) + 1, timeout=10)
            assert all(m.retain for m in late.messages)
            assert {m.topic: m.payload for m in late.on("/config")} == configs
            assert late.on("/status")[-1].payload == b"online"
        # Home Assistant's birth message: everything is published again.
        before = len([m for m in live.messages if m.topic.endswith("/config") and m.payload])
        publish(broker.host, broker.port, "homeassistant/status", b"online")
        live.wait_for(
            lambda ms: (
                len([m for m in ms if m.topic.endswith("/config") and m.payload])
                >= before + len(configs)
            ),
            timeout=10,
        )
        # the restart button: the agent rebuilds (a new connection publishes them again)
        before = len([m for m in live.messages if m.topic.endswith("/config") and m.payload])
        button = next(json.loads(p) for t, p in configs.items() if "/button/" in t)
        publish(broker.host, broker.port, button["command_topic"], button["payload_press"])
        live.wait_for(
            lambda ms: (
                len([m for m in ms if m.topic.endswith("/config") and m.payload])
                >= before + len(configs)
            ),
            timeout=30,
        )
        assert agent.alive()
    assert "restart requested" in agent.output()
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
        if c.get("state_topic") in by_topic:
            assert render(c["value_template"], by_topic[c["state_topic"]]) not in {"", "None"}
    assert components == {"sensor", "button"}  # no update entity: OTA is off
    # one metrics snapshot per connect, not two: the first two reports are an interval apart
    reports = [m for m in live.messages if m.topic.endswith("/metrics")]
    assert reports[1].json()["ts"] - reports[0].json()["ts"] >= 0.25
    # after the agent stopped, its entities show unavailable: the retained status says so
    with Collector(broker.host, broker.port, ["edge/ha-dev/status"]) as after:
        after.wait_for(lambda ms: bool(ms), timeout=10)
        assert after.messages[-1].payload == b"offline"


def test_drift_entities_only_for_a_monitored_model() -> None:
    """A drift-monitored model (its package carries a reference) gets a problem binary sensor
    on the retained drift alert and a diagnostic drift score; other models get neither."""
    from agent.wire.fieldcheck import DriftAlertV1, DriftScoreV1, DriftV1
    from agent.wire.predictions import ModelRef

    cfg = ha_config()
    topics = Topics("edge", "pi.kitchen-1")
    plain = discovery_messages(cfg, topics, "demo", "0.1.0", "b", cpu_temp=False)
    assert not [m for m in plain if "drift" in m.topic]
    msgs = discovery_messages(cfg, topics, "demo", "0.1.0", "b", cpu_temp=False, drift=True)
    drift = {m.topic.split("/")[3]: m for m in msgs if "drift" in m.topic}
    assert set(drift) == {"demo_drift", "demo_drift_score"}
    alert_conf = check_ha_config(
        drift["demo_drift"].topic, drift["demo_drift"].payload, "pi.kitchen-1"
    )
    score_conf = check_ha_config(
        drift["demo_drift_score"].topic, drift["demo_drift_score"].payload, "pi.kitchen-1"
    )
    assert alert_conf["state_topic"] == topics.drift
    assert score_conf["state_topic"] == topics.metrics
    ref = ModelRef(name="demo", version="1.2.0")
    for active, want in ((True, "ON"), (False, "OFF")):
        alert = DriftAlertV1(
            device="pi.kitchen-1",
            ts=1.7e9,
            model=ref,
            active=active,
            channels=["ch1"] if active else [],
            psi={"ch0": 0.01, "ch1": 0.4 if active else 0.02},
            threshold=0.25,
            clear_below=0.1,
        )
        assert render(alert_conf["value_template"], alert.model_dump_json()) == want
    assert render(alert_conf["value_template"], b"") in {"None", ""}
    metrics = json.loads(snapshot(filled_metrics()).model_dump_json())
    assert render(score_conf["value_template"], metrics) == "None"  # no drift in it
    scores = DriftV1(
        model=ref,
        samples=4096,
        predictions=1024,
        judged=True,
        score=0.4,
        alert=True,
        threshold=0.25,
        clear_below=0.1,
        channels=[DriftScoreV1(name="ch1", psi=0.4, out_of_range=0.0)],
    )
    metrics["drift"] = scores.model_dump(mode="json")
    MetricsV1.model_validate(metrics)
    assert render(score_conf["value_template"], metrics) == "0.4"
    metrics["drift"]["judged"] = False
    assert render(score_conf["value_template"], metrics) == "None"
