"""The shipped demo model (agent/model/demo/model.tflite) and the script that makes it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from agent.config import AnomalyInjection, Config, SyntheticSource
from agent.ingest.sources.synthetic import SignalGenerator
from agent.model.runtime import Model, load_model

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "agent" / "model" / "demo" / "model.tflite"


def _script() -> ModuleType:
    name = "make_demo_model"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "make_demo_model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def demo() -> Model:
    return load_model(DEMO.read_bytes(), reference_kernels=True, label=str(DEMO))


def _classify(model: Model, windows: np.ndarray) -> np.ndarray:
    return np.array([int(np.argmax(model.run1(w[None])[0])) for w in windows])


def test_tensors(demo: Model) -> None:
    assert DEMO.stat().st_size < 16_384
    (inp,) = demo.inputs
    assert (inp.shape, inp.dtype) == ((1, 32, 3), "int8") and inp.quantized
    (out,) = demo.outputs
    assert (out.shape, out.dtype) == ((1, 2), "int8") and out.quantized
    assert not demo.stateful


def test_accuracy_on_fresh_windows(demo: Model) -> None:
    script = _script()
    x, y = script.windows(600, seed=12345)
    pred = _classify(demo, x)
    assert np.mean(pred == y) >= 0.97


def _stream(cfg: SyntheticSource, n: int) -> np.ndarray:
    return SignalGenerator(cfg).next(n)


def test_the_agents_own_source(demo: Model) -> None:
    """Windows of agent.ingest.sources.synthetic with the embedded defaults (hop 16)."""
    source = Config().sources[0]
    assert isinstance(source, SyntheticSource)
    with_anomalies = source.model_copy(
        update={"anomalies": AnomalyInjection(probability=0.02, magnitude=3.0, duration_samples=20)}
    )
    clean = source.model_copy(update={"anomalies": AnomalyInjection(probability=0.0)})
    n = 32 * 400
    values = _stream(with_anomalies, n)
    # noise and anomalies draw from independent generators: the difference is the anomaly mask
    mask = np.abs(values - _stream(clean, n)).max(axis=1) > 1.0
    starts = np.arange(0, n - 32 + 1, 16)
    windows = np.stack([values[s : s + 32] for s in starts])
    overlap = np.array([mask[s : s + 32].sum() for s in starts])
    pred = _classify(demo, windows)
    assert mask.any() and (overlap >= 8).sum() > 20
    assert np.mean(pred[overlap == 0] == 0) >= 0.99  # no false alarms on normal windows
    assert np.mean(pred[overlap >= 12] == 1) >= 0.97  # clear anomalies are caught


@pytest.mark.slow
def test_script_rebuilds_a_working_model(tmp_path: Path) -> None:
    out = tmp_path / "demo.tflite"
    summary = _script().make(out, seed=7, epochs=3, n_train=1500)
    assert out.stat().st_size == summary["bytes"] < 16_384
    assert summary["accuracy"] >= 0.9
    model = load_model(out.read_bytes())
    assert model.inputs[0].shape == (1, 32, 3) and model.inputs[0].dtype == "int8"
