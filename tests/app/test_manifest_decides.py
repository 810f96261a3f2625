"""What runs is what was released (issue 11): the package decides at start-up, `check-config`
runs every start-up check, and no mismatch is silent. Real agent processes; a real Mosquitto
where the agent has to talk to one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.app.preflight import PreflightError, check, preflight
from agent.app.service import EXIT_CONFIG, exit_code
from agent.config import parse_config
from agent.errors import ModelError, RuntimeUnavailable
from agent.model import runtime as rt
from agent.model.loading import demo_model_bytes
from agent.wire.ota import OtaStateV1
from tests.agentproc import REPO, AgentProcess, write_config
from tests.broker import Broker, free_port
from tests.mqttclient import Collector, publish
from tests.packaged import write_demo_package

SYNTHETIC = {"type": "synthetic", "name": "accel", "rate_hz": 400.0, "block_size": 8}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        timeout=120,
    )


def config(tmp: Path, port: int, **tables: Any) -> Path:
    cfg: dict[str, Any] = {
        "agent": {"device_id": "dev-1", "state_dir": str(tmp / "state")},
        "sources": [SYNTHETIC],
        "mqtt": {"host": "127.0.0.1", "port": port, "reconnect_min_s": 0.1},
    }
    for k, v in tables.items():
        cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) else v
    return write_config(tmp / "agent.toml", cfg)


def run_until_exit(path: Path, tmp: Path) -> tuple[int, str]:
    with AgentProcess(path, tmp / "agent.log") as proc:
        code = proc.wait(120)
        return code, proc.output()


# --------------------------------------------------------------------------- finding 1


def test_a_config_contradicting_its_package_stops_start_up_with_exit_78(tmp_path: Path) -> None:
    pkg = write_demo_package(tmp_path)  # asks for normalize = "standard"
    path = config(tmp_path, free_port(), model={"path": str(pkg)}, preprocess={"normalize": "none"})
    code, out = run_until_exit(path, tmp_path)
    assert code == EXIT_CONFIG, out
    line = "preprocess.normalize: config says 'none', package vibration 1.4.0 says 'standard'"
    assert line in out
    res = cli("check-config", "--config", str(path))
    assert res.returncode == 2 and line in res.stderr, res.stderr


def test_check_config_prints_what_the_package_decided(tmp_path: Path) -> None:
    pkg = write_demo_package(tmp_path)
    res = cli("check-config", "--config", str(config(tmp_path, 1883, model={"path": str(pkg)})))
    assert res.returncode == 0, res.stderr
    eff = json.loads(res.stdout)
    assert eff["model"]["name"] == "vibration" and eff["model"]["version"] == "1.4.0"
    assert eff["preprocess"] == {
        "normalize": "standard",
        "mean": [1.0, 2.0, 3.0],
        "std": [2.0, 4.0, 8.0],
        "min": None,
        "max": None,
    }


# --------------------------------------------------------------------------- finding 2


@pytest.mark.slow
def test_ota_follows_the_packages_model_name(tmp_path: Path, broker: Broker) -> None:
    pkg = write_demo_package(tmp_path)
    path = config(
        tmp_path,
        broker.port,
        model={"path": str(pkg)},
        ota={"enabled": True, "allow_unsigned": True},
    )
    with (
        Collector(broker.host, broker.port, ["edge/dev-1/#"]) as col,
        AgentProcess(path, tmp_path / "agent.log") as proc,
    ):
        msgs = col.wait_for(
            lambda ms: (
                any(m.topic == "edge/dev-1/ota" for m in ms)
                and any(m.topic == "edge/dev-1/prediction/vibration" for m in ms)
            ),
            timeout=60,
        )
        state = OtaStateV1.model_validate_json(
            next(m.payload for m in msgs if m.topic == "edge/dev-1/ota")
        )
        assert (state.model, state.running) == ("vibration", "1.4.0")
        # it follows <prefix>/ota/stable/vibration: an offer there is read (and refused)
        publish(broker.host, broker.port, "edge/ota/stable/vibration", b"{}", retain=True)
        col.wait_for(
            lambda ms: any(
                m.topic == "edge/dev-1/ota"
                and (r := OtaStateV1.model_validate_json(m.payload).refusal) is not None
                and r.reason == "bad_announcement"
                for m in ms
            ),
            timeout=60,
        )
        code, _ = proc.terminate()
        assert code == 0, proc.output()


# --------------------------------------------------------------------------- finding 3


def _replay(tmp: Path, shape: tuple[int, ...]) -> dict[str, Any]:
    np.save(tmp / "rec.npy", np.zeros(shape, np.float32))
    return {"type": "replay", "name": "rec", "path": str(tmp / "rec.npy"), "rate": "fast"}


@pytest.mark.parametrize(
    ("case", "key"),
    [
        ("missing_model", "model.path"),
        ("window_does_not_fit", "model.path"),
        ("replay_wrong_shape", "sources[0].path"),
        ("missing_ca_file", "mqtt.tls.ca_file"),
        ("missing_program", "sources[0]"),
    ],
)
def test_check_config_refuses_what_run_refuses(tmp_path: Path, case: str, key: str) -> None:
    tables: dict[str, Any] = {}
    if case == "missing_model":
        tables["model"] = {"path": str(tmp_path / "nope.tflite")}
    elif case == "window_does_not_fit":
        tables["window"] = {"length": 16, "hop": 8}
    elif case == "replay_wrong_shape":
        tables["sources"] = [_replay(tmp_path, (100, 5))]
    elif case == "missing_program":
        tables["sources"] = [{"type": "command", "name": "c", "argv": ["no-such-program-x"]}]
    else:
        tables["mqtt"] = {"tls": {"enabled": True, "ca_file": str(tmp_path / "ca.pem")}}
    path = config(tmp_path, free_port(), **tables)
    res = cli("check-config", "--config", str(path))
    assert res.returncode == 2, res.stdout
    reported = [ln.strip() for ln in res.stderr.splitlines() if ln.strip().startswith(key + ":")]
    assert reported, res.stderr
    code, out = run_until_exit(path, tmp_path)
    assert code in (2, EXIT_CONFIG)
    assert reported[0] in out  # the same words


def test_a_missing_tls_file_at_run_is_exit_78_naming_the_file(tmp_path: Path) -> None:
    ca = tmp_path / "missing-ca.pem"
    path = config(tmp_path, free_port(), mqtt={"tls": {"enabled": True, "ca_file": str(ca)}})
    code, out = run_until_exit(path, tmp_path)
    assert code == EXIT_CONFIG, out
    assert f"mqtt.tls.ca_file: {ca} does not exist" in out


# --------------------------------------------------------------------------- finding 6


def test_tflite_runtime_under_numpy_2_is_a_config_error_naming_numpy_lt_2(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    installed = {**rt.available_runtimes(), "tflite-runtime": True}
    monkeypatch.setattr(rt, "available_runtimes", lambda: installed)
    problem = rt.numpy_problem("tflite-runtime", "2.1.0")
    assert problem is not None and "'numpy<2'" in problem and "2.1.0" in problem
    assert rt.numpy_problem("tflite-runtime", "1.26.4") is None
    assert rt.numpy_problem("litert", "2.1.0") is None
    cfg = parse_config({"model": {"runtime": "tflite-runtime"}})
    if int(np.__version__.split(".", maxsplit=1)[0]) >= 2:
        with pytest.raises(PreflightError) as err:
            preflight(cfg)
        assert exit_code(err.value) == EXIT_CONFIG
        assert "model.runtime" in str(err.value) and "numpy<2" in str(err.value)
        with pytest.raises(RuntimeUnavailable, match="numpy<2"):
            rt.load_model(demo_model_bytes(), runtime="tflite-runtime")


def test_a_runtime_failing_with_system_error_is_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    """What tflite-runtime 2.14 does under NumPy 2: _ARRAY_API not found -> SystemError."""

    def broken(**kw: Any) -> Any:
        raise SystemError("_ARRAY_API not found")

    fake = rt.Backend("tflite-runtime", broken, None, ())
    monkeypatch.setitem(
        rt.RUNTIMES, "tflite-runtime", rt.RuntimeEntry("tflite-runtime", "numpy", lambda: fake)
    )
    with pytest.raises(RuntimeUnavailable, match="numpy<2"):
        rt.load_model(demo_model_bytes(), runtime="tflite-runtime")
    cfg = parse_config({"model": {"runtime": "tflite-runtime"}})
    _, _, problems = check(cfg)
    assert [p.key for p in problems] == ["model.runtime"] and problems[0].config


# --------------------------------------------------------------------------- finding 7


def test_predict_on_a_package_applies_its_normalisation_and_labels(tmp_path: Path) -> None:
    pkg = write_demo_package(tmp_path)
    raw = np.random.default_rng(3).normal(2.0, 4.0, (4, 32, 3)).astype(np.float32)
    np.save(tmp_path / "raw.npy", raw)
    mean, std = np.array([1.0, 2.0, 3.0], np.float32), np.array([2.0, 4.0, 8.0], np.float32)
    np.save(tmp_path / "norm.npy", ((raw - mean) / std).astype(np.float32))
    (tmp_path / "demo.tflite").write_bytes(demo_model_bytes())
    got = cli("predict", str(pkg), "--input", str(tmp_path / "raw.npy"))
    assert got.returncode == 0, got.stderr
    want = cli("predict", str(tmp_path / "demo.tflite"), "--input", str(tmp_path / "norm.npy"))
    assert want.returncode == 0, want.stderr
    g, w = json.loads(got.stdout), json.loads(want.stdout)
    assert g["outputs"] == w["outputs"]
    assert [p["label"] for p in g["predictions"]] and all(
        p["label"] in ("normal", "anomaly") for p in g["predictions"]
    )
    assert g["package"]["name"] == "vibration"
    unnormalised = cli(
        "predict", str(tmp_path / "demo.tflite"), "--input", str(tmp_path / "raw.npy")
    )
    assert json.loads(unnormalised.stdout)["outputs"] != g["outputs"]


def test_preflight_error_is_a_model_error() -> None:
    assert issubclass(PreflightError, ModelError)
