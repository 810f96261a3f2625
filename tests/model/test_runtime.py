"""agent.model.runtime against LiteRT's own Interpreter driven directly (tests.modelzoo's
oracle)."""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any

import numpy as np
import pytest

from agent.errors import InferenceError, ModelError, RuntimeUnavailable, ShapeMismatch
from agent.model import runtime
from agent.model.runtime import RUNTIMES, Backend, Model, RuntimeEntry, load_model
from tests import modelzoo as zoo

QUANT_MODES = ("int8", "uint8")
BOTH = pytest.mark.parametrize("in_graph", [True, False], ids=["in_graph", "numpy"])


def _close(model: Model, got: list[np.ndarray], want: dict[str, np.ndarray], steps: float) -> None:
    """Outputs agree within ``steps`` quantization steps (float outputs: float precision)."""
    assert [t.name for t in model.outputs] == list(want)
    for t, g in zip(model.outputs, got, strict=True):
        assert g.dtype == np.float32
        assert g.shape == t.shape
        atol = steps * t.scale if t.quantized else 1e-5
        np.testing.assert_allclose(g, want[t.name], rtol=1e-5, atol=atol, err_msg=t.name)


def _inputs(model: Model, n: int, seed: int = 0, scale: float = 1.0) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        [rng.normal(0, scale, t.shape).astype(np.float32) for t in model.inputs] for _ in range(n)
    ]


# --------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize("mode", zoo.MODES)
@BOTH
def test_every_mode_matches_the_interpreter(mode: str, in_graph: bool) -> None:
    zm = zoo.tiny_classifier(mode)
    model = load_model(zm.content, quantize_in_graph=in_graph)
    for x in [zm.example, *_inputs(model, 5)]:
        want = zoo.reference_outputs(zm.content, x, reference_kernels=False)
        # NumPy rounds ties to even, TFLite away from zero: one input LSB at most.
        _close(model, model.run(x), want, steps=1.01)


@BOTH
@pytest.mark.parametrize("mode", QUANT_MODES)
def test_quantized_io_is_described_as_shipped(mode: str, in_graph: bool) -> None:
    zm = zoo.tiny_classifier(mode)
    model = load_model(zm.content, quantize_in_graph=in_graph)
    assert model.quantize_in_graph == in_graph
    (inp,) = model.inputs
    assert (inp.name, inp.shape, inp.dtype) == ("window", (1, 32, 3), mode)
    assert inp.quantized and inp.scale > 0
    assert inp.tensor_name == "serving_default_window:0"
    out = model.output()
    assert out.dtype == mode and out.scale == pytest.approx(1 / 256)
    # ops() lists the model's own ops, not the QUANTIZE/DEQUANTIZE the runtime wraps it in
    assert "DEQUANTIZE" not in model.ops()
    assert {"CONV_2D", "FULLY_CONNECTED", "SOFTMAX"} <= set(model.ops())


@pytest.mark.parametrize("mode", ["float32", "float16", "dynamic"])
def test_float_io_models_are_not_quantized(mode: str) -> None:
    model = load_model(zoo.tiny_classifier(mode).content)
    assert not model.quantize_in_graph
    assert [(t.dtype, t.scale, t.zero_point, t.quantized) for t in model.inputs] == [
        ("float32", 0.0, 0, False)
    ]


@pytest.mark.parametrize("mode", QUANT_MODES)
@BOTH
def test_reference_kernels_are_bit_exact(mode: str, in_graph: bool) -> None:
    zm = zoo.tiny_classifier(mode)
    model = load_model(zm.content, reference_kernels=True, quantize_in_graph=in_graph)
    assert model.reference_kernels
    out = model.output()
    for x in _inputs(model, 20, seed=7):
        raw = zoo.reference_outputs(zm.content, x, reference_kernels=True, raw=True)["output_0"]
        got = model.run(x)[0]
        np.testing.assert_array_equal(np.rint(got / out.scale + out.zero_point), raw)


@BOTH
def test_out_of_range_inputs_saturate(in_graph: bool) -> None:
    zm = zoo.tiny_classifier("int8")
    model = load_model(zm.content, reference_kernels=True, quantize_in_graph=in_graph)
    x = np.full((1, 32, 3), 1e6, np.float32)
    x[0, ::2] = -1e6
    want = zoo.reference_outputs(zm.content, [x])
    _close(model, model.run([x]), want, steps=0)


def test_any_float_dtype_is_accepted() -> None:
    zm = zoo.tiny_classifier("int8")
    model = load_model(zm.content)
    x = zm.example[0]
    a = model.run1(x)[0]
    np.testing.assert_array_equal(model.run1(x.astype(np.float64))[0], a)
    np.testing.assert_array_equal(model.run([x.astype(np.float16)])[0].shape, a.shape)
    f32 = load_model(zoo.tiny_classifier("float32").content)
    np.testing.assert_allclose(f32.run1(x.astype(np.float64))[0], f32.run1(x)[0], rtol=1e-6)


@BOTH
def test_non_contiguous_inputs(in_graph: bool) -> None:
    zm = zoo.tiny_classifier("int8")
    model = load_model(zm.content, quantize_in_graph=in_graph)
    x = zm.example[0]
    wide = np.repeat(x, 2, axis=2)  # (1, 32, 6): every other channel is x
    view = wide[:, :, ::2]
    assert not view.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(model.run1(view)[0], model.run1(x)[0])
    np.testing.assert_array_equal(model.run1(np.asfortranarray(x))[0], model.run1(x)[0])


def test_outputs_are_fresh_arrays() -> None:
    model = load_model(zoo.tiny_classifier("int8").content)
    x = zoo.tiny_classifier("int8").example[0]
    first = model.run1(x)[0]
    keep = first.copy()
    first[...] = 99.0
    np.testing.assert_array_equal(model.run1(x)[0], keep)


# --------------------------------------------------------------------------- multi I/O


@pytest.mark.parametrize("mode", ["float32", "int8"])
@BOTH
def test_multi_input_multi_output(mode: str, in_graph: bool) -> None:
    zm = zoo.multi_io_model(mode)
    model = load_model(zm.content, quantize_in_graph=in_graph)
    # signature order, although the interpreter lists b before a
    assert [t.name for t in model.inputs] == ["a", "b"]
    assert [t.name for t in model.outputs] == ["prod", "sum"]
    if mode == "int8":
        a, b = model.inputs
        assert a.scale * 10 < b.scale  # each input quantized with its own parameters
    for x in [zm.example, *_inputs(model, 5, seed=3)]:
        x[1] *= 20  # b lives on a much wider range than a
        want = zoo.reference_outputs(zm.content, x, reference_kernels=False)
        _close(model, model.run(x), want, steps=1.01)
        named = model.run_named({"b": x[1], "a": x[0]})
        assert list(named) == ["prod", "sum"]
        np.testing.assert_array_equal(named["sum"], model.run(x)[1])


def test_multi_input_misuse_is_a_shape_mismatch() -> None:
    model = load_model(zoo.multi_io_model("int8").content)
    a, b = (np.zeros(t.shape, np.float32) for t in model.inputs)
    with pytest.raises(ShapeMismatch, match=r"takes 2 input\(s\)"):
        model.run([a])
    with pytest.raises(ShapeMismatch, match="single-input"):
        model.run1(a)
    with pytest.raises(ShapeMismatch, match="exactly"):
        model.run_named({"a": a, "c": b})
    with pytest.raises(ShapeMismatch, match="'b' takes shape"):
        model.run([a, a])
    with pytest.raises(ShapeMismatch, match="2 inputs"):
        model.input()
    assert model.input("b").shape == (1, 4)
    assert model.input("serving_default_b:0").name == "b"
    with pytest.raises(ShapeMismatch, match="no output 'nope'"):
        model.output("nope")


# --------------------------------------------------------------------------- state & signatures


def test_streaming_model_keeps_state_between_calls() -> None:
    zm = zoo.streaming_model()
    model = load_model(zm.content)
    assert model.stateful
    assert model.signature == "serving_default"
    assert [t.name for t in model.outputs] == ["count", "ema"]
    rng = np.random.default_rng(5)
    frames = [rng.normal(0, 1, (1, 3)).astype(np.float32) for _ in range(12)]
    direct = zoo.run_frames(zm.content, [{"x": f} for f in frames])
    expected = zoo.ema_reference(frames)
    for f, d, (ema, count) in zip(frames, direct, expected, strict=True):
        got_count, got_ema = model.run1(f)
        np.testing.assert_allclose(got_ema, d["ema"], rtol=1e-6)
        np.testing.assert_allclose(got_ema, ema, rtol=1e-5)
        assert got_count[0, 0] == d["count"][0, 0] == count
    model.reset_state()
    got_count, got_ema = model.run1(frames[0])
    assert got_count[0, 0] == 1.0
    np.testing.assert_allclose(got_ema, expected[0][0], rtol=1e-5)


@BOTH
def test_model_without_signatures_uses_tensor_names(in_graph: bool) -> None:
    zm = zoo.tiny_classifier("int8")
    bare = zoo.without_signatures(zm.content)
    model = load_model(bare, quantize_in_graph=in_graph)
    assert model.signature is None and model.signatures() == {}
    assert model.quantize_in_graph == in_graph
    assert [t.name for t in model.inputs] == ["serving_default_window:0"]
    assert model.inputs[0].dtype == "int8"
    with pytest.raises(ShapeMismatch, match="'serving_default_window:0' takes"):
        model.run1(np.zeros((1, 2), np.float32))
    want = zoo.reference_outputs(zm.content, zm.example, reference_kernels=False)
    np.testing.assert_allclose(
        model.run1(zm.example[0])[0], want["output_0"], atol=1.01 * model.outputs[0].scale
    )


def test_stateless_model_is_not_stateful() -> None:
    assert not load_model(zoo.tiny_classifier("int8").content).stateful


def test_signature_selection() -> None:
    zm = zoo.two_signature_model()
    with pytest.raises(ModelError, match=r"2 signatures \['peek', 'step'\]"):
        load_model(zm.content)
    with pytest.raises(ModelError, match="no signature 'nope'"):
        load_model(zm.content, signature="nope")
    bare = zoo.without_signatures(zoo.tiny_classifier("int8").content)
    with pytest.raises(ModelError, match="no signatures"):
        load_model(bare, signature="serving_default")
    # "step" lives in a subgraph other than the first: it runs, and keeps its state
    step = load_model(zm.content, signature="step")
    assert set(step.signatures()) == {"peek", "step"}
    ones = np.ones((1, 3), np.float32)
    counts = [step.run1(ones)[0][0, 0] for _ in range(3)]
    assert counts == [1.0, 2.0, 3.0]
    np.testing.assert_allclose(step.run1(ones)[1], [[0.9375] * 3])
    peek = load_model(zm.content, signature="peek")
    assert [t.name for t in peek.outputs] == ["ema_plus"]
    np.testing.assert_allclose(peek.run1(2 * ones)[0], 2 * ones)


# --------------------------------------------------------------------------- runtimes


def test_auto_picks_litert_first() -> None:
    model = load_model(zoo.tiny_classifier("int8").content)
    assert model.runtime_name == "litert"
    assert runtime.available_runtimes()["litert"]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["int8", "float32"])
def test_tensorflow_runtime_is_a_real_fallback(mode: str) -> None:
    zm = zoo.tiny_classifier(mode)
    model = load_model(
        zm.content, runtime="tensorflow", reference_kernels=True, quantize_in_graph=True
    )
    assert model.runtime_name == "tensorflow"
    assert model.quantize_in_graph == (mode == "int8")
    want = zoo.reference_outputs(zm.content, zm.example, reference_kernels=True)
    _close(model, model.run(zm.example), want, steps=0 if mode == "int8" else 1)
    stream = load_model(zoo.streaming_model().content, runtime="tensorflow")
    ones = np.ones((1, 3), np.float32)
    assert [stream.run1(ones)[0][0, 0] for _ in range(3)] == [1.0, 2.0, 3.0]


def _hide(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError


def test_missing_tflite_runtime_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    _hide(monkeypatch, "tflite_runtime", "tflite_runtime.interpreter")
    content = zoo.tiny_classifier("int8").content
    with pytest.raises(RuntimeUnavailable, match="pip install tflite-runtime"):
        load_model(content, runtime="tflite-runtime")


@pytest.mark.slow
def test_auto_falls_back_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    _hide(monkeypatch, "ai_edge_litert.interpreter", "tflite_runtime", "tflite_runtime.interpreter")
    zm = zoo.tiny_classifier("int8")
    model = load_model(zm.content, runtime="auto")
    assert model.runtime_name == "tensorflow"
    _hide(monkeypatch, "tensorflow.lite.python.interpreter")
    with pytest.raises(RuntimeUnavailable) as info:
        load_model(zm.content)
    msg = str(info.value)
    for name in RUNTIMES:
        assert f"{name}:" in msg
    assert "pip install ai-edge-litert" in msg


def test_a_runtime_that_fails_at_creation_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    """tflite-runtime 2.14 under NumPy 2: imports fine, fails when the interpreter is built."""

    class Broken:
        def __init__(self, **kwargs: Any) -> None:
            raise ImportError("A module that was compiled using NumPy 1.x cannot be run in NumPy 2")

    fake = RuntimeEntry(
        "tflite-runtime", "tflite_runtime", lambda: Backend("tflite-runtime", Broken, None, ())
    )
    monkeypatch.setitem(RUNTIMES, "tflite-runtime", fake)
    content = zoo.tiny_classifier("int8").content
    with pytest.raises(RuntimeUnavailable, match=r"numpy<2.*pip install tflite-runtime"):
        load_model(content, runtime="tflite-runtime")
    _hide(monkeypatch, "ai_edge_litert.interpreter", "tensorflow.lite.python.interpreter")
    with pytest.raises(RuntimeUnavailable, match="tflite-runtime: runtime 'tflite-runtime' failed"):
        load_model(content)


def test_unknown_runtime() -> None:
    with pytest.raises(ModelError, match="unknown runtime 'onnx'"):
        load_model(zoo.tiny_classifier("int8").content, runtime="onnx")


class _PublicOnly:
    """An interpreter exposing only the public API (no ``_interpreter`` wrapper)."""

    def __init__(self, **kwargs: Any) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self._inner = Interpreter(**kwargs)

    def __getattr__(self, name: str) -> Any:
        if name == "_interpreter":
            raise AttributeError(name)
        return getattr(self._inner, name)


def _public_backend() -> Backend:
    from ai_edge_litert.interpreter import OpResolverType

    return Backend("litert", _PublicOnly, OpResolverType, ("ai_edge_litert.schema_py_generated",))


def test_public_api_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(RUNTIMES, "litert", RuntimeEntry("ai-edge-litert", "x", _public_backend))
    zm = zoo.multi_io_model("int8")
    model = load_model(zm.content, runtime="litert")
    want = zoo.reference_outputs(zm.content, zm.example, reference_kernels=False)
    _close(model, model.run(zm.example), want, steps=1.01)
    with pytest.raises(ShapeMismatch):
        model.run([np.zeros((1, 9), np.float32), zm.example[1]])
    two = zoo.two_signature_model().content
    assert load_model(two, runtime="litert", signature="peek").run1(np.ones((1, 3), np.float32))
    with pytest.raises(ModelError, match="cannot run signature 'step'"):
        load_model(two, runtime="litert", signature="step")


def test_in_graph_rewrite_failure_falls_back_to_numpy(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def boom(*args: Any) -> Any:
        raise ValueError("unexpected flatbuffer")

    monkeypatch.setattr(runtime, "float_io", boom)
    zm = zoo.tiny_classifier("int8")
    with caplog.at_level(logging.WARNING, logger="agent.model.runtime"):
        model = load_model(zm.content, label="demo 1.0", quantize_in_graph=True)
    assert not model.quantize_in_graph
    assert "demo 1.0: cannot move I/O quantization in-graph" in caplog.text
    want = zoo.reference_outputs(zm.content, zm.example, reference_kernels=False)
    _close(model, model.run(zm.example), want, steps=1.01)


# --------------------------------------------------------------------------- errors & settings


@pytest.mark.parametrize(
    "mangle",
    [
        lambda b: b"",
        lambda b: b"not a model at all",
        lambda b: b[: len(b) // 2],
        lambda b: b[:8] + bytes(len(b) - 8),
        lambda b: b[:8] + np.random.default_rng(0).bytes(len(b) - 8),
    ],
    ids=["empty", "text", "truncated", "zeroed", "random"],
)
def test_corrupt_model_is_a_model_error(mangle: Any, caplog: pytest.LogCaptureFixture) -> None:
    content = mangle(zoo.tiny_classifier("int8").content)
    with pytest.raises(ModelError, match=r"model\.tflite"):
        load_model(content, label="model.tflite")
    # the flatbuffer verifier refuses it before Python ever parses the bytes
    assert "in-graph" not in caplog.text


def test_content_must_be_bytes() -> None:
    with pytest.raises(ModelError, match="must be bytes"):
        load_model("model.tflite")  # type: ignore[arg-type]


@BOTH
def test_wrong_input_shape(in_graph: bool) -> None:
    model = load_model(zoo.tiny_classifier("int8").content, quantize_in_graph=in_graph, label="m")
    for bad in [np.zeros((1, 31, 3)), np.zeros((32, 3)), np.zeros((1, 32, 3, 1)), np.zeros(3)]:
        with pytest.raises(ShapeMismatch, match=r"m: input 'window' takes shape \(1, 32, 3\)"):
            model.run1(bad.astype(np.float32))
        with pytest.raises(ShapeMismatch):
            model.run([bad])
    model.run1(np.zeros((1, 32, 3), np.float32))  # still usable


def test_num_threads() -> None:
    zm = zoo.tiny_classifier("float32")
    one = load_model(zm.content)
    two = load_model(zm.content, num_threads=2)
    assert (one.num_threads, two.num_threads) == (1, 2)
    np.testing.assert_allclose(two.run(zm.example)[0], one.run(zm.example)[0], rtol=1e-6)
    for bad in (0, -1, 1.5):
        with pytest.raises(ModelError, match="num_threads"):
            load_model(zm.content, num_threads=bad)  # type: ignore[arg-type]


def test_identity_of_the_bytes() -> None:
    import hashlib

    content = zoo.tiny_classifier("uint8").content
    model = load_model(content)
    assert model.size == len(content)
    assert model.sha256 == hashlib.sha256(content).hexdigest()
    assert model.sha256[:12] in repr(model)


def test_invoke_failure_is_an_inference_error() -> None:
    model = load_model(zoo.tiny_classifier("int8").content, label="m")

    def fail() -> None:
        raise RuntimeError("Node number 3 (CONV_2D) failed to invoke.")

    model._invoke = fail
    with pytest.raises(InferenceError, match=r"m: invoke failed.*CONV_2D"):
        model.run1(np.zeros((1, 32, 3), np.float32))


def test_concurrent_callers_get_their_own_results() -> None:
    zm = zoo.tiny_classifier("int8")
    model = load_model(zm.content)
    xs = [x[0] for x in _inputs(model, 8, seed=11)]
    expected = [model.run1(x)[0] for x in xs]
    errors: list[str] = []

    def worker(k: int) -> None:
        for i in range(300):
            j = (i + k) % len(xs)
            if not np.array_equal(model.run1(xs[j])[0], expected[j]):
                errors.append(f"thread {k} call {i}")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
