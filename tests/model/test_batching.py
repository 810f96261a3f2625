"""Several windows in one invoke (agent/model/batching.py): which models may, why the others
may not (typed reasons), and that the batched path's payloads are the one-window path's."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import ClassificationPost, RawPost, RegressionPost
from agent.errors import BatchUnsupported, InferenceError
from agent.model.batching import invoke_batch
from agent.model.postprocess import Postprocessor, build_postprocessor, postprocess_rows
from agent.model.runtime import Model, load_model
from tests import modelzoo as zoo


@dataclass(frozen=True)
class Tensor:
    """Stands in for ``agent.model.runtime.TensorInfo`` (the fields postprocessing reads)."""

    name: str
    shape: tuple[int, ...]


def _windows(model: Model, n: int, seed: int) -> np.ndarray:
    """``n`` windows for ``model``'s input: integers over an integer type's whole range,
    standard normal values for a float one."""
    rng = np.random.default_rng(seed)
    shape, dtype = (n, *model.feed.shape[1:]), np.dtype(model.feed.dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    return rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("mode", ["int8", "float32"])
def test_a_model_with_a_free_batch_dimension_runs_windows_in_one_invoke(mode: str) -> None:
    model = load_model(zoo.batchable_classifier(mode).content)
    batch = invoke_batch(model, 8)
    assert batch.model is None  # built at first use, not at load
    assert batch.enable(_windows(model, 8, 1))
    assert batch.model is not None and batch.unsupported is None
    assert batch.size == 8 and 2 <= batch.pad_from <= 8
    assert batch.model.feed.shape == (8, *model.feed.shape[1:])
    x = _windows(model, 8, 3)  # other windows than the check's
    got = batch.run(x)
    for i in range(8):
        want = model.run_native(x[i : i + 1])
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g[i : i + 1], w)


def test_the_reasons_a_model_runs_one_window_per_invoke() -> None:
    ok = load_model(zoo.batchable_classifier("int8").content)
    with pytest.raises(BatchUnsupported) as off:
        invoke_batch(ok, 1)
    assert off.value.reason == "off"
    with pytest.raises(BatchUnsupported) as stateful:
        invoke_batch(load_model(zoo.streaming_model().content), 8)
    assert stateful.value.reason == "stateful"
    with pytest.raises(BatchUnsupported) as multi:
        invoke_batch(load_model(zoo.multi_io_model("int8").content), 8)
    assert multi.value.reason == "multi_input"
    # batch dimension 1 declared, but baked into the graph (Keras batch_size=1): the runtime
    # cannot resize it, found at first use; from then on one invoke per window
    fixed = load_model(zoo.tiny_classifier("int8").content)
    batch = invoke_batch(fixed, 8)
    assert not batch.enable(_windows(fixed, 8, 1))
    assert batch.unsupported is not None and batch.unsupported.reason == "resize_failed"
    assert not batch.usable and not batch.enable(_windows(fixed, 8, 2))


def test_a_batched_interpreter_that_differs_from_single_invokes_is_refused() -> None:
    """The check compares row by row and names both values: a batched interpreter of
    another model (same shapes, other weights) must not pass for this one's."""
    model = load_model(zoo.batchable_classifier("int8").content)
    other = load_model(zoo.batchable_classifier("int8", seed=8).content)
    model.batched = other.batched  # type: ignore[method-assign]
    batch = invoke_batch(model, 4)
    assert not batch.enable(_windows(model, 4, 1))
    exc = batch.unsupported
    assert exc is not None and exc.reason == "mismatch"
    assert "batched invoke gave" in exc.detail and "a single invoke" in exc.detail


# --------------------------------------------------------------------------- postprocessing

LABELS = [f"c{i}" for i in range(40)]
# few distinct values: ties everywhere; zeros of both signs; now and then a non-finite row
VALUES = st.sampled_from([0.0, -0.0, 0.25, 0.5, 0.5, 0.75, 1.0, -1.0, 1e-7])


def _outcome(r: Any) -> Any:
    if isinstance(r, InferenceError):
        return ("error", r.reason, str(r))
    return json.dumps(r, sort_keys=True)


def _per_window(post: Postprocessor, outs: list[np.ndarray], streams: list[str]) -> list[Any]:
    res: list[Any] = []
    for j, s in enumerate(streams):
        try:
            res.append(post([o[j : j + 1] for o in outs], np.zeros(1), s, j))
        except InferenceError as exc:
            res.append(exc)
    return res


@settings(max_examples=300, deadline=None)
@given(
    data=st.data(),
    classes=st.sampled_from([2, 3, 12, 33, 40]),
    rows=st.integers(1, 9),
    threshold=st.sampled_from([0.0, 0.5, 0.9]),
    on_change=st.booleans(),
    smoothing=st.sampled_from([1, 1, 3]),
)
def test_classification_rows_equal_one_call_per_window(
    data: st.DataObject,
    classes: int,
    rows: int,
    threshold: float,
    on_change: bool,
    smoothing: int,
) -> None:
    top_k = data.draw(st.integers(1, classes))
    scores = np.array(
        data.draw(
            st.lists(
                st.lists(VALUES, min_size=classes, max_size=classes), min_size=rows, max_size=rows
            )
        ),
        np.float32,
    )
    for j in data.draw(st.lists(st.integers(0, rows - 1), max_size=2)):
        scores[j, data.draw(st.integers(0, classes - 1))] = data.draw(
            st.sampled_from([np.nan, np.inf, -np.inf])
        )
    streams = data.draw(st.lists(st.sampled_from("ab"), min_size=rows, max_size=rows))
    cfg = ClassificationPost(
        labels=LABELS[:classes],
        top_k=top_k,
        threshold=threshold,
        publish_on_change=on_change,
        smoothing=smoothing,
    )
    info = [Tensor("scores", (1, classes))]
    batched, single = build_postprocessor(cfg, info), build_postprocessor(cfg, info)
    got = postprocess_rows(batched, [scores], streams, list(range(rows)))
    want = _per_window(single, [scores], streams)
    assert [_outcome(r) for r in got] == [_outcome(r) for r in want]


@pytest.mark.parametrize(
    "cfg",
    [RegressionPost(names=["x", "y", "z"]), RegressionPost(), RawPost()],
    ids=["regression-named", "regression", "raw"],
)
def test_other_postprocessors_give_the_per_window_payloads(cfg: Any) -> None:
    rng = np.random.default_rng(2)
    outs = [rng.normal(0, 1, (5, 3)).astype(np.float32)]
    outs[0][3, 1] = np.nan
    info = [Tensor("values", (1, 3))]
    streams = list("aabab")
    got = postprocess_rows(build_postprocessor(cfg, info), outs, streams, list(range(5)))
    want = _per_window(build_postprocessor(cfg, info), outs, streams)
    assert [_outcome(r) for r in got] == [_outcome(r) for r in want]
    assert isinstance(got[3], InferenceError) and got[3].reason == "non_finite"


def test_a_model_whose_invoke_is_long_keeps_one_invoke_per_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """How many windows fit in ``MAX_INVOKE_S`` of invoke is measured; fewer than
    ``MIN_BATCH``: batching saves nothing next to the invoke, no second interpreter."""
    import agent.model.batching as batching

    model = load_model(zoo.batchable_classifier("int8").content)
    monkeypatch.setattr(batching, "MAX_INVOKE_S", 1e-9)
    batch = invoke_batch(model, 8)
    assert not batch.enable(_windows(model, 8, 1))
    assert batch.unsupported is not None and batch.unsupported.reason == "long_invoke"
    assert batch.model is None
