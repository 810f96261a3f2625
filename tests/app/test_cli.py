"""The edge-agent command line: --version, --help, inspect, predict, demo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agent import __version__
from agent.app.demo import run_demo
from agent.model.loading import demo_model_bytes


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args], capture_output=True, text=True, check=False
    )


def test_version() -> None:
    res = cli("--version")
    assert res.returncode == 0
    assert res.stdout.strip() == f"edge-agent {__version__}"


@pytest.mark.parametrize("command", ["run", "check-config", "inspect", "predict", "demo"])
def test_every_command_has_help(command: str) -> None:
    res = cli(command, "--help")
    assert res.returncode == 0
    assert "usage: edge-agent" in res.stdout
    assert len(res.stdout.splitlines()) > 3


def test_inspect_demo_model(tmp_path: Path) -> None:
    model = tmp_path / "demo.tflite"
    model.write_bytes(demo_model_bytes())
    res = cli("inspect", str(model), "--json")
    assert res.returncode == 0, res.stderr
    d = json.loads(res.stdout)
    assert d["inputs"][0]["shape"] == [1, 32, 3]
    assert d["inputs"][0]["dtype"] == "int8"
    assert d["size"] == len(demo_model_bytes())
    table = cli("inspect", str(model))
    assert table.returncode == 0 and "int8" in table.stdout


def test_predict_one_shot(tmp_path: Path) -> None:
    model = tmp_path / "demo.tflite"
    model.write_bytes(demo_model_bytes())
    x = np.zeros((1, 32, 3), np.float32)
    np.save(tmp_path / "x.npy", x)
    res = cli("predict", str(model), "--input", str(tmp_path / "x.npy"))
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out  # JSON with the outputs


def test_predict_wrong_shape_is_a_clear_error(tmp_path: Path) -> None:
    model = tmp_path / "demo.tflite"
    model.write_bytes(demo_model_bytes())
    np.save(tmp_path / "x.npy", np.zeros((5, 2), np.float32))
    res = cli("predict", str(model), "--input", str(tmp_path / "x.npy"))
    assert res.returncode == 2
    assert "shape" in res.stderr


def test_missing_model_file_exits_2(tmp_path: Path) -> None:
    res = cli("inspect", str(tmp_path / "nope.tflite"))
    assert res.returncode == 2
    assert "cannot read model file" in res.stderr


@pytest.mark.parametrize("broker", ["mosquitto", "amqtt"])
def test_demo_shows_predictions(broker: str, capsys: pytest.CaptureFixture[str]) -> None:
    """What `./scripts/demo` runs: predictions arrive (amqtt: a machine without Mosquitto)."""
    assert run_demo(count=3, seconds=60, broker=broker) == 0
    out = capsys.readouterr().out
    assert "3 prediction(s) received" in out
    assert "seq      0  demo" in out
