"""examples/: the MPU-6050 script against a fake I2C bus and through the agent's own parser,
the Node-RED flow's wiring, topics and function (run in Node.js on real payloads), the Home
Assistant automations' topics and templates (rendered as HA renders them), and the README
links to them."""

from __future__ import annotations

import importlib.util
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import yaml
from paho.mqtt.client import topic_matches_sub

from agent.ingest.sources.parse import parse_json
from agent.wire.predictions import PredictionBatchV1, PredictionV1, prediction_dict
from agent.wire.topics import Topics
from tests.observe.test_homeassistant import render

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
TOPICS = Topics("edge", "pi-kitchen-01")


def _mpu() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mpu6050", EXAMPLES / "mpu6050" / "mpu6050.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["mpu6050"] = mod
    spec.loader.exec_module(mod)
    return mod


class FakeBus:
    """An MPU-6050's registers behind the two SMBus calls the script makes."""

    def __init__(self, who_am_i: int = 0x68) -> None:
        self.writes: list[tuple[int, int, int]] = []
        self.regs = {0x75: who_am_i}
        # ax = 1 g at +-2 g (16384), ay = -0.5 g, az = 0; temp; gx = 131 (1 dps), gy = -262, gz = 0
        raw = [16384, -8192, 0, 1000, 131, -262, 0]
        block = []
        for v in raw:
            u = v & 0xFFFF
            block += [u >> 8, u & 0xFF]
        for i, b in enumerate(block):
            self.regs[0x3B + i] = b

    def write_byte_data(self, addr: int, register: int, value: int) -> None:
        assert addr == 0x68
        self.writes.append((addr, register, value))

    def read_i2c_block_data(self, addr: int, register: int, length: int) -> list[int]:
        assert addr == 0x68
        return [self.regs[register + i] for i in range(length)]


def test_mpu6050_setup_and_scaling() -> None:
    mpu = _mpu()
    bus = FakeBus()
    sensor = mpu.Mpu6050(bus)
    assert sensor.setup(100.0) == "MPU-6050"
    regs = {r: v for _, r, v in bus.writes}
    assert regs[0x6B] == 0x01  # awake (sleep bit cleared), PLL clock
    assert regs[0x19] == 9  # 1 kHz / (1 + 9) = 100 Hz
    assert regs[0x1C] == 0x00 and regs[0x1B] == 0x00  # +-2 g, +-250 dps
    assert sensor.read() == [1.0, -0.5, 0.0, 1.0, -2.0, 0.0]
    with pytest.raises(OSError, match="WHO_AM_I = 0x12"):
        mpu.Mpu6050(FakeBus(who_am_i=0x12)).setup(100.0)


def test_mpu6050_output_is_what_the_command_source_reads() -> None:
    mpu = _mpu()
    sensor = mpu.Mpu6050(FakeBus())
    sensor.setup(200.0)
    out = io.StringIO()
    t = iter(float(1_700_000_000 + i) for i in range(100))
    n = mpu.run(
        sensor, 200.0, 6, batch=4, count=10, out=out, clock=lambda: next(t), sleep=lambda s: None
    )
    lines = out.getvalue().splitlines()
    assert n == 10 and len(lines) == 3  # 4 + 4 + 2
    blocks = [parse_json("imu", line.encode(), 6) for line in lines]  # the agent's own parser
    values = np.concatenate([b.values for b in blocks])
    stamps = np.concatenate([b.ts for b in blocks])
    assert values.shape == (10, 6)
    np.testing.assert_allclose(values[0], [1.0, -0.5, 0.0, 1.0, -2.0, 0.0])
    assert list(stamps) == [1_700_000_000 + i for i in range(10)]
    # three channels: acceleration only
    out3 = io.StringIO()
    mpu.run(sensor, 200.0, 3, batch=1, count=1, out=out3, sleep=lambda s: None)
    assert parse_json("imu", out3.getvalue().strip().encode(), 3).values.shape == (1, 3)


def test_mpu6050_main_reports_errors_and_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    mpu = _mpu()
    assert mpu.main(["--count", "2", "--batch", "1"], bus=FakeBus()) == 0
    out = capsys.readouterr()
    assert len(out.out.splitlines()) == 2 and "MPU-6050 at 0x68" in out.err
    assert mpu.main(["--count", "1"], bus=FakeBus(who_am_i=0)) == 1
    assert "no MPU-6050" in capsys.readouterr().err
    assert mpu.main(["--bus", "250", "--count", "1"]) == 1  # no /dev/i2c-250 here
    assert "/dev/i2c-250" in capsys.readouterr().err


# --------------------------------------------------------------------------- payloads


def _prediction(outputs: dict[str, Any], seq: int = 7, stream: str = "accel") -> dict[str, Any]:
    p = prediction_dict(seq, "pi-kitchen-01", "demo", "1.2.0", stream, 1.7e9, outputs, 0.05)
    PredictionV1.model_validate(p)
    return p


ANOMALY = {"label": "anomaly", "score": 0.95, "top": [{"label": "anomaly", "score": 0.95}]}
NORMAL = {"label": "normal", "score": 0.9, "top": [{"label": "normal", "score": 0.9}]}


def _batch(*preds: dict[str, Any]) -> dict[str, Any]:
    doc = {"v": 1, "device": "pi-kitchen-01", "batch": list(preds)}
    PredictionBatchV1.model_validate(doc)
    return doc


# --------------------------------------------------------------------------- Node-RED


def _flow() -> list[dict[str, Any]]:
    nodes: list[dict[str, Any]] = json.loads(
        (EXAMPLES / "node-red" / "edge-agent-flow.json").read_text(encoding="utf-8")
    )
    return nodes


def test_node_red_flow_is_wired_and_subscribes_to_the_agents_topics() -> None:
    nodes = _flow()
    ids = [n["id"] for n in nodes]
    assert len(ids) == len(set(ids))
    by_id = {n["id"]: n for n in nodes}
    tabs = {n["id"] for n in nodes if n["type"] == "tab"}
    for n in nodes:
        for out in n.get("wires", []):
            assert all(target in by_id for target in out), n["id"]
        if "z" in n:
            assert n["z"] in tabs
        if n["type"] == "mqtt in":
            assert by_id[n["broker"]]["type"] == "mqtt-broker"
    subs = {n["name"]: n["topic"] for n in nodes if n["type"] == "mqtt in"}
    assert topic_matches_sub(subs["predictions"], TOPICS.prediction("demo"))
    assert topic_matches_sub(subs["device status (retained)"], TOPICS.status)
    assert not topic_matches_sub(subs["predictions"], TOPICS.metrics)


def _run_function(code: str, msg: dict[str, Any]) -> Any:
    node = shutil.which("node") or shutil.which("nodejs")
    assert node, "Node.js runs the flow's function node (scripts/test installs nodejs)"
    script = (
        "const msg = JSON.parse(process.argv[1]);\n"
        f"const fn = new Function('msg', {json.dumps(code)});\n"
        "process.stdout.write(JSON.stringify(fn(msg) ?? null));\n"
    )
    out = subprocess.run(
        [node, "-e", script, json.dumps(msg)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(out.stdout)


def test_node_red_function_splits_predictions_and_batches() -> None:
    fn = next(n for n in _flow() if n["type"] == "function")["func"]
    topic = TOPICS.prediction("demo")
    one = _run_function(fn, {"topic": topic, "payload": _prediction(ANOMALY)})
    assert len(one) == 1 and len(one[0]) == 1
    m = one[0][0]
    assert (m["device"], m["stream"], m["label"], m["score"]) == (
        "pi-kitchen-01",
        "accel",
        "anomaly",
        0.95,
    )
    assert m["topic"] == "pi-kitchen-01/demo/accel" and m["payload"] == ANOMALY
    both = _run_function(
        fn, {"topic": topic, "payload": _batch(_prediction(NORMAL, 6), _prediction(ANOMALY, 7))}
    )
    assert [x["label"] for x in both[0]] == ["normal", "anomaly"]
    assert [x["seq"] for x in both[0]] == [6, 7]
    anomaly_out = _run_function(
        fn,
        {"topic": topic, "payload": _prediction({"anomaly": True, "score": 0.7, "threshold": 0.5})},
    )
    assert anomaly_out[0][0]["anomaly"] is True and anomaly_out[0][0]["label"] is None
    assert _run_function(fn, {"topic": topic, "payload": ""}) is None  # a cleared topic
    # the switch node's rule reads the field the function sets
    switch = next(n for n in _flow() if n["type"] == "switch")
    assert switch["property"] == "label" and switch["rules"][0]["v"] == "anomaly"


# --------------------------------------------------------------------------- Home Assistant


def _automations() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = yaml.safe_load(
        (EXAMPLES / "home-assistant" / "automations.yaml").read_text(encoding="utf-8")
    )
    return docs


def test_home_assistant_automations_read_the_agents_topics() -> None:
    autos = _automations()
    assert len({a["id"] for a in autos}) == len(autos)
    for a in autos:
        assert a["alias"] and a["triggers"] and a["actions"]
        for t in a["triggers"]:
            if t["trigger"] == "mqtt":
                assert t["topic"] in {TOPICS.prediction("demo"), TOPICS.status}, t["topic"]
    first = autos[0]
    trig = first["triggers"][0]
    cond = first["conditions"][0]["value_template"]
    message = first["actions"][0]["data"]["message"]
    for payload in (_prediction(ANOMALY), _batch(_prediction(NORMAL, 6), _prediction(ANOMALY))):
        # the trigger's value_template sees value_json; conditions and actions see trigger
        assert render(trig["value_template"], payload) == trig["payload"]
        trigger = {"payload_json": payload, "topic": trig["topic"]}
        assert _render_with(cond, trigger=trigger) == "True"
        text = _render_with(message, trigger=trigger)
        assert "accel: anomaly (95" in text and "demo 1.2.0" in text
    assert render(trig["value_template"], _prediction(NORMAL)) == "normal"  # no trigger
    low = _prediction({**ANOMALY, "score": 0.5})
    assert _render_with(cond, trigger={"payload_json": low, "topic": trig["topic"]}) == "False"


def _render_with(template: str, **variables: Any) -> str:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    return ImmutableSandboxedEnvironment().from_string(template).render(**variables).strip()


def test_readme_points_at_the_examples() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for path in (
        "examples/node-red/",
        "examples/home-assistant/",
        "examples/mpu6050/",
    ):
        assert path in readme, path
        assert (REPO / path).is_dir()
