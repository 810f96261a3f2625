"""Inputs with dynamic dimensions (issue 11, finding 5): the runtime allocates them as 1; the
agent resizes them to the configured window at load, so such a model runs instead of being
refused as ``[1, 1]``."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.config import parse_config
from agent.model.loading import load_active_model
from agent.model.runtime import dynamic_shape, load_model
from agent.pipeline.threads import build_stages
from agent.wire.topics import Topics

W = np.random.default_rng(5).normal(0, 1, (3, 2)).astype(np.float32)


def _convert(fn: Any, spec: Any) -> bytes:
    import tensorflow as tf

    f = tf.function(fn, input_signature=[spec])
    conv = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()], f)
    return bytes(conv.convert())


@functools.cache
def dynamic_time() -> bytes:
    """(1, -1, 3) -> mean over time @ W -> (1, 2)."""
    import tensorflow as tf

    return _convert(
        lambda x: tf.matmul(tf.reduce_mean(x, axis=1), W), tf.TensorSpec([1, None, 3], tf.float32)
    )


@functools.cache
def dynamic_flat() -> bytes:
    """(-1, -1) -> sum of each row -> (-1, 1): the shape the issue met."""
    import tensorflow as tf

    return _convert(
        lambda x: tf.reduce_sum(x, axis=1, keepdims=True), tf.TensorSpec([None, None], tf.float32)
    )


def test_dynamic_shape_picks_the_window_layout() -> None:
    assert dynamic_shape((1, -1, 3), 32, 3) == (1, 32, 3)
    assert dynamic_shape((-1, -1), 32, 3) == (1, 96)
    assert dynamic_shape((1, -1, -1, 1), 16, 4) == (1, 16, 4, 1)
    assert dynamic_shape((1, -1, 5), 32, 3) is None


@pytest.mark.slow
def test_a_dynamic_time_axis_is_resized_to_the_window() -> None:
    plain = load_model(dynamic_time())
    assert plain.inputs[0].shape == (1, 1, 3)  # what the runtime allocates
    model = load_model(dynamic_time(), window=(32, 3))
    assert model.inputs[0].shape == (1, 32, 3)
    x = np.random.default_rng(1).normal(0, 1, (1, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(model.run([x])[0], x.mean(axis=1) @ W, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_a_fully_dynamic_input_runs_in_the_pipeline(tmp_path: Path) -> None:
    path = tmp_path / "flat.tflite"
    path.write_bytes(dynamic_flat())
    cfg = parse_config(
        {
            "model": {"path": str(path)},
            "window": {"length": 32, "hop": 16},
            "postprocess": {"type": "raw"},
        }
    )
    active = load_active_model(cfg)
    assert active.model.inputs[0].shape == (1, 96)
    build_stages(cfg, active, Topics("edge", "dev"))  # fits: no ShapeMismatch
    x = np.random.default_rng(2).normal(0, 1, (1, 96)).astype(np.float32)
    np.testing.assert_allclose(active.model.run([x])[0], x.sum(axis=1, keepdims=True), rtol=1e-5)
