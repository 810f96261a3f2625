"""Windows encoded in the model's own input type (agent.ingest.preprocess.Encoder) and the stages
the
pipeline builds around them: what the inference thread feeds ``Model.run_native``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from agent.config import Config, PreprocessSection, parse_config
from agent.errors import ShapeMismatch
from agent.ingest.preprocess import Encoder, Preprocessor
from agent.ingest.samples import SampleBlock
from agent.ingest.window import StreamWindowers
from agent.model.active import ActiveModel
from agent.model.runtime import load_model
from agent.pipeline.threads import build_stages
from agent.wire.topics import Topics
from tests import modelzoo as zoo

RANGES = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767)}


@dataclass(frozen=True)
class Feed:
    name: str
    dtype: str
    scale: float
    zero_point: int


def _reference(pre: Preprocessor, x: np.ndarray, feed: Feed) -> np.ndarray:
    """Normalise, then quantize as TFLite does (round half away from zero), in float64."""
    y = x.astype(np.float64) * pre.scale.astype(np.float64) + pre.offset.astype(np.float64)
    q = y / feed.scale
    q = np.sign(q) * np.floor(np.abs(q) + 0.5) + feed.zero_point
    lo, hi = RANGES[feed.dtype]
    return np.clip(q, lo, hi)


@settings(max_examples=150, deadline=None)
@given(
    x=arrays(
        np.float32,
        st.tuples(st.integers(1, 3), st.integers(1, 12), st.just(2)),
        elements=st.floats(-50, 50, width=32),
    ),
    dtype=st.sampled_from(sorted(RANGES)),
    scale=st.floats(1e-3, 2.0),
    zp=st.integers(-20, 20),
    normalize=st.sampled_from(["none", "standard", "minmax"]),
)
def test_quantized_encoding_matches_tflite_within_one_step(
    x: np.ndarray, dtype: str, scale: float, zp: int, normalize: str
) -> None:
    if dtype == "uint8":
        zp = abs(zp)
    pre = Preprocessor(
        PreprocessSection.model_validate(
            {"normalize": normalize, "mean": [1, -2], "std": [2, 0.5], "min": [-1, 0]}
            | {"max": [1, 4]}
        ),
        2,
    )
    feed = Feed("w", dtype, scale, zp)
    enc = Encoder(pre, feed)
    out = np.empty(x.shape, dtype)
    enc(x, out)
    want = _reference(pre, x, feed)
    assert out.dtype == np.dtype(dtype)
    # float32 arithmetic (fused multiply-add, rint's ties to even) moves a value by at most
    # one step, and only where the exact value sits on (or within float error of) a .5 tie
    assert np.abs(out.astype(np.int64) - want).max(initial=0) <= 1
    # and it decodes back to the normalised value within half a step (unless saturated)
    y = pre(x.copy())
    lo, hi = RANGES[dtype]
    inside = (want > lo) & (want < hi)
    err = np.abs(enc.decode(out) - y)[inside]
    assert err.max(initial=0) <= scale * 1.5 + 1e-3 * np.abs(y[inside]).max(initial=0)


def test_saturates_out_of_range_values() -> None:
    pre = Preprocessor(PreprocessSection(), 1)
    enc = Encoder(pre, Feed("w", "int8", 0.1, 0))
    out = np.empty((1, 4, 1), np.int8)
    enc(np.array([[[1e6], [-1e6], [12.7], [-12.8]]], np.float32), out)
    assert out.ravel().tolist() == [127, -128, 127, -128]


def test_float_input_is_the_normalised_window() -> None:
    pre = Preprocessor(PreprocessSection(normalize="standard", mean=[1.0], std=[2.0]), 1)
    enc = Encoder(pre, Feed("w", "float32", 0.0, 0))
    assert enc.dtype == np.float32 and not enc.quantized
    out = np.empty((1, 3, 1), np.float32)
    enc(np.array([[[1.0], [3.0], [-1.0]]], np.float32), out)
    assert out.ravel().tolist() == [0.0, 1.0, -1.0]


def test_an_integer_input_without_quantization_is_cast_and_a_bool_one_refused() -> None:
    pre = Preprocessor(PreprocessSection(), 1)
    enc = Encoder(pre, Feed("w", "uint8", 0.0, 0))
    out = np.empty((1, 3, 1), np.uint8)
    enc(np.array([[[2.4], [300.0], [-3.0]]], np.float32), out)
    assert out.ravel().tolist() == [2, 255, 0]
    with pytest.raises(ShapeMismatch, match="model input 'w' is bool"):
        Encoder(pre, Feed("w", "bool", 0.0, 0))


def _cfg(**extra: object) -> Config:
    data: dict[str, object] = {
        "sources": [{"type": "synthetic", "name": "imu", "channels": 3}],
        "window": {"length": 32, "hop": 16},
        "preprocess": {"normalize": "standard", "mean": [0.1, 0, -0.2], "std": [1, 2, 0.5]},
    }
    data.update(extra)
    return parse_config(data)


def _topics(cfg: Config) -> Topics:
    return Topics(cfg.mqtt.topic_prefix, cfg.agent.device_id)


@pytest.mark.parametrize("mode", ["int8", "float32"])
def test_encoded_windows_give_the_float_api_s_outputs(mode: str) -> None:
    """Windowing + encoding in the source thread, then run_native: the same predictions as
    normalising a window by hand and calling the float API."""
    zm = zoo.tiny_classifier(mode)
    model = load_model(zm.content)
    cfg = _cfg()
    stages = build_stages(cfg, ActiveModel(model, "m", "1"), _topics(cfg))
    assert stages.encoder.dtype == np.dtype(model.feed.dtype)
    assert stages.encoder.dtype == (np.int8 if mode == "int8" else np.float32)
    rng = np.random.default_rng(3)
    values = rng.normal(0, 1.5, (32 * 8, 3)).astype(np.float32)
    windows = StreamWindowers(32, 16, 3).push(
        SampleBlock("imu", np.arange(len(values), dtype=np.float64), values), stages.encoder
    )
    pre = Preprocessor(cfg.preprocess, 3)
    assert len(windows) == 15 and windows.data.dtype == stages.encoder.dtype
    step = zoo.quant_step(zm.content, "output_0") if mode == "int8" else 0.0
    for i in range(len(windows)):
        got = stages.active.model.run_native(windows.data[i].reshape(stages.input_shape))[0]
        want = model.run1(pre(values[i * 16 : i * 16 + 32].copy())[None])[0]
        np.testing.assert_allclose(got, want, atol=step * 1.01 + 1e-6)


def test_native_feed_refuses_a_wrongly_typed_window() -> None:
    model = load_model(zoo.tiny_classifier("int8").content, label="m 1")
    with pytest.raises(ShapeMismatch, match="input 'window' takes int8"):
        model.run_native(np.zeros((1, 32, 3), np.float32))
    with pytest.raises(ShapeMismatch):
        model.run_native(np.zeros((1, 16, 3), np.int8))


def test_an_mse_autoencoder_compares_with_the_decoded_window() -> None:
    zm = zoo.anomaly_autoencoder("int8")
    model = load_model(zm.content)
    cfg = _cfg(
        postprocess={"type": "anomaly", "score": "mse", "threshold": 0.5},
        preprocess={"normalize": "none"},
    )
    stages = build_stages(cfg, ActiveModel(model, "ae", "1"), _topics(cfg))
    assert stages.encoder.quantized and stages.window is not None
    x = zm.example[0][0]  # (32, 3), already in the model's units
    enc = np.empty((1, 32, 3), np.int8)
    stages.encoder(x[None], enc)
    enc = enc.reshape(stages.input_shape)
    result = stages.postprocessor(stages.active.model.run_native(enc), stages.window(enc), "imu")
    recon = model.run1(x[None])[0]
    want = float(np.mean((recon.astype(np.float64) - x) ** 2))
    assert result is not None and result["score"] == pytest.approx(want, rel=0.1, abs=0.02)
