"""The detection postprocessor: sliding mean, strict threshold, rising edges, refractory
period, per-label thresholds, heartbeat, spans of samples; payloads validate against the wire
models."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from pydantic import TypeAdapter

from agent.config import DetectionPost
from agent.errors import InferenceError, ShapeMismatch
from agent.model.detection import DetectionPostprocessor
from agent.model.postprocess import build_postprocessor
from agent.wire.detection import DetectionEventV1, DetectionHeartbeatV1, DetectionOutputs

LABELS = ["bg", "yes", "no"]
OUTPUTS = TypeAdapter(DetectionOutputs)


class _Out:
    def __init__(self, name: str, shape: tuple[int, ...]) -> None:
        self.name = name
        self.shape = shape


def _post(**kw: Any) -> DetectionPostprocessor:
    cfg = DetectionPost(labels=LABELS, ignore=["bg"], **kw)
    post = build_postprocessor(cfg, [_Out("scores", (1, 3))], window_length=4)
    assert isinstance(post, DetectionPostprocessor)
    return post


def _feed(
    post: DetectionPostprocessor, rows: Sequence[Sequence[float]], stream: str = "s", hop: int = 2
) -> list[tuple[int, dict[str, Any]]]:
    """(window index, payload) of each published window."""
    out = []
    for i, row in enumerate(rows):
        p = post([np.asarray([row], np.float32)], np.zeros(1), stream, i * hop)
        if p is not None:
            OUTPUTS.validate_python(p)
            out.append((i, p))
    return out


BG = (1.0, 0.0, 0.0)
YES = (0.0, 1.0, 0.0)
NO = (0.0, 0.0, 1.0)


def test_no_decision_before_n_windows_even_when_the_first_are_high() -> None:
    post = _post(average_windows=3, threshold=0.5)
    got = _feed(post, [YES, YES, YES, YES])
    # windows 0 and 1 are warm-up; window 2 is the first decision: a rising edge there
    assert [(i, p["label"]) for i, p in got] == [(2, "yes")]
    ev = DetectionEventV1.model_validate(got[0][1])
    assert (ev.start_sample, ev.end_sample, ev.windows) == (0, 2 * 2 + 4, 3)
    assert ev.mean == 1.0 and ev.peak == 1.0 and ev.threshold == 0.5


def test_threshold_is_strict_and_events_are_rising_edges_only() -> None:
    post = _post(average_windows=2, threshold=0.5)
    half = (0.5, 0.5, 0.0)
    # means of yes: w1 .5 (not > .5), w2 .75 (rise), w3 1, w4 .5 (fall), w5 .5 (still off),
    # w6 1 (rise)
    got = _feed(post, [half, half, YES, YES, BG, YES, YES])
    assert [i for i, _ in got] == [2, 6]
    assert all(p["type"] == "event" and p["label"] == "yes" for _, p in got)
    assert got[0][1]["mean"] == 0.75 and got[0][1]["peak"] == 1.0
    assert (got[1][1]["start_sample"], got[1][1]["end_sample"]) == (5 * 2, 6 * 2 + 4)


def test_refractory_period_suppresses_edges_and_is_counted_per_label() -> None:
    post = _post(average_windows=1, threshold=0.5, refractory_windows=3)
    # yes rises at 0, falls at 1, rises at 2 (inside 3 windows: none), at 4 (outside: event);
    # "no" is a different label: its rise at 5 is not held back by yes's event at 4
    rows = [YES, BG, YES, BG, YES, NO, BG, BG, YES]
    got = _feed(post, rows)
    assert [(i, p["label"]) for i, p in got] == [(0, "yes"), (4, "yes"), (5, "no"), (8, "yes")]


def test_refractory_edge_is_not_replayed_when_the_period_ends() -> None:
    post = _post(average_windows=1, threshold=0.5, refractory_windows=2)
    got = _feed(post, [YES, BG, YES, YES, YES, YES])
    assert [i for i, _ in got] == [0]


def test_per_label_thresholds_and_ignored_labels() -> None:
    post = _post(average_windows=1, threshold=0.9, thresholds={"no": 0.3})
    got = _feed(post, [(0.2, 0.8, 0.0), (0.6, 0.0, 0.4), (1.0, 0.0, 0.0)])
    assert [(i, p["label"], p["threshold"]) for i, p in got] == [(1, "no", 0.3)]


def test_two_labels_rising_together_make_one_message_strongest_first() -> None:
    post = _post(average_windows=1, threshold=0.3)
    ((_, p),) = _feed(post, [(0.0, 0.45, 0.55)])
    assert p["label"] == "no" and [o["label"] for o in p["others"]] == ["yes"]


def test_heartbeat_after_n_quiet_windows() -> None:
    post = _post(average_windows=2, threshold=0.5, heartbeat_windows=3)
    got = _feed(post, [BG] * 8)
    # decisions from window 1 on; quiet windows 1, 2, 3 -> heartbeat at 3, then at 6
    assert [(i, p["type"]) for i, p in got] == [(3, "heartbeat"), (6, "heartbeat")]
    hb = DetectionHeartbeatV1.model_validate(got[0][1])
    assert hb.means == {"yes": 0.0, "no": 0.0}
    assert (hb.start_sample, hb.end_sample) == (2 * 2, 3 * 2 + 4)


def test_streams_keep_their_own_history() -> None:
    post = _post(average_windows=2, threshold=0.5)
    assert _feed(post, [YES], "a") == []
    assert _feed(post, [YES], "b") == []  # b's first window: still warm-up
    assert [p["label"] for _, p in _feed(post, [YES], "a")] == ["yes"]


def test_lossless_precision_keeps_float32_values_exactly() -> None:
    post = _post(average_windows=1, threshold=0.1, precision="lossless")
    v = float(np.float32(0.123456789))
    ((_, p),) = _feed(post, [(0.0, v, 0.0)])
    assert p["mean"] == v and p["peak"] == v
    post6 = _post(average_windows=1, threshold=0.1)
    ((_, p6),) = _feed(post6, [(0.0, v, 0.0)])
    assert p6["mean"] == 0.123457


def test_bad_outputs_and_unknown_labels_are_errors() -> None:
    post = _post(average_windows=1)
    with pytest.raises(InferenceError, match="non-finite"):
        post([np.asarray([[np.nan, 0, 0]], np.float32)], np.zeros(1), "s", 0)
    with pytest.raises(InferenceError, match="expected 3"):
        post([np.zeros((1, 4), np.float32)], np.zeros(1), "s", 0)
    with pytest.raises(ShapeMismatch, match="maybe"):
        build_postprocessor(
            DetectionPost(labels=LABELS, thresholds={"maybe": 0.5}), [_Out("scores", (1, 3))]
        )
