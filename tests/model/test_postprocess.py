"""Postprocessing: payload shapes, startup checks and their messages, per-stream state."""

from __future__ import annotations

import json
import typing
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import (
    AnomalyPost,
    ClassificationPost,
    PostprocessConfig,
    RawPost,
    RegressionPost,
)
from agent.errors import InferenceError, ShapeMismatch
from agent.model.postprocess import REGISTRY, Postprocessor, build_postprocessor, r6


@dataclass(frozen=True)
class Tensor:
    """Stands in for ``agent.model.runtime.TensorInfo`` (same fields)."""

    name: str
    shape: tuple[int, ...]
    index: int = 0
    dtype: str = "int8"
    scale: float = 1 / 256
    zero_point: int = -128


PROBS = Tensor("probs", (1, 3))
NO_WINDOW = np.zeros((1, 4, 3), np.float32)


def out(*values: float) -> list[np.ndarray]:
    return [np.array([values], np.float32)]


def call(post: Postprocessor, outputs: list[np.ndarray], stream: str = "s") -> Any:
    payload = post(outputs, NO_WINDOW, stream)
    json.dumps(payload, allow_nan=False)  # always valid JSON
    return payload


def cls(**kw: Any) -> Postprocessor:
    return build_postprocessor(ClassificationPost(labels=["idle", "walk", "run"], **kw), [PROBS])


def test_registry_covers_every_config_type() -> None:
    union = typing.get_args(typing.get_args(PostprocessConfig)[0])
    types = {typing.get_args(c.model_fields["type"].annotation)[0] for c in union}
    assert set(REGISTRY) == types


# --------------------------------------------------------------------------- classification


def test_classification_payload() -> None:
    payload = call(cls(), out(0.1, 0.80078125, 0.09921875))
    assert payload == {
        "label": "walk",
        "score": 0.800781,
        "top": [{"label": "walk", "score": 0.800781}],
    }


def test_top_k_is_ordered_by_score_and_ties_keep_output_order() -> None:
    post = cls(top_k=3)
    assert [t["label"] for t in call(post, out(0.2, 0.5, 0.3))["top"]] == ["walk", "run", "idle"]
    assert [t["label"] for t in call(post, out(0.4, 0.2, 0.4))["top"]] == ["idle", "run", "walk"]
    assert call(cls(top_k=1), out(0.4, 0.2, 0.4))["label"] == "idle"


def test_threshold_nulls_the_label_but_keeps_the_scores() -> None:
    post = cls(threshold=0.6, top_k=2)
    low = call(post, out(0.3, 0.55, 0.15))
    assert low["label"] is None and low["score"] == 0.55
    assert low["top"] == [{"label": "walk", "score": 0.55}, {"label": "idle", "score": 0.3}]
    assert call(post, out(0.0, 0.25, 0.75))["label"] == "run"
    assert call(cls(threshold=0.5), out(0.25, 0.5, 0.25))["label"] == "walk"  # at: not below


def test_labels_default_to_indices_then_manifest_then_config() -> None:
    p = build_postprocessor(ClassificationPost(), [PROBS])
    assert call(p, out(0.0, 0.0, 1.0))["label"] == "2"
    p = build_postprocessor(ClassificationPost(), [PROBS], ["a", "b", "c"])
    assert call(p, out(0.0, 0.0, 1.0))["label"] == "c"
    p = build_postprocessor(ClassificationPost(labels=["x", "y", "z"]), [PROBS], ["a", "b", "c"])
    assert call(p, out(0.0, 0.0, 1.0))["label"] == "z"


def test_named_output_is_used() -> None:
    outputs = [Tensor("features", (1, 8)), Tensor("probs", (1, 2))]
    p = build_postprocessor(ClassificationPost(output="probs", labels=["off", "on"]), outputs)
    payload = call(p, [np.zeros((1, 8), np.float32), np.array([[0.25, 0.75]], np.float32)])
    assert payload["label"] == "on"


@settings(max_examples=50, deadline=None)
@given(
    st.integers(1, 6),
    st.lists(st.lists(st.floats(0, 1, width=32), min_size=3, max_size=3), min_size=1, max_size=20),
)
def test_smoothing_is_the_mean_of_the_last_n_windows(n: int, rows: list[list[float]]) -> None:
    post = cls(smoothing=n, top_k=3)
    history: list[np.ndarray] = []
    for row in rows:
        history.append(np.array(row, np.float32).astype(np.float64))
        payload = call(post, out(*row))
        mean = np.mean(history[-n:], axis=0)
        got = {t["label"]: t["score"] for t in payload["top"]}
        for label, want in zip(["idle", "walk", "run"], mean, strict=True):
            assert got[label] == pytest.approx(want, rel=1e-5, abs=1e-9)
        assert payload["score"] == pytest.approx(mean.max(), rel=1e-5, abs=1e-9)


def test_smoothing_and_change_detection_are_per_stream() -> None:
    post = cls(smoothing=2, publish_on_change=True)
    assert call(post, out(1.0, 0.0, 0.0), "a")["label"] == "idle"
    assert call(post, out(0.0, 0.0, 1.0), "b")["label"] == "run"  # b's history is its own
    assert call(post, out(0.0, 0.0, 1.0), "b") is None  # run again on b: unchanged
    # a: mean of (1,0,0) and (0,0.9,0.1) -> idle 0.5 still on top: unchanged, not published
    assert call(post, out(0.0, 0.9, 0.1), "a") is None
    assert call(post, out(0.0, 1.0, 0.0), "a")["label"] == "walk"
    post.reset()
    assert call(post, out(0.0, 1.0, 0.0), "a")["label"] == "walk"  # forgotten: first again


def test_publish_on_change_publishes_the_first_window_then_only_changes() -> None:
    post = cls(publish_on_change=True, threshold=0.5)
    labels = []
    for row in [(0.9, 0.1, 0), (0.8, 0.2, 0), (0.4, 0.3, 0.3), (0.3, 0.3, 0.4), (0.1, 0.9, 0)]:
        p = call(post, out(*row))
        labels.append("-" if p is None else p["label"])
    assert labels == ["idle", "-", None, "-", "walk"]  # below threshold (None) is a change too


def test_without_publish_on_change_every_window_publishes() -> None:
    post = cls()
    assert all(call(post, out(0.9, 0.1, 0)) is not None for _ in range(3))


def test_stream_state_is_capped_oldest_first() -> None:
    post = build_postprocessor(
        ClassificationPost(labels=["a", "b", "c"], publish_on_change=True), [PROBS], max_streams=2
    )
    for s in ("s1", "s2", "s3"):  # s3 evicts s1
        assert call(post, out(1, 0, 0), s) is not None
    assert call(post, out(1, 0, 0), "s3") is None
    assert call(post, out(1, 0, 0), "s1") is not None  # forgotten: published as new


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_scores_raise_and_leave_the_smoothing_intact(bad: float) -> None:
    post = cls(smoothing=2, top_k=3)
    call(post, out(0.2, 0.6, 0.2))
    with pytest.raises(InferenceError, match=r"non-finite output 'probs' \(NaN or Inf\)"):
        post(out(0.1, bad, 0.1), NO_WINDOW, "s")
    payload = call(post, out(0.2, 0.6, 0.2))
    assert payload["score"] == 0.6


def test_classification_mismatch_messages() -> None:
    with pytest.raises(ShapeMismatch) as exc:
        build_postprocessor(ClassificationPost(labels=["a", "b"]), [PROBS])
    assert str(exc.value) == (
        "postprocess.labels has 2 label(s) but model output 'probs' (1, 3) has 3 class(es): "
        "set postprocess.labels to 3 class names in output order "
        "(or leave it empty to use '0', '1', ...)"
    )
    with pytest.raises(ShapeMismatch) as exc:
        build_postprocessor(ClassificationPost(), [PROBS], ["a", "b", "c", "d"])
    assert str(exc.value) == (
        "the model package's labels has 4 label(s) but model output 'probs' (1, 3) has "
        "3 class(es): set postprocess.labels to 3 class names in output order"
    )
    with pytest.raises(ShapeMismatch, match=r"postprocess.top_k = 4 but model output 'probs'"):
        build_postprocessor(ClassificationPost(top_k=4), [PROBS])
    with pytest.raises(ShapeMismatch, match="repeated labels"):
        build_postprocessor(ClassificationPost(labels=["a", "a", "b"]), [PROBS])
    with pytest.raises(ShapeMismatch) as exc:
        build_postprocessor(ClassificationPost(output="logits"), [PROBS, Tensor("emb", (1, 16))])
    assert str(exc.value) == (
        "postprocess.output = 'logits': the model has no output of that name; "
        "its outputs are 'probs' (1, 3), 'emb' (1, 16)"
    )
    with pytest.raises(ShapeMismatch, match="the model has no outputs"):
        build_postprocessor(ClassificationPost(), [])
    with pytest.raises(ShapeMismatch, match=r"model output 'probs' has a dynamic shape \(1, -1\)"):
        build_postprocessor(ClassificationPost(), [Tensor("probs", (1, -1))])


def test_dynamic_batch_counts_as_one() -> None:
    p = build_postprocessor(ClassificationPost(labels=["a", "b"]), [Tensor("p", (-1, 2))])
    assert call(p, [np.array([[0.0, 1.0]], np.float32)])["label"] == "b"


# --------------------------------------------------------------------------- regression


def test_regression_named_and_unnamed() -> None:
    t = Tensor("y", (1, 2))
    named = build_postprocessor(RegressionPost(names=["temp", "rpm"]), [t])
    unnamed = build_postprocessor(RegressionPost(), [t])
    y = [np.array([[21.123456789, 1500.0]], np.float32)]
    assert call(named, y) == {"values": {"temp": 21.1235, "rpm": 1500.0}}
    assert call(unnamed, y) == {"values": [21.1235, 1500.0]}


def test_regression_mismatch_and_non_finite() -> None:
    with pytest.raises(ShapeMismatch) as exc:
        build_postprocessor(RegressionPost(names=["a"]), [Tensor("y", (1, 2))])
    assert str(exc.value) == (
        "postprocess.names has 1 name(s) but model output 'y' (1, 2) has 2 value(s): "
        "give 2 names, or none for a list"
    )
    with pytest.raises(ShapeMismatch, match="repeated names"):
        build_postprocessor(RegressionPost(names=["a", "a"]), [Tensor("y", (1, 2))])
    post = build_postprocessor(RegressionPost(), [Tensor("y", (1, 2))])
    with pytest.raises(InferenceError, match="non-finite output 'y'"):
        post([np.array([[1.0, np.nan]], np.float32)], NO_WINDOW, "s")


# --------------------------------------------------------------------------- anomaly


def test_anomaly_value_score() -> None:
    post = build_postprocessor(AnomalyPost(threshold=0.5), [Tensor("score", (1, 1))])
    assert call(post, [np.array([[0.75]], np.float32)]) == {
        "anomaly": True,
        "score": 0.75,
        "threshold": 0.5,
    }
    assert call(post, [np.array([[0.5]], np.float32)])["anomaly"] is False  # above, not at
    with pytest.raises(InferenceError, match="non-finite output 'score'"):
        post([np.array([[np.inf]], np.float32)], NO_WINDOW, "s")


def test_anomaly_mse_compares_output_and_input() -> None:
    recon = Tensor("recon", (1, 4, 3))
    post = build_postprocessor(AnomalyPost(threshold=0.1, score="mse"), [recon], input_size=12)
    window = np.zeros((1, 4, 3), np.float32)
    same = call_window(post, [window.copy()], window)
    assert same == {"anomaly": False, "score": 0.0, "threshold": 0.1}
    shifted = window + np.float32(0.5)
    assert call_window(post, [shifted], window) == {
        "anomaly": True,
        "score": 0.25,
        "threshold": 0.1,
    }
    huge = np.full((1, 4, 3), 3e38, np.float32)  # squared in float64: no overflow
    assert call_window(post, [huge], -huge)["score"] == pytest.approx(3.6e77, rel=1e-5)
    with pytest.raises(InferenceError, match="non-finite output 'recon'"):
        post([np.full((1, 4, 3), np.inf, np.float32)], window, "s")
    with pytest.raises(InferenceError, match="non-finite output 'recon'"):
        post([window], np.full((1, 4, 3), np.nan, np.float32), "s")


def call_window(post: Postprocessor, outputs: list[np.ndarray], window: np.ndarray) -> Any:
    payload = post(outputs, window, "s")
    json.dumps(payload, allow_nan=False)
    return payload


def test_anomaly_mismatch_messages() -> None:
    with pytest.raises(ShapeMismatch) as exc:
        build_postprocessor(AnomalyPost(threshold=1), [Tensor("recon", (1, 96))])
    assert str(exc.value) == (
        "postprocess.score = 'value' needs a single-value output, but model output 'recon' "
        "(1, 96) has 96 values; for an autoencoder set postprocess.score = 'mse', or pick "
        "the score with postprocess.output (outputs: 'recon' (1, 96))"
    )
    with pytest.raises(ShapeMismatch) as exc:
        build_postprocessor(
            AnomalyPost(threshold=1, score="mse"), [Tensor("recon", (1, 90))], input_size=96
        )
    assert str(exc.value) == (
        "postprocess.score = 'mse' compares the output with the model input, but model output "
        "'recon' (1, 90) has 90 values and the input 96 (window.length x channels)"
    )
    with pytest.raises(ValueError, match="input_size is needed"):
        build_postprocessor(AnomalyPost(threshold=1, score="mse"), [Tensor("recon", (1, 96))])
    with pytest.raises(ShapeMismatch, match=r"postprocess\.output = 'score'"):
        build_postprocessor(AnomalyPost(threshold=1, output="score"), [Tensor("recon", (1, 1))])


# --------------------------------------------------------------------------- raw


def test_raw_gives_every_tensor_in_its_shape() -> None:
    infos = [Tensor("a", (1, 2)), Tensor("b", (2, 2)), Tensor("a", (1,))]
    post = build_postprocessor(RawPost(), infos)
    outputs = [
        np.array([[0.1, 0.99609375]], np.float32),
        np.array([[1, 2], [3, 4]], np.float32),
        np.array([7], np.float32),
    ]
    assert call(post, outputs) == {
        "tensors": {"a": [[0.1, 0.996094]], "b": [[1.0, 2.0], [3.0, 4.0]], "a_2": [7.0]}
    }
    outputs[1][0, 1] = np.nan
    with pytest.raises(InferenceError, match="non-finite output 'b'"):
        post(outputs, NO_WINDOW, "s")


def test_payloads_are_short_in_json() -> None:
    payload = call(cls(top_k=3), out(0.1, 0.7, 0.2))  # float32: 0.1 is 0.10000000149...
    assert json.dumps(payload["top"], separators=(",", ":")) == (
        '[{"label":"walk","score":0.7},{"label":"run","score":0.2},{"label":"idle","score":0.1}]'
    )


@pytest.mark.parametrize(
    ("x", "want"), [(0.99609375, 0.996094), (1234567.0, 1234570.0), (1e-9, 1e-9), (-0.0, -0.0)]
)
def test_r6_rounds_to_six_significant_digits(x: float, want: float) -> None:
    assert r6(x) == want


@settings(max_examples=200, deadline=None)
@given(
    codes=st.lists(st.integers(0, 12), min_size=40, max_size=120),
    top_k=st.integers(1, 6),
    threshold=st.sampled_from([0.0, 0.03]),
)
def test_many_classes_give_the_same_payload_as_few(
    codes: list[int], top_k: int, threshold: float
) -> None:
    """Above 32 classes the scores are scanned with NumPy: the payload must be identical to
    the Python path's, ties included (few distinct 8-bit-like values make many ties)."""
    import agent.model.postprocess as pp

    scores = np.asarray(codes, np.float32)[None] / 256
    labels = [f"c{i}" for i in range(scores.size)]
    cfg = ClassificationPost(top_k=top_k, threshold=threshold)
    probs = [Tensor("probs", scores.shape)]
    fast = build_postprocessor(cfg, probs, labels)
    got = fast([scores], NO_WINDOW, "s")
    saved = pp._NUMPY_FROM
    pp._NUMPY_FROM = 10**9
    try:
        want = build_postprocessor(cfg, probs, labels)([scores], NO_WINDOW, "s")
    finally:
        pp._NUMPY_FROM = saved
    assert got == want
    with pytest.raises(InferenceError, match="non-finite"):
        fast([np.where(np.arange(scores.size) == 3, np.nan, scores)], NO_WINDOW, "s")
