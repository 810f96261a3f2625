"""Drift monitoring through the real pipeline (replay source, int8 model, reference from the
calibration windows as the converters compute it): a shift in one channel raises the alert for
that channel only, within a bounded number of windows, and it clears when the data returns; a
replay of the calibration data never raises it."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.config import Config, parse_config
from agent.delivery.publisher import PredictionRecord
from agent.ingest.sources import SourceContext
from agent.metrics import Metrics
from agent.model.active import ActiveModel
from agent.model.runtime import load_model
from agent.pipeline.threads import Pipeline
from agent.release.reference import Reference, compute_reference
from agent.wire.fieldcheck import DriftAlertV1
from agent.wire.topics import Topics
from tests import modelzoo as zoo

LENGTH, HOP, CH = 32, 16, 3
WINDOW_SAMPLES = 1024
BOUND = WINDOW_SAMPLES // HOP + WINDOW_SAMPLES // 8 // HOP + 2
"""Windows from a change to the verdict: the rolling window, plus one chunk, plus slack of 2."""


class Recorder:
    def __init__(self) -> None:
        self.records: list[PredictionRecord] = []
        self.lock = threading.Lock()

    def submit_many(self, records: list[PredictionRecord], *, inline: bool = False) -> None:
        with self.lock:
            self.records += records


def _windows(values: np.ndarray) -> np.ndarray:
    n = (len(values) - LENGTH) // HOP + 1
    return np.stack([values[i * HOP : i * HOP + LENGTH] for i in range(n)])


def _config(tmp_path: Path, values: np.ndarray, post: dict[str, Any]) -> Config:
    path = tmp_path / "replay.npy"
    np.save(path, values)
    return parse_config(
        {
            "sources": [
                {
                    "type": "replay",
                    "name": "s",
                    "path": str(path),
                    "channels": CH,
                    "rate": "fast",
                    "block_size": HOP,
                }
            ],
            "window": {"length": LENGTH, "hop": HOP},
            "preprocess": {"normalize": "standard", "mean": [1.0, -2.0, 0.5], "std": [2, 1, 0.5]},
            "postprocess": post,
            "drift": {"window_samples": WINDOW_SAMPLES, "chunks": 8},
        }
    )


def _normalised(values: np.ndarray) -> np.ndarray:
    out: np.ndarray = (values - np.array([1.0, -2.0, 0.5])) / np.array([2, 1, 0.5])
    return out


def _signal(rng: np.random.Generator, n: int) -> np.ndarray:
    raw = rng.normal(0, 1, (n, CH)) * np.array([2, 1, 0.5]) + np.array([1.0, -2.0, 0.5])
    out: np.ndarray = raw.astype(np.float32)
    return out


def _reference(model: Any, calibration: np.ndarray, kind: str | None) -> Reference:
    x = _normalised(_windows(calibration)).astype(np.float32)
    outs = None
    if kind is not None:
        outs = np.stack([model.run([x[i : i + 1]])[0] for i in range(len(x))])
    return compute_reference(x, CH, outputs=outs, output_kind=kind, source="calibration.npy")  # type: ignore[arg-type]


def _run(
    cfg: Config, model: Any, ref: Reference
) -> tuple[list[tuple[int, DriftAlertV1]], Pipeline]:
    metrics = Metrics()
    pipe = Pipeline(
        cfg,
        ActiveModel(model, "m", "1", reference=ref),
        Recorder(),  # type: ignore[arg-type]
        metrics,
        Topics("edge", "dev"),
        SourceContext(metrics),
    )
    alerts: list[tuple[int, DriftAlertV1]] = []
    monitor = pipe.drift
    assert monitor is not None

    def seen(a: DriftAlertV1) -> None:
        alerts.append((monitor.windows_seen, a))

    pipe.on_drift = seen
    pipe.start()
    assert pipe.finished.wait(120), "the replay did not finish"
    return alerts, pipe


@pytest.fixture(scope="module", params=["one-per-invoke", "batched"])
def model(request: pytest.FixtureRequest) -> Any:
    """The fixed-batch tiny model runs one window per invoke; the batchable one runs the
    replay's queued windows several per invoke (drift then sees each window's own rows)."""
    if request.param == "batched":
        return load_model(zoo.batchable_classifier("int8", classes=2).content)
    return load_model(zoo.tiny_classifier("int8").content)


def test_calibration_replay_never_raises(tmp_path: Path, model: Any) -> None:
    calibration = _signal(np.random.default_rng(1), 40_000)
    ref = _reference(model, calibration, "classes")
    cfg = _config(tmp_path, calibration, {"type": "classification"})
    alerts, pipe = _run(cfg, model, ref)
    assert alerts == []
    assert pipe.drift is not None
    snap = pipe.drift.snapshot()
    assert snap.judged and not snap.alert
    assert [c.name for c in snap.channels] == ["ch0", "ch1", "ch2", "output"]
    assert snap.score < 0.05, snap  # the same distribution: far below the 0.25 threshold
    for c in snap.channels[:CH]:  # the rolling mean/std are the normalised ones: ~0 and ~1
        assert c.mean is not None and abs(c.mean) < 0.2, c
        assert c.std is not None and abs(c.std - 1.0) < 0.15, c


def test_a_shift_in_one_channel_raises_for_it_only_and_clears(tmp_path: Path, model: Any) -> None:
    rng = np.random.default_rng(2)
    calibration = _signal(rng, 40_000)
    ref = _reference(model, calibration, None)  # raw output: inputs only
    part = 16_000  # samples per phase: normal, channel 1 shifted, normal again
    shifted = _signal(rng, part)
    shifted[:, 1] += 1.5  # 1.5 std of channel 1
    values = np.concatenate([_signal(rng, part), shifted, _signal(rng, part)])
    cfg = _config(tmp_path, values, {"type": "raw"})
    alerts, _ = _run(cfg, model, ref)
    assert [a.active for _, a in alerts] == [True, False], alerts
    (raised_at, raised), (cleared_at, cleared) = alerts
    assert raised.channels == ["ch1"], raised
    assert raised.psi["ch1"] >= 0.25 and raised.psi["ch0"] < 0.1 and raised.psi["ch2"] < 0.1
    shift_window, back_window = part // HOP, 2 * part // HOP
    assert shift_window < raised_at <= shift_window + BOUND, (raised_at, shift_window)
    assert back_window < cleared_at <= back_window + BOUND, (cleared_at, back_window)
    assert cleared.channels == [] and all(v < 0.1 for v in cleared.psi.values())
