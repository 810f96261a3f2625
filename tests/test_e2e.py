"""End to end: the agent as a subprocess, a real Mosquitto, an independent subscriber.

Checked here: predictions for a known replay file arrive with the values a direct interpreter
call gives and with consecutive sequence numbers; SIGTERM is clean and quick and leaves a
retained ``offline``; a broker outage and a ``kill -9`` of the agent lose nothing; bad input
is counted and skipped while the agent keeps running; start-up errors exit 2.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from agent.model.loading import demo_model_bytes
from agent.wire.predictions import PredictionV1
from tests.agentproc import AgentProcess, write_config
from tests.broker import Broker
from tests.mqttclient import Collector, Received, publish

WINDOW, HOP, CHANNELS = 32, 16, 3


def demo_signal(n: int, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 50.0
    cols = [np.sin(2 * np.pi * f * t + c * np.pi / 3) for c, f in enumerate([1.0, 0.5, 2.0])]
    x = np.stack(cols, axis=1) + rng.normal(0, 0.1, (n, 3))
    x[n // 2 : n // 2 + 20] += 3.0  # one anomaly
    return x.astype(np.float32)


def write_csv(path: Path, x: np.ndarray) -> Path:
    lines = ["a,b,c"] + [",".join(f"{v:.6f}" for v in row) for row in x]
    path.write_text("\n".join(lines) + "\n")
    return path


def base_config(tmp: Path, broker: Broker, **over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "agent": {"device_id": "dev-1", "state_dir": str(tmp / "state"), "log_level": "info"},
        "model": {"path": "builtin:demo", "name": "demo", "version": "1.0.0"},
        "window": {"length": WINDOW, "hop": HOP},
        "postprocess": {"type": "raw"},
        "mqtt": {
            "host": broker.host,
            "port": broker.port,
            "reconnect_min_s": 0.1,
            "reconnect_max_s": 1.0,
        },
    }
    for k, v in over.items():
        cfg[k] = v
    return cfg


def direct_outputs(windows: np.ndarray) -> list[np.ndarray]:
    """The demo model run with the interpreter directly: quantise, invoke, dequantise."""
    interp = Interpreter(model_content=demo_model_bytes())
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    out = interp.get_output_details()[0]
    s_in, z_in = inp["quantization"]
    s_out, z_out = out["quantization"]
    results = []
    for w in windows:
        q = np.clip(np.round(w / s_in + z_in), -128, 127).astype(np.int8)
        interp.set_tensor(inp["index"], q.reshape(inp["shape"]))
        interp.invoke()
        y = interp.get_tensor(out["index"]).astype(np.float32)
        results.append(((y - z_out) * s_out).reshape(-1))
    return results


def predictions(msgs: list[Received]) -> list[dict[str, Any]]:
    out = []
    for m in msgs:
        if "/prediction/" in m.topic:
            out.append(m.json())
    return out


def seqs(msgs: list[Received]) -> list[int]:
    return [int(p["seq"]) for p in predictions(msgs)]


def test_replay_predictions_match_direct_interpreter(tmp_path: Path, broker: Broker) -> None:
    x = demo_signal(WINDOW + HOP * 19)  # exactly 20 windows
    csv = write_csv(tmp_path / "samples.csv", x)
    cfg = base_config(
        tmp_path,
        broker,
        sources=[{"type": "replay", "name": "rec", "path": str(csv), "rate": "fast"}],
    )
    conf = write_config(tmp_path / "agent.toml", cfg)
    with Collector(broker.host, broker.port, ["edge/dev-1/#"]) as col:
        agent = AgentProcess(conf, tmp_path / "agent.log").start()
        try:
            msgs = col.wait_for(lambda m: len(predictions(m)) >= 20, timeout=30)
            code, took = agent.terminate()
        finally:
            if agent.alive():
                agent.kill()
        preds = predictions(msgs)
        assert [p["seq"] for p in preds] == list(range(20))
        windows = np.stack([x[i * HOP : i * HOP + WINDOW] for i in range(20)])
        expected = direct_outputs(windows)
        for p, e in zip(preds, expected, strict=True):
            PredictionV1.model_validate(p)
            assert p["model"] == {"name": "demo", "version": "1.0.0"}
            assert p["stream"] == "rec"
            (tensor,) = p["outputs"]["tensors"].values()
            np.testing.assert_allclose(np.asarray(tensor).reshape(-1), e, atol=1e-5)
        assert code == 0, agent.output()
        assert took < 5.0
        status = col.wait_for(lambda m: any(r.payload == b"offline" for r in m), 10)
        online = [r for r in status if r.topic == "edge/dev-1/status"]
        assert online[0].payload == b"online" and online[-1].payload == b"offline"


def _spool_depth(state: Path) -> int:
    db = sqlite3.connect(state / "spool.db", timeout=5)
    try:
        return int(db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])
    finally:
        db.close()


def _wait(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)  # watching another process's files: nothing to await


def check_complete_and_ordered(seq_list: list[int]) -> None:
    first_seen: list[int] = []
    seen: set[int] = set()
    for s in seq_list:
        if s not in seen:
            seen.add(s)
            first_seen.append(s)
    assert first_seen == sorted(first_seen), "sequence numbers arrived out of order"
    assert first_seen == list(range(len(first_seen))), "a sequence number is missing"


@pytest.mark.slow
def test_broker_outage_of_10s_loses_nothing(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker", persistent=True)
    broker.start()
    x = np.tile(demo_signal(800), (3, 1))  # 2400 samples at 200 Hz: 12 s, 149 windows
    csv = write_csv(tmp_path / "samples.csv", x)
    cfg = base_config(
        tmp_path,
        broker,
        sources=[
            {"type": "replay", "name": "rec", "path": str(csv), "rate": "fixed", "rate_hz": 200.0}
        ],
    )
    conf = write_config(tmp_path / "agent.toml", cfg)
    total = (len(x) - WINDOW) // HOP + 1
    agent = AgentProcess(conf, tmp_path / "agent.log")
    try:
        with Collector(broker.host, broker.port, ["edge/dev-1/#"], session="observer") as col:
            agent.start()
            col.wait_for(lambda m: len(predictions(m)) >= 10, timeout=30)
            broker.stop(graceful=True)
            outage = time.monotonic()
            _wait(lambda: time.monotonic() - outage >= 10, 15, "outage")
            broker.start()
            col.wait_connected()
            msgs = col.wait_for(lambda m: len(set(seqs(m))) >= total, timeout=60)
        check_complete_and_ordered(seqs(msgs))
        assert agent.alive()
        code, _ = agent.terminate()
        assert code == 0, agent.output()
    finally:
        if agent.alive():
            agent.kill()
        broker.stop()


def by_boot(msgs: list[Received]) -> dict[int, list[int]]:
    """The sequence numbers of each boot, first arrivals, in arrival order."""
    out: dict[int, list[int]] = {}
    seen: set[tuple[int, int]] = set()
    for p in predictions(msgs):
        key = (int(p["boot"]), int(p["seq"]))
        if key not in seen:
            seen.add(key)
            out.setdefault(key[0], []).append(key[1])
    return out


@pytest.mark.slow
@pytest.mark.parametrize("write_behind_ms", [0, None], ids=["strict", "write-behind"])
def test_kill_9_while_broker_down_then_restart_loses_nothing(
    tmp_path: Path, write_behind_ms: float | None
) -> None:
    """Strict (write_behind_ms = 0): the numbering goes on with no gap across the kill.
    Write-behind (the default): the first run's acknowledged predictions were never
    committed, so the second continues above the reserved mark (a jump, a new boot); still
    nothing lost: each boot's numbers arrive complete and in order."""
    broker = Broker(tmp_path / "broker", persistent=True)
    broker.start()
    x = demo_signal(1600)
    csv = write_csv(tmp_path / "samples.csv", x)
    state = tmp_path / "state"
    cfg = base_config(
        tmp_path,
        broker,
        sources=[
            {"type": "replay", "name": "rec", "path": str(csv), "rate": "fixed", "rate_hz": 400.0}
        ],
    )
    if write_behind_ms is not None:
        cfg["queue"] = {"write_behind_ms": write_behind_ms}
    conf = write_config(tmp_path / "agent.toml", cfg)
    per_run = (len(x) - WINDOW) // HOP + 1
    first = AgentProcess(conf, tmp_path / "agent1.log")
    second = AgentProcess(conf, tmp_path / "agent2.log")
    try:
        with Collector(broker.host, broker.port, ["edge/dev-1/#"], session="observer2") as col:
            first.start()
            col.wait_for(lambda m: len(predictions(m)) >= 5, timeout=30)
            broker.stop(graceful=True)
            # let predictions pile up in the spool while the broker is away, then kill -9
            _wait(lambda: _spool_depth(state) >= 20, 30, "spool never filled")
            first.kill()
            broker.start()
            col.wait_connected()
            second.start()
            # the second run replays the file again: its predictions continue the numbering
            msgs = col.wait_for(lambda m: len(set(seqs(m))) >= per_run + 20, timeout=60)
            _wait(lambda: _spool_depth(state) == 0, 30, "spool not drained")
            if write_behind_ms != 0:  # numbered apart from the first run: all of it

                def second_done(m: list[Received]) -> bool:
                    boots = by_boot(m)
                    return len(boots) == 2 and len(boots[max(boots)]) >= per_run

                col.wait_for(second_done, timeout=60)
            msgs = col.wait_for(lambda m: True, timeout=1)
        if write_behind_ms == 0:
            check_complete_and_ordered(seqs(msgs))
        else:
            boots = by_boot(msgs)
            assert len(boots) == 2, sorted(boots)
            b1, b2 = sorted(boots)
            assert b2 == b1 + 1
            ran = boots[b1]
            assert len(ran) >= 25, "the first run's spooled predictions were lost"
            assert ran == list(range(len(ran))), "a sequence number is missing (first run)"
            again = boots[b2]
            assert again == list(range(again[0], again[0] + per_run)), "second run incomplete"
            assert again[0] > ran[-1], f"seq reused: {again[0]} after {ran[-1]}"
        code, _ = second.terminate()
        assert code == 0, second.output()
    finally:
        for a in (first, second):
            if a.alive():
                a.kill()
        broker.stop()


@pytest.mark.slow
@pytest.mark.parametrize("end", ["kill", "term"])
def test_numbering_after_a_restart_on_a_live_broker(
    tmp_path: Path, broker: Broker, end: str
) -> None:
    """Write-behind on a healthy broker: acknowledged predictions never reach the spool
    file, so their numbers are not committed. After a kill -9 the next run numbers above
    every seq the broker saw (never a reuse); after a SIGTERM it continues with no gap."""
    x = demo_signal(1600)
    csv = write_csv(tmp_path / "samples.csv", x)
    cfg = base_config(
        tmp_path,
        broker,
        sources=[
            {"type": "replay", "name": "rec", "path": str(csv), "rate": "fixed", "rate_hz": 400.0}
        ],
    )
    conf = write_config(tmp_path / "agent.toml", cfg)
    first = AgentProcess(conf, tmp_path / "agent1.log")
    second = AgentProcess(conf, tmp_path / "agent2.log")
    try:
        with Collector(broker.host, broker.port, ["edge/dev-1/#"], session=f"obs-{end}") as col:
            first.start()
            col.wait_for(lambda m: len(predictions(m)) >= 10, timeout=30)
            if end == "kill":
                first.kill()
            else:
                code, _ = first.terminate()
                assert code == 0, first.output()
            second.start()
            msgs = col.wait_for(lambda m: len(by_boot(m)) == 2, timeout=30)
            b1 = min(by_boot(msgs))
            msgs = col.wait_for(lambda m: len(by_boot(m).get(b1 + 1, [])) >= 10, timeout=30)
            code, _ = second.terminate()
            assert code == 0, second.output()
            msgs = col.wait_for(lambda m: True, timeout=1)
        boots = by_boot(msgs)
        assert sorted(boots) == [b1, b1 + 1], sorted(boots)
        ran, again = boots[b1], boots[b1 + 1]
        assert ran == list(range(len(ran))), "a sequence number is missing (first run)"
        assert again == list(range(again[0], again[0] + len(again))), "second run has a gap"
        if end == "kill":
            assert again[0] > ran[-1], f"seq reused: {again[0]} after {ran[-1]}"
        else:
            assert again[0] == ran[-1] + 1, f"a gap after a clean stop: {ran[-1]} -> {again[0]}"
    finally:
        for a in (first, second):
            if a.alive():
                a.kill()


def test_bad_sensor_messages_are_counted_and_skipped(tmp_path: Path, broker: Broker) -> None:
    cfg = base_config(
        tmp_path,
        broker,
        sources=[{"type": "mqtt", "name": "remote", "topic": "sensors/dev-1", "channels": 3}],
        window={"length": WINDOW, "hop": WINDOW},
    )
    conf = write_config(tmp_path / "agent.toml", cfg)
    good = demo_signal(WINDOW * 2)
    with (
        Collector(broker.host, broker.port, ["edge/dev-1/#"]) as col,
        AgentProcess(conf, tmp_path / "agent.log") as agent,
    ):
        col.wait_for(lambda m: any(r.payload == b"online" for r in m), 30)
        bad: list[bytes] = [
            b"[1, 2]",  # wrong shape
            b"[1, NaN, 3]",  # not finite
            b'["a", "b", "c"]',  # non-numeric
            b"\xff\xfe\xfd",  # invalid UTF-8
            b"{not json",
            b"[" + b"1," * 40000 + b"1]",  # oversized
        ]
        for payload in bad:
            publish(broker.host, broker.port, "sensors/dev-1", payload)
        for row in good:
            publish(broker.host, broker.port, "sensors/dev-1", json.dumps(row.tolist()))
        msgs = col.wait_for(lambda m: len(predictions(m)) >= 2, timeout=30)
        assert agent.alive()
        assert [p["seq"] for p in predictions(msgs)] == [0, 1]
        code, _ = agent.terminate()
        assert code == 0
    log = agent.output()
    for reason in ("wrong_shape", "not_finite", "non_numeric", "invalid_utf8", "oversized"):
        assert reason in log, f"{reason} not reported:\n{log}"


@pytest.mark.parametrize(
    ("model", "fragment"),
    [
        ("missing.tflite", "cannot read model file"),
        ("corrupt.tflite", "model"),
    ],
)
def test_bad_model_exits_2_with_clear_error(
    tmp_path: Path, broker: Broker, model: str, fragment: str
) -> None:
    (tmp_path / "corrupt.tflite").write_bytes(b"TFL3" + b"\x00garbage" * 50)
    cfg = base_config(tmp_path, broker)
    cfg["model"] = {"path": str(tmp_path / model)}
    conf = write_config(tmp_path / "agent.toml", cfg)
    agent = AgentProcess(conf, tmp_path / "agent.log").start()
    assert agent.wait(30) == 2
    assert fragment in agent.output()


def test_model_that_does_not_fit_the_window_exits_2(tmp_path: Path, broker: Broker) -> None:
    cfg = base_config(tmp_path, broker, window={"length": 50, "hop": 10})
    conf = write_config(tmp_path / "agent.toml", cfg)
    agent = AgentProcess(conf, tmp_path / "agent.log").start()
    assert agent.wait(30) == 2
    out = agent.output()
    assert "window" in out and "32" in out, out


def test_invalid_config_exits_78_naming_keys(tmp_path: Path, broker: Broker) -> None:
    conf = tmp_path / "agent.toml"
    conf.write_text("[mqtt]\nport = -1\n[window]\nhop = 0\n")
    agent = AgentProcess(conf, tmp_path / "agent.log").start()
    assert agent.wait(30) == 78  # EX_CONFIG: systemd's RestartPreventExitStatus
    assert "mqtt.port" in agent.output() and "window.hop" in agent.output()


def test_sighup_reloads_config(tmp_path: Path, broker: Broker) -> None:
    cfg = base_config(
        tmp_path,
        broker,
        sources=[{"type": "synthetic", "name": "syn", "rate_hz": 400.0, "block_size": 8}],
    )
    conf = write_config(tmp_path / "agent.toml", cfg)
    with (
        Collector(broker.host, broker.port, ["edge/dev-1/#"]) as col,
        AgentProcess(conf, tmp_path / "agent.log") as agent,
    ):
        col.wait_for(lambda m: len(predictions(m)) >= 3, timeout=30)
        cfg["model"]["version"] = "2.0.0"
        write_config(conf, cfg)
        agent.signal(signal.SIGHUP)
        msgs = col.wait_for(
            lambda m: any(p["model"]["version"] == "2.0.0" for p in predictions(m)), timeout=30
        )
        check_complete_and_ordered(seqs(msgs))
        # an invalid config on SIGHUP is refused; the agent keeps running the old one
        conf.write_text("[mqtt]\nport = 0\n")
        agent.signal(signal.SIGHUP)
        _wait(lambda: "config not reloaded" in agent.output(), 30, "refusal not logged")
        n = len(predictions(col.messages))
        msgs = col.wait_for(lambda m: len(predictions(m)) >= n + 5, timeout=30)
        assert all(p["model"]["version"] == "2.0.0" for p in predictions(msgs)[n:])
        assert agent.alive()
        code, _ = agent.terminate()
        assert code == 0
