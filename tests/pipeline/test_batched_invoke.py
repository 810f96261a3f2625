"""The pipeline with several queued windows per invoke (``model.max_invoke_batch``): the same
predictions as one invoke per window (payloads, streams, samples, order), a swap that never
mixes models in a group, and models that must not batch running one window per invoke."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from agent.config import Config, parse_config
from agent.delivery.publisher import PredictionRecord
from agent.ingest.sources import SourceContext
from agent.metrics import Metrics
from agent.model.active import ActiveModel
from agent.model.runtime import Model, load_model
from agent.pipeline.threads import Pipeline, build_stages
from agent.wire.topics import Topics
from tests import modelzoo as zoo

LENGTH, HOP = 32, 16


class Recorder:
    """Stands in for ``agent.delivery.publisher.Publisher``: keeps what the pipeline submits."""

    def __init__(self) -> None:
        self.records: list[PredictionRecord] = []
        self.lock = threading.Lock()

    def submit_many(self, records: list[PredictionRecord], *, inline: bool = False) -> None:
        with self.lock:
            self.records += records


def _config(
    tmp_path: Path, values: dict[str, np.ndarray], max_batch: int, block: int, top_k: int = 3
) -> Config:
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
                "rate": "fast",
                "block_size": block,
            }
        )
    return parse_config(
        {
            "sources": sources,
            "window": {"length": LENGTH, "hop": HOP},
            "model": {"max_invoke_batch": max_batch},
            "postprocess": {"type": "classification", "top_k": top_k, "labels": []},
        }
    )


class Counting:
    """Counts the windows each invoke of a batched interpreter was given."""

    def __init__(self, model: Model) -> None:
        self.sizes: list[int] = []
        self._run = model.run_native
        model.run_native = self  # type: ignore[method-assign]

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        self.sizes.append(int(x.shape[0]))
        return self._run(x)


def _run(
    cfg: Config, model: Model, swap_to: Model | None = None, count: bool = True
) -> tuple[Recorder, Pipeline, Counting | None]:
    """Run the pipeline to the end of its sources; with ``count``, the batched interpreter is
    enabled first (on zeros) and its invokes counted."""
    rec = Recorder()
    pipe = Pipeline(
        cfg,
        ActiveModel(model, "m", "1"),
        rec,  # type: ignore[arg-type]
        Metrics(),
        Topics(cfg.mqtt.topic_prefix, cfg.agent.device_id),
        SourceContext(Metrics()),
    )
    batch = pipe._stages.batch
    counting = None
    if count and batch is not None:
        assert batch.enable(np.zeros((batch.size, LENGTH, 3), model.feed.dtype))
        assert batch.model is not None
        counting = Counting(batch.model)
    pipe.start()
    if swap_to is not None:
        while len(rec.records) < 50:
            threading.Event().wait(0.002)
        pipe.swap_model(ActiveModel(swap_to, "m", "2"))
    assert pipe.finished.wait(60), "the sources did not finish"
    return rec, pipe, counting


def _key(r: PredictionRecord) -> tuple[Any, ...]:
    return (r.stream, r.sample, r.model_version, r.outputs)  # ts: the replay's clock


def test_batched_invokes_give_the_one_window_predictions(tmp_path: Path) -> None:
    """Two fast streams, one window per block (items of one window each, grouped across the
    queue) and many windows per block (one item cut into invokes, a padded or single tail):
    every window once, in order per stream, payloads equal to the unbatched run's."""
    content = zoo.batchable_classifier("int8").content
    rng = np.random.default_rng(11)
    values = {s: rng.normal(0, 1.5, (HOP * 300 + LENGTH, 3)).astype(np.float32) for s in "ab"}
    for block in (HOP, HOP * 45):
        runs = {}
        for max_batch in (1, 8):
            cfg = _config(tmp_path, values, max_batch, block)
            rec, pipe, counting = _run(cfg, load_model(content))
            runs[max_batch] = rec.records
            if max_batch == 1:
                assert counting is None
            else:
                assert counting is not None and max(counting.sizes) == 8, counting
                assert sum(counting.sizes) >= 300  # most windows ran batched
                assert pipe.metrics.counters_by_reason("inference_errors") == {}
        for stream in "ab":
            one = [_key(r) for r in runs[1] if r.stream == stream]
            many = [_key(r) for r in runs[8] if r.stream == stream]
            assert len(one) == 301
            assert [k[1] for k in one] == [i * HOP for i in range(301)]
            assert many == one
            ts = [r.ts for r in runs[8] if r.stream == stream]
            assert ts == sorted(ts)


def test_a_swap_never_mixes_models_in_one_invoke(tmp_path: Path) -> None:
    first = load_model(zoo.batchable_classifier("int8").content)
    second = load_model(zoo.batchable_classifier("int8", seed=8).content)
    rng = np.random.default_rng(12)
    n = 20_000  # long enough for the swap to land mid-stream, flat out
    v = rng.normal(0, 1.5, (HOP * n + LENGTH, 3)).astype(np.float32)
    cfg = _config(tmp_path, {"a": v}, 8, HOP)
    rec, _, counting = _run(cfg, first, swap_to=second)
    assert [r.sample for r in rec.records] == [i * HOP for i in range(n + 1)]
    versions = [r.model_version for r in rec.records]
    k = versions.index("2")
    assert versions == ["1"] * k + ["2"] * (n + 1 - k)  # one switch, in order
    assert counting is not None and max(counting.sizes) == 8
    # each prediction has the values its own model gives for its window, alone
    topics = Topics("edge", "dev")
    stages = {
        "1": build_stages(cfg, ActiveModel(first, "m", "1"), topics),
        "2": build_stages(cfg, ActiveModel(second, "m", "2"), topics),
    }
    for r in rec.records[k - 20 : k + 20]:
        model = first if r.model_version == "1" else second
        st = stages[r.model_version]  # each model's own input encoding
        x = np.empty((1, LENGTH, 3), model.feed.dtype)
        st.encoder(v[r.sample : r.sample + LENGTH].copy(), x[0])
        want = st.postprocessor(model.run_native(x), x, "a", r.sample)
        assert r.outputs == want, (r.sample, r.model_version)


def test_models_that_must_not_batch_run_one_window_per_invoke(tmp_path: Path) -> None:
    rng = np.random.default_rng(13)
    values = {"a": rng.normal(0, 1.5, (HOP * 300 + LENGTH, 3)).astype(np.float32)}
    topics = Topics("edge", "dev")
    ok = load_model(zoo.batchable_classifier("int8").content)
    off = _config(tmp_path, values, 1, HOP)
    assert build_stages(off, ActiveModel(ok, "m", "1"), topics).batch is None
    # batch dimension 1 declared but baked into the graph: found out at the first full
    # group, and every window still runs (one invoke each), once and in order
    fixed = load_model(zoo.tiny_classifier("int8").content)
    cfg = _config(tmp_path, values, 8, HOP * 300, top_k=1)
    rec, pipe, _ = _run(cfg, fixed, count=False)
    batch = pipe._stages.batch
    assert batch is not None and batch.unsupported is not None
    assert batch.unsupported.reason == "resize_failed"
    assert [r.sample for r in rec.records] == [i * HOP for i in range(301)]
