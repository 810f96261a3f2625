"""Preprocessing: per-channel normalisation and the model-input check with its messages."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from agent.config import PreprocessSection
from agent.errors import ConfigError, ShapeMismatch
from agent.ingest.preprocess import Preprocessor, check_model_input


@dataclass(frozen=True)
class Tensor:
    """Stands in for ``agent.model.runtime.TensorInfo`` (same fields)."""

    name: str
    shape: tuple[int, ...]
    index: int = 0
    dtype: str = "int8"
    scale: float = 0.05
    zero_point: int = 0


MEAN, STD = [1.0, -2.0, 0.5], [2.0, 0.5, 4.0]
LO, HI = [-1.0, 0.0, 10.0], [1.0, 4.0, 20.0]
finite = st.floats(-1e4, 1e4, width=32)


@settings(max_examples=100, deadline=None)
@given(
    arrays(
        np.float32, st.tuples(st.integers(0, 4), st.integers(1, 16), st.just(3)), elements=finite
    )
)
def test_standard_is_x_minus_mean_over_std(x: np.ndarray) -> None:
    pre = Preprocessor(PreprocessSection(normalize="standard", mean=MEAN, std=STD), 3)
    want = (x.astype(np.float64) - MEAN) / STD
    got = pre(x)
    assert got.dtype == np.float32 and got.shape == x.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@settings(max_examples=100, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 16), st.just(3)), elements=finite))
def test_minmax_maps_min_to_0_and_max_to_1(x: np.ndarray) -> None:
    pre = Preprocessor(PreprocessSection(normalize="minmax", min=LO, max=HI), 3)
    want = (x.astype(np.float64) - LO) / (np.array(HI) - LO)
    np.testing.assert_allclose(pre(x), want, rtol=1e-5, atol=1e-5)
    edges = pre(np.array([LO, HI], np.float32))
    np.testing.assert_allclose(edges, [[0, 0, 0], [1, 1, 1]], atol=1e-6)


def test_scale_and_offset_are_precomputed_per_channel() -> None:
    pre = Preprocessor(PreprocessSection(normalize="standard", mean=MEAN, std=STD), 3)
    np.testing.assert_allclose(pre.scale, [0.5, 2.0, 0.25])
    np.testing.assert_allclose(pre.offset, [-0.5, 4.0, -0.125])
    assert pre.scale.dtype == np.float32 and not pre.identity


def test_none_passes_windows_through() -> None:
    pre = Preprocessor(PreprocessSection(), 2)
    x = np.arange(8, dtype=np.float32).reshape(1, 4, 2)
    assert pre.identity and pre(x) is x
    out = np.empty_like(x)
    assert pre(x, out) is out
    np.testing.assert_array_equal(out, x)


def test_out_and_in_place() -> None:
    pre = Preprocessor(PreprocessSection(normalize="minmax", min=LO, max=HI), 3)
    x = np.full((2, 5, 3), 0.5, np.float32)
    want = pre(x)
    assert want is not x
    out = np.empty_like(x)
    assert pre(x, out) is out
    np.testing.assert_array_equal(out, want)
    assert pre(x, x) is x
    np.testing.assert_array_equal(x, want)


def test_wrong_channel_count_in_a_window() -> None:
    pre = Preprocessor(PreprocessSection(normalize="standard", mean=MEAN, std=STD), 3)
    with pytest.raises(ShapeMismatch, match=r"got 2 channel\(s\) in shape \(4, 2\)"):
        pre(np.zeros((4, 2), np.float32))


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        (
            PreprocessSection(normalize="standard", mean=[0.0, 0.0], std=[1.0, 1.0]),
            ("preprocess.mean", "needs one value per channel (3), got 2 value(s)"),
        ),
        (
            PreprocessSection(normalize="minmax", min=[0.0], max=[1.0]),
            ("preprocess.min", "needs one value per channel (3), got 1 value(s)"),
        ),
    ],
)
def test_statistics_for_the_wrong_channel_count(
    section: PreprocessSection, problem: tuple[str, str]
) -> None:
    with pytest.raises(ConfigError) as exc:
        Preprocessor(section, 3)
    assert exc.value.problems == [problem]


# --------------------------------------------------------------------------- model input


@pytest.mark.parametrize(
    ("shape", "target"),
    [
        ((1, 32, 3), (1, 32, 3)),
        ((32, 3), (32, 3)),
        ((1, 32, 3, 1), (1, 32, 3, 1)),
        ((1, 32, 1, 3), (1, 32, 1, 3)),
        ((1, 96), (1, 96)),
        ((96,), (96,)),
        ((-1, 32, 3), (1, 32, 3)),
        ((-1, 96), (1, 96)),
    ],
)
def test_accepted_input_layouts(shape: tuple[int, ...], target: tuple[int, ...]) -> None:
    assert check_model_input(Tensor("x", shape), 32, 3) == target
    window = np.arange(96, dtype=np.float32).reshape(1, 32, 3)
    np.testing.assert_array_equal(window.reshape(target).ravel(), window.ravel())


@pytest.mark.parametrize(
    ("length", "channels", "shape", "target"),
    [(64, 1, (1, 64), (1, 64)), (64, 1, (1, 64, 1), (1, 64, 1)), (1, 5, (1, 5), (1, 5))],
)
def test_single_channel_and_single_sample_windows(
    length: int, channels: int, shape: tuple[int, ...], target: tuple[int, ...]
) -> None:
    assert check_model_input(Tensor("x", shape), length, channels) == target


HEAD = (
    "model input 'serving_default_x:0' has shape {shape}, but the pipeline feeds windows of "
    "window.length = 32 samples x 3 channel(s) (shape (1, 32, 3); also accepted: (32, 3), "
    "(1, 32, 3, 1), (1, 96))."
)


@pytest.mark.parametrize(
    ("shape", "fix"),
    [
        (
            (1, 64, 3),
            "To use this model set window.length = 64 and channels = 3 in every [[sources]] "
            "table (with window.hop <= window.length), or use a model that takes (1, 32, 3).",
        ),
        (
            (1, 32, 6),
            "To use this model set window.length = 32 and channels = 6 in every [[sources]] "
            "table (with window.hop <= window.length), or use a model that takes (1, 32, 3).",
        ),
        (
            (1, 3, 32),
            "The model looks channels-first (channels, length): windows are channels-last; "
            "re-export the model with input shape (1, 32, 3).",
        ),
        (
            (1, 120),
            "A flat input of 120 values needs window.length x channels = 120 (now 32 x 3 = 96): "
            "change window.length or the sources' channels. With 3 channel(s): "
            "window.length = 40.",
        ),
        (
            (1, 100),
            "A flat input of 100 values needs window.length x channels = 100 (now 32 x 3 = 96): "
            "change window.length or the sources' channels.",
        ),
        (
            (1, -1, 3),
            "The model has a dynamic dimension other than the batch: export it with a fixed size.",
        ),
        (
            (1, 4, 8, 3),
            "The model takes 96 values per invoke in a layout the window cannot be reshaped to; "
            "change window.length / the sources' channels, or re-export the model with input "
            "shape (1, 32, 3).",
        ),
        (
            (2, 32, 3),
            "The model has a fixed batch of 2; windows are fed one at a time: re-export it with "
            "batch 1 (input shape (1, 32, 3)).",
        ),
    ],
)
def test_mismatch_messages_name_the_input_and_the_keys(shape: tuple[int, ...], fix: str) -> None:
    shown = "(" + ", ".join(map(str, shape)) + ")"
    with pytest.raises(ShapeMismatch) as exc:
        check_model_input(Tensor("serving_default_x:0", shape), 32, 3)
    assert str(exc.value) == HEAD.format(shape=shown) + " " + fix
