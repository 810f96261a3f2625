"""The pipeline in-process, with a recording publisher: every window once, in order, with the
values of a direct model call, whether its source runs windows inline or queues them, and a
model swap in the middle of the stream."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.config import Config, parse_config
from agent.delivery.publisher import PredictionRecord
from agent.ingest.preprocess import Preprocessor
from agent.ingest.sources import SourceContext
from agent.metrics import Metrics
from agent.model.active import ActiveModel
from agent.model.runtime import load_model
from agent.pipeline.threads import Pipeline
from agent.wire.topics import Topics
from tests import modelzoo as zoo

LENGTH, HOP = 32, 16


class Recorder:
    """Stands in for ``agent.delivery.publisher.Publisher``: keeps what the pipeline submits."""

    def __init__(self) -> None:
        self.records: list[PredictionRecord] = []
        self.threads: set[str] = set()
        self.by_thread: dict[str, int] = {}
        self.lock = threading.Lock()

    def submit_many(self, records: list[PredictionRecord], *, inline: bool = False) -> None:
        with self.lock:
            self.records += records
            name = threading.current_thread().name
            self.threads.add(name)
            self.by_thread[name] = self.by_thread.get(name, 0) + len(records)


def _config(tmp_path: Path, values: dict[str, np.ndarray], rates: dict[str, str]) -> Config:
    sources: list[dict[str, Any]] = []
    for name, v in values.items():
        path = tmp_path / f"{name}.npy"
        np.save(path, v)
        sources.append(
            {
                "type": "replay",
                "name": name,
                "path": str(path),
                "channels": 3,
                "rate": rates[name],
                "rate_hz": 1600.0,  # 100 windows/s: an idle source
                "block_size": HOP,
            }
        )
    return parse_config(
        {
            "sources": sources,
            "window": {"length": LENGTH, "hop": HOP},
            "preprocess": {"normalize": "standard", "mean": [0.1, 0, -0.2], "std": [1, 2, 0.5]},
            "postprocess": {"type": "raw"},
        }
    )


def _expected(model: Any, cfg: Config, values: np.ndarray) -> list[np.ndarray]:
    pre = Preprocessor(cfg.preprocess, 3)
    n = (len(values) - LENGTH) // HOP + 1
    return [model.run1(pre(values[i * HOP : i * HOP + LENGTH].copy())[None])[0] for i in range(n)]


def _run(cfg: Config, model: Any, swap_to: Any | None = None) -> tuple[Recorder, Pipeline]:
    metrics = Metrics()
    rec = Recorder()
    topics = Topics(cfg.mqtt.topic_prefix, cfg.agent.device_id)
    pipe = Pipeline(
        cfg,
        ActiveModel(model, "m", "1"),
        rec,  # type: ignore[arg-type]
        metrics,
        topics,
        SourceContext(metrics),
    )
    pipe.start()
    if swap_to is not None:
        while len(rec.records) < 20:
            threading.Event().wait(0.005)
        pipe.swap_model(ActiveModel(swap_to, "m", "2"))
    assert pipe.finished.wait(60), "the sources did not finish"
    return rec, pipe


@pytest.mark.parametrize("rate", ["fixed", "fast"])
def test_every_window_once_in_order_with_direct_call_values(tmp_path: Path, rate: str) -> None:
    model = load_model(zoo.tiny_classifier("int8").content)
    rng = np.random.default_rng(5)
    values = {s: rng.normal(0, 1.5, (HOP * 60 + LENGTH, 3)).astype(np.float32) for s in "ab"}
    cfg = _config(tmp_path, values, {"a": rate, "b": rate})
    rec, _ = _run(cfg, model)
    step = zoo.quant_step(zoo.tiny_classifier("int8").content, "output_0")
    for stream, v in values.items():
        got = [r for r in rec.records if r.stream == stream]
        want = _expected(model, cfg, v)
        assert len(got) == len(want) == 61
        assert [r.ts for r in got] == sorted(r.ts for r in got)  # in order
        for r, w in zip(got, want, strict=True):
            out = np.asarray(r.outputs["tensors"]["output_0"], np.float32)
            np.testing.assert_allclose(out, w, atol=step * 1.01 + 1e-6)
    # an idle (paced) source runs its windows itself; a fast replay hands them over
    if rate == "fixed":
        assert {"source-a", "source-b"} & rec.threads
    else:
        assert "inference" in rec.threads


def test_one_slow_window_does_not_keep_an_idle_source_queueing(tmp_path: Path) -> None:
    """An idle source runs its windows inline only while its last inline run took less than
    it idles. A single slow run (here 50 ms, five windows' time: a preemption, the first
    invoke) once sent every later window through the inference thread for good, with a
    thread wake-up per window; now the source is back to inline runs within a few windows."""
    model = load_model(zoo.tiny_classifier("int8").content)
    run = model.run_native
    slowed = threading.Event()

    def slow_once(x: Any) -> Any:
        if not slowed.is_set():
            slowed.set()
            threading.Event().wait(0.05)
        return run(x)

    model.run_native = slow_once  # type: ignore[method-assign]
    v = np.random.default_rng(7).normal(0, 1, (HOP * 60 + LENGTH, 3)).astype(np.float32)
    cfg = _config(tmp_path, {"a": v}, {"a": "fixed"})
    rec, _ = _run(cfg, model)
    assert len(rec.records) == 61 and slowed.is_set()
    assert rec.by_thread.get("source-a", 0) > 61 // 2, rec.by_thread


def test_a_swap_mid_stream_drops_and_repeats_nothing(tmp_path: Path) -> None:
    first = load_model(zoo.tiny_classifier("int8").content)
    second = load_model(zoo.tiny_classifier("float32").content)
    rng = np.random.default_rng(6)
    v = rng.normal(0, 1.5, (HOP * 200 + LENGTH, 3)).astype(np.float32)
    cfg = _config(tmp_path, {"a": v}, {"a": "fixed"})
    rec, pipe = _run(cfg, first, swap_to=second)
    assert len(rec.records) == 201
    assert [r.ts for r in rec.records] == sorted({r.ts for r in rec.records})
    versions = [r.model_version for r in rec.records]
    k = versions.index("2")
    assert k >= 20 and versions == ["1"] * k + ["2"] * (201 - k)  # one switch, in order
    assert pipe.active.version == "2"
    want_second = _expected(second, cfg, v)[k:]
    got_second = [np.asarray(r.outputs["tensors"]["output_0"]) for r in rec.records[k:]]
    for g, w in zip(got_second, want_second, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-5)


def test_inference_errors_are_counted_by_their_typed_reason(tmp_path: Path) -> None:
    """The reason comes from the error, not its text: a model called "banana" whose invoke
    fails is ``invoke_failed`` (reading the message for "nan" once filed it as non_finite)."""
    model = load_model(zoo.tiny_classifier("int8").content, label="banana 1.0")

    def broken() -> None:
        raise RuntimeError("banana kernel failed")

    model._invoke = broken
    rng = np.random.default_rng(1)
    values = {"a": rng.normal(0, 1, (HOP * 4 + LENGTH, 3)).astype(np.float32)}
    cfg = _config(tmp_path, values, {"a": "fast"})
    rec, pipe = _run(cfg, model)
    assert rec.records == []
    assert pipe.metrics.counters_by_reason("inference_errors") == {"invoke_failed": 5}
