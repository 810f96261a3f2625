"""Small TFLite models for tests, built with TensorFlow/Keras and cached per test session.

Every builder is seeded and returns a ``ZooModel``: the .tflite bytes, an example float input
per model input, the representative (calibration) samples of quantized modes, and a lazily
written file path for tests that need one (CLI ``inspect``/``predict``).
Builds are cached in memory per process and take well under a second each after the first
TensorFlow import (~4 s, paid once per test session).

    tiny_classifier(mode)        input "window" (1, 32, 3) -> "output_0" (1, 2) softmax; mode:
                                 float32, float16, dynamic, int8 (int8 I/O), uint8 (uint8 I/O),
                                 int8_float_io (int8 inside, float32 I/O)
    multi_io_model(mode)         inputs a (1, 8) and b (1, 4) on very different scales ->
                                 outputs "sum" (1, 3) and "prod" (1, 2); mode float32 or int8
    streaming_model()            one signature (serving_default): x (1, 3) -> count (1, 1),
                                 ema (1, 3); keeps a moving average in resource variables
    two_signature_model()        the same state with two signatures, "step" and "peek"
    window_mean_model(l, k)      "window" (1, l, k) -> "scores" (1, k): the mean over the window
                                 (a recording of one-hot rows is a recording of known scores)
    anomaly_autoencoder(mode)    "window" (1, 32, 3) -> "output_0" (1, 32, 3), float32 or int8
    without_signatures(content)  the same model with its signature defs removed (older models)
    reference_outputs(...)       the expected outputs, computed with the interpreter directly
    run_frames(...)              the same, frame by frame on one interpreter (stateful models)
    ema_reference(frames)        what streaming_model() must output, computed with NumPy
    quant_step(content, output)  an output's quantization scale

Only tests import TensorFlow; the agent never does.
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
MODES = ("float32", "float16", "dynamic", "int8", "uint8", "int8_float_io")
EMA_ALPHA = 0.5
WINDOW, CHANNELS = 32, 3


@dataclass(frozen=True)
class ZooModel:
    """A built test model. ``example`` holds one float input per model input (batch 1);
    ``representative`` the calibration batches (empty for float modes)."""

    name: str
    content: bytes
    example: list[F32]
    representative: list[list[F32]] = field(default_factory=list)

    @property
    def path(self) -> Path:
        """The model written to this session's temp dir (written on first use)."""
        p = _zoo_dir() / f"{self.name}.tflite"
        if not p.exists():
            p.write_bytes(self.content)
        return p


@functools.cache
def _zoo_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="edge-agent-modelzoo-"))


@functools.cache
def _tf() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    return tf


def _convert(
    converter: Any, mode: str, rep: Sequence[Sequence[F32]], names: Sequence[str]
) -> bytes:
    tf = _tf()
    if mode == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif mode == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif mode in ("int8", "uint8", "int8_float_io"):

        def gen() -> Iterator[dict[str, F32]]:
            # By signature input name: a positional list is matched in an order of the
            # converter's choosing and fails to calibrate multi-input models.
            for sample in rep:
                yield dict(zip(names, sample, strict=True))

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = gen
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if mode != "int8_float_io":
            io_type = tf.int8 if mode == "int8" else tf.uint8
            converter.inference_input_type = io_type
            converter.inference_output_type = io_type
    elif mode != "float32":
        raise ValueError(f"unknown mode {mode!r}: one of {MODES}")
    return bytes(converter.convert())


def _keras_convert(model: Any, mode: str, rep: Sequence[Sequence[F32]]) -> bytes:
    tf = _tf()
    names = [t.name for t in model.inputs]
    return _convert(tf.lite.TFLiteConverter.from_keras_model(model), mode, rep, names)


def _seed(seed: int) -> None:
    _tf().keras.utils.set_random_seed(seed)


@functools.cache
def tiny_classifier(mode: str = "int8") -> ZooModel:
    """Conv1D(4, 5) -> mean -> Dense(2, softmax) on a (1, 32, 3) window; untrained, seeded."""
    tf = _tf()
    _seed(1)
    keras = tf.keras
    inp = keras.Input((WINDOW, CHANNELS), batch_size=1, name="window")
    h = keras.layers.Conv1D(4, 5, activation="relu")(inp)
    h = keras.layers.GlobalAveragePooling1D()(h)
    out = keras.layers.Dense(2, activation="softmax", name="scores")(h)
    model = keras.Model(inp, out)
    rng = np.random.default_rng(1)
    rep = [[rng.normal(0, 1, (1, WINDOW, CHANNELS)).astype(np.float32)] for _ in range(32)]
    content = _keras_convert(model, mode, rep)
    example = [rng.normal(0, 1, (1, WINDOW, CHANNELS)).astype(np.float32)]
    return ZooModel(f"tiny_classifier_{mode}", content, example, rep if "int" in mode else [])


@functools.cache
def batchable_classifier(mode: str = "int8", classes: int = 6, seed: int = 7) -> ZooModel:
    """Conv1D -> mean -> Dense(classes, softmax) on (-1, 32, 3) windows: a free batch
    dimension, so several windows may run in one invoke (agent/model/batching.py)."""
    tf = _tf()
    _seed(seed)
    keras = tf.keras
    inp = keras.Input((WINDOW, CHANNELS), name="window")  # batch dimension -1
    h = keras.layers.Conv1D(8, 5, activation="relu")(inp)
    h = keras.layers.GlobalAveragePooling1D()(h)
    out = keras.layers.Dense(classes, activation="softmax", name="scores")(h)
    model = keras.Model(inp, out)
    rng = np.random.default_rng(seed)
    rep = [[rng.normal(0, 1, (1, WINDOW, CHANNELS)).astype(np.float32)] for _ in range(32)]
    content = _keras_convert(model, mode, rep)
    example = [rng.normal(0, 1, (1, WINDOW, CHANNELS)).astype(np.float32)]
    return ZooModel(
        f"batchable_{mode}_{classes}_{seed}", content, example, rep if "int" in mode else []
    )


@functools.cache
def multi_io_model(mode: str = "int8") -> ZooModel:
    """Two inputs on very different scales (a ~ N(0, 1), b ~ N(0, 20)), two outputs.

    Output "sum" = Dense(3)(a) + Dense(3)(b), "prod" = Dense(2)(b) * 0.1; per-input/-output
    quantization parameters all differ in int8 mode.
    """
    tf = _tf()
    _seed(2)
    keras = tf.keras
    a = keras.Input((8,), batch_size=1, name="a")
    b = keras.Input((4,), batch_size=1, name="b")
    s = keras.layers.Add(name="sum")([keras.layers.Dense(3)(a), keras.layers.Dense(3)(b)])
    p = keras.layers.Dense(2, name="prod_dense")(b)
    p = keras.layers.Rescaling(0.1, name="prod")(p)
    model = keras.Model([a, b], {"sum": s, "prod": p})
    rng = np.random.default_rng(2)

    def sample() -> list[F32]:
        return [
            rng.normal(0, 1, (1, 8)).astype(np.float32),
            rng.normal(0, 20, (1, 4)).astype(np.float32),
        ]

    rep = [sample() for _ in range(64)]
    content = _keras_convert(model, mode, rep)
    return ZooModel(f"multi_io_{mode}", content, sample(), rep if mode != "float32" else [])


def _ema_module() -> Any:
    tf = _tf()

    class Ema(tf.Module):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.ema = tf.Variable(tf.zeros((1, CHANNELS)), name="ema")
            self.count = tf.Variable(tf.zeros((1, 1)), name="count")

        @tf.function(input_signature=[tf.TensorSpec((1, CHANNELS), tf.float32, name="x")])  # type: ignore[untyped-decorator]
        def step(self, x: Any) -> dict[str, Any]:
            self.ema.assign(EMA_ALPHA * self.ema + (1.0 - EMA_ALPHA) * x)
            self.count.assign_add(tf.ones((1, 1)))
            return {"ema": self.ema.read_value(), "count": self.count.read_value()}

        @tf.function(input_signature=[tf.TensorSpec((1, CHANNELS), tf.float32, name="x")])  # type: ignore[untyped-decorator]
        def peek(self, x: Any) -> dict[str, Any]:
            return {"ema_plus": self.ema.read_value() + x}

    return Ema()


def _convert_module(module: Any, fns: Sequence[Any]) -> bytes:
    tf = _tf()
    concrete = [f.get_concrete_function() for f in fns]
    converter = tf.lite.TFLiteConverter.from_concrete_functions(concrete, module)
    converter.experimental_enable_resource_variables = True
    return bytes(converter.convert())


@functools.cache
def streaming_model() -> ZooModel:
    """A stateful model: each invoke updates an EMA (alpha 0.5) and a frame counter kept in
    resource variables and returns both ("count" (1, 1), "ema" (1, 3)). See ema_reference."""
    m = _ema_module()
    content = _convert_module(m, [m.step])
    rng = np.random.default_rng(3)
    return ZooModel("streaming", content, [rng.normal(0, 1, (1, CHANNELS)).astype(np.float32)])


@functools.cache
def two_signature_model() -> ZooModel:
    """The streaming model with two signatures: "step" and "peek" (x -> ema + x)."""
    m = _ema_module()
    content = _convert_module(m, [m.step, m.peek])
    return ZooModel("two_signatures", content, [np.ones((1, CHANNELS), np.float32)])


def ema_reference(frames: Sequence[F32]) -> list[tuple[F32, float]]:
    """(ema, count) after each frame, as streaming_model() must compute them."""
    ema = np.zeros((1, CHANNELS), np.float32)
    out = []
    for i, x in enumerate(frames, 1):
        ema = (EMA_ALPHA * ema + (1.0 - EMA_ALPHA) * x).astype(np.float32)
        out.append((ema.copy(), float(i)))
    return out


@functools.cache
def window_mean_model(length: int, classes: int) -> ZooModel:
    """Float32: each class's score is its channel's mean over the window (detection tests)."""
    tf = _tf()
    keras = tf.keras
    inp = keras.Input((length, classes), batch_size=1, name="window")
    out = keras.layers.GlobalAveragePooling1D(name="scores")(inp)
    content = _keras_convert(keras.Model(inp, out), "float32", [])
    return ZooModel(
        f"window_mean_{length}x{classes}", content, [np.ones((1, length, classes), np.float32)]
    )


@functools.cache
def anomaly_autoencoder(mode: str = "float32") -> ZooModel:
    """Dense autoencoder (1, 32, 3) -> 8 -> (1, 32, 3), briefly trained on noisy sines."""
    tf = _tf()
    _seed(4)
    keras = tf.keras
    rng = np.random.default_rng(4)
    t = np.arange(WINDOW)[None, :, None] / 50.0
    phase = rng.uniform(0, 2 * np.pi, (256, 1, 1))
    freq = np.array([1.0, 0.5, 2.0])[None, None, :]
    x = np.sin(2 * np.pi * freq * t + phase) + rng.normal(0, 0.1, (256, WINDOW, CHANNELS))
    xs: F32 = x.astype(np.float32)
    inp = keras.Input((WINDOW, CHANNELS), batch_size=1, name="window")
    h = keras.layers.Flatten()(inp)
    h = keras.layers.Dense(8, activation="relu")(h)
    h = keras.layers.Dense(WINDOW * CHANNELS)(h)
    out = keras.layers.Reshape((WINDOW, CHANNELS), name="reconstruction")(h)
    model = keras.Model(inp, out)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    model.fit(xs, xs, batch_size=64, epochs=10, verbose=0)
    rep = [[xs[i : i + 1]] for i in range(32)]
    content = _keras_convert(model, mode, rep)
    return ZooModel(f"autoencoder_{mode}", content, [xs[100:101]], rep if mode != "float32" else [])


def without_signatures(content: bytes) -> bytes:
    """The model with no signature defs, like models from converters before TF 2.5."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    m = schema.ModelT.InitFromPackedBuf(content, 0)
    m.signatureDefs = []
    builder = flatbuffers.Builder(len(content) + 1024)
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


# --------------------------------------------------------------------------- the oracle


def _interpreter(content: bytes, reference_kernels: bool) -> Any:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = (
        OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        if reference_kernels
        else OpResolverType.AUTO
    )
    return Interpreter(model_content=content, experimental_op_resolver_type=resolver)


def _quantize(x: npt.ArrayLike, d: Mapping[str, Any]) -> npt.NDArray[Any]:
    dtype = np.dtype(d["dtype"])
    scale, zp = d["quantization"]
    if dtype.kind == "f" or scale == 0.0:
        same: npt.NDArray[Any] = np.asarray(x, dtype)
        return same
    info = np.iinfo(dtype)
    q = np.round(np.asarray(x, np.float64) / scale) + zp
    out: npt.NDArray[Any] = np.clip(q, info.min, info.max).astype(dtype)
    return out


def _dequantize(y: npt.NDArray[Any], d: Mapping[str, Any]) -> F32:
    scale, zp = d["quantization"]
    if np.dtype(d["dtype"]).kind == "f" or scale == 0.0:
        return y.astype(np.float32)
    out: F32 = ((y.astype(np.float64) - zp) * scale).astype(np.float32)
    return out


def reference_outputs(
    content: bytes,
    inputs: Mapping[str, npt.ArrayLike] | Sequence[npt.ArrayLike],
    *,
    reference_kernels: bool = True,
    signature: str | None = None,
    frames: int = 1,
    raw: bool = False,
) -> dict[str, F32]:
    """Expected outputs, computed with LiteRT's Interpreter and its SignatureRunner directly.

    ``inputs`` by signature input name, or a sequence in the signature's input order. Floats
    are quantized with np.round(x / scale) + zero_point (written independently of
    agent.model.runtime). Outputs are dequantized to float32 (``raw=True``: as the model gives
    them). ``frames`` > 1 feeds the same inputs that many times to one interpreter and returns
    the last outputs (stateful models).
    """
    interp = _interpreter(content, reference_kernels)
    runner = interp.get_signature_runner(signature)
    details = runner.get_input_details()
    if not isinstance(inputs, Mapping):
        inputs = dict(zip(details, inputs, strict=True))
    feed = {k: _quantize(v, details[k]) for k, v in inputs.items()}
    out: dict[str, Any] = {}
    for _ in range(frames):
        out = runner(**feed)
    if raw:
        return out
    od = runner.get_output_details()
    return {k: _dequantize(v, od[k]) for k, v in out.items()}


def run_frames(
    content: bytes, frames: Sequence[Mapping[str, npt.ArrayLike]], signature: str | None = None
) -> list[dict[str, F32]]:
    """Feed ``frames`` one by one to one interpreter (state carried); outputs per frame."""
    interp = _interpreter(content, True)
    runner = interp.get_signature_runner(signature)
    details = runner.get_input_details()
    od = runner.get_output_details()
    results = []
    for frame in frames:
        out = runner(**{k: _quantize(v, details[k]) for k, v in frame.items()})
        results.append({k: _dequantize(v, od[k]) for k, v in out.items()})
    return results


def quant_step(content: bytes, output: str, signature: str | None = None) -> float:
    """The quantization step (scale) of an output, 0.0 when it is a float tensor."""
    runner = _interpreter(content, True).get_signature_runner(signature)
    scale, _ = runner.get_output_details()[output]["quantization"]
    return float(scale)
