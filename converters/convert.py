"""Trained model -> .tflite: the one place (with tests) that drives the TensorFlow converter.

Sources: Keras files (``.keras``, ``.h5``) or a live Keras model, a SavedModel directory, an
existing ``.tflite`` (package only, nothing to convert) and ONNX (through ``onnx2tf``, an
optional extra imported only when an ONNX file is given). Every source becomes a SavedModel
first, so there is one conversion path.

Modes:

* ``float32`` — plain conversion (also the reference every other mode is verified against),
* ``float16`` — float16 weights,
* ``dynamic`` — dynamic-range quantisation: int8 weights, float activations,
* ``int8``    — full-integer quantisation from a representative (calibration) dataset, with
  int8 or uint8 (or float32) model inputs/outputs.

Only TFLite builtin ops are allowed: devices run ai-edge-litert without Flex (TF) ops, so an
unsupported op is a ``ConversionError`` naming it, at build time rather than on the device.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from agent.errors import ConversionError
from agent.model.native_stderr import native_stderr_to_logging
from converters.dataset import Dataset, InputShape, RawData, check_fits, fit_to_inputs
from converters.progress import Progress, step

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's C++ chatter, before TF is imported

log = logging.getLogger(__name__)

Mode = Literal["float32", "float16", "dynamic", "int8"]
IoType = Literal["int8", "uint8", "float32"]
SourceKind = Literal["keras", "saved_model", "tflite", "onnx"]
MODES: tuple[Mode, ...] = ("float32", "float16", "dynamic", "int8")
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
MODEL_SUFFIXES = (*KERAS_SUFFIXES, ".tflite", ".onnx")
SERVING_SIGNATURE = "serving_default"
TF_NATIVE = logging.getLogger("tensorflow.native")
"""What TensorFlow's C++ writes to stderr while importing and converting (debug output)."""


def _tf() -> Any:
    """TensorFlow, imported on first use: ``pip install edge-agent[convert]`` brings it.

    The import takes seconds: the first one says so (a spinner on a terminal, a log line
    otherwise), and what TensorFlow's C++ writes to stderr meanwhile goes to the
    ``tensorflow.native`` logger (debug output unless ``--verbose``)."""
    try:
        if "tensorflow" in sys.modules:
            import tensorflow as tf
        else:
            with step("importing TensorFlow"), native_stderr_to_logging(logger=TF_NATIVE):
                import tensorflow as tf
    except ImportError as exc:
        raise ConversionError(
            "converting needs TensorFlow: pip install 'edge-agent[convert]'"
        ) from exc
    return tf


def tensorflow_version() -> str | None:
    """The installed TensorFlow version, without importing it."""
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("tensorflow-cpu", "tensorflow"):
        with contextlib.suppress(PackageNotFoundError):
            return version(dist)
    return None


@dataclass
class SourceModel:
    """A trained model ready to convert: a SavedModel directory or finished .tflite bytes."""

    kind: SourceKind
    path: Path | None
    saved_model_dir: Path | None = None
    tflite: bytes | None = None
    sha256: str | None = None
    _tmp: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)

    def inputs(self) -> list[InputShape]:
        """The model's inputs (name, per-sample shape), in the serving signature's order."""
        if self.saved_model_dir is None:
            raise ConversionError("a .tflite source has no SavedModel inputs")
        return saved_model_inputs(self.saved_model_dir)

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> SourceModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def sha256_of_file(path: Path) -> str | None:
    """The sha256 of a file (None when it is not a file), read in 1 MiB chunks."""
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_source(source: Path | str | Any, onnx2tf_args: Sequence[str] = ()) -> SourceModel:
    """Open a model file/directory (or take a live Keras model) for conversion.

    ``onnx2tf_args``: extra onnx2tf command-line arguments for an ONNX source."""
    if isinstance(source, str):
        source = Path(source)
    if not isinstance(source, Path):
        return _from_keras_model(source, None)
    path = source
    if not path.exists():
        raise ConversionError(f"{path} does not exist")
    suffix = path.suffix.lower()
    if path.is_dir():
        if not (path / "saved_model.pb").exists():
            raise ConversionError(f"{path} is a directory without saved_model.pb")
        return SourceModel("saved_model", path, saved_model_dir=path)
    if suffix == ".tflite":
        data = path.read_bytes()
        return SourceModel("tflite", path, tflite=data, sha256=hashlib.sha256(data).hexdigest())
    if suffix in KERAS_SUFFIXES:
        tf = _tf()
        try:
            with _quiet():
                model = tf.keras.models.load_model(path, compile=False)
        except Exception as exc:  # Keras raises many types for a bad file
            raise ConversionError(f"cannot load Keras model {path}: {exc}") from exc
        return _from_keras_model(model, path)
    if suffix == ".onnx":
        return _from_onnx(path, onnx2tf_args)
    raise ConversionError(
        f"{path}: unknown model format {suffix!r} (use .keras, .h5, .tflite, .onnx or a "
        "SavedModel directory)"
    )


def _from_keras_model(model: Any, path: Path | None) -> SourceModel:
    tmp = tempfile.TemporaryDirectory(prefix="edge-convert-")
    out = Path(tmp.name) / "saved_model"
    try:
        with _quiet():
            model.export(str(out), format="tf_saved_model")
    except Exception as exc:
        tmp.cleanup()
        raise ConversionError(
            f"cannot export Keras model {path or ''} for conversion: {exc}"
        ) from exc
    sha = sha256_of_file(path) if path is not None else None
    return SourceModel("keras", path, saved_model_dir=out, sha256=sha, _tmp=tmp)


ONNX2TF_RUN = "import sys, onnx2tf; sys.argv = ['onnx2tf', *sys.argv[1:]]; sys.exit(onnx2tf.main())"
"""onnx2tf's command line, run by the interpreter that has it (its options as documented)."""
ONNX2TF_TIMEOUT_S = 3600.0


def _onnx2tf_python() -> str:
    """The interpreter that runs onnx2tf: this one if onnx2tf is importable here, else the
    environment of its own (converters.onnxenv), made on first use: onnx2tf pins TensorFlow
    and NumPy versions that would break this venv."""
    import importlib.util
    import sys

    if "onnx2tf" in sys.modules:
        installed = sys.modules["onnx2tf"] is not None
    else:
        try:
            installed = importlib.util.find_spec("onnx2tf") is not None
        except (ImportError, ValueError):
            installed = False
    if installed:
        return sys.executable
    from converters.onnxenv import OnnxEnv, default_root

    env = OnnxEnv(default_root())
    env.ensure()
    return str(env.python)


def _from_onnx(path: Path, args: Sequence[str] = ()) -> SourceModel:
    """onnx2tf's command line in a child process: every option reachable (``args``), and a
    failure shown with onnx2tf's own output (the last lines of its traceback), not one key."""
    import subprocess

    python = _onnx2tf_python()
    tmp = tempfile.TemporaryDirectory(prefix="edge-convert-onnx-")
    out = Path(tmp.name) / "saved_model"
    cmd = [python, "-c", ONNX2TF_RUN, "-i", str(path), "-o", str(out), *args]
    try:
        with step(f"onnx2tf {path.name}"):
            res = subprocess.run(
                cmd, capture_output=True, text=True, timeout=ONNX2TF_TIMEOUT_S, check=False
            )
    except (OSError, subprocess.TimeoutExpired) as exc:
        tmp.cleanup()
        raise ConversionError(f"onnx2tf could not convert {path}: {exc}") from exc
    if res.returncode != 0 or not (out / "saved_model.pb").exists():
        tmp.cleanup()
        output = "\n".join((res.stdout + res.stderr).strip().splitlines()[-40:])
        raise ConversionError(
            f"onnx2tf could not convert {path} (exit {res.returncode}; arguments "
            f"{' '.join(args) or 'none'}; pass its options with --onnx2tf-arg):\n{output}"
        )
    return SourceModel("onnx", path, saved_model_dir=out, sha256=sha256_of_file(path), _tmp=tmp)


def saved_model_inputs(saved_model_dir: Path) -> list[InputShape]:
    """Inputs of the serving signature: name and per-sample shape (batch dim dropped)."""
    tf = _tf()
    try:
        with _quiet():
            loaded = tf.saved_model.load(str(saved_model_dir))
        sig = loaded.signatures[SERVING_SIGNATURE]
    except (KeyError, OSError, ValueError) as exc:
        raise ConversionError(
            f"{saved_model_dir}: no usable '{SERVING_SIGNATURE}' signature: {exc}"
        ) from exc
    _, kwargs = sig.structured_input_signature
    return [
        InputShape(name, tuple(spec.shape.as_list()[1:])) for name, spec in sorted(kwargs.items())
    ]


# --------------------------------------------------------------------------- conversion


def _representative(
    dataset: Dataset, inputs: Sequence[InputShape], progress: Progress | None = None
) -> Iterator[dict[str, npt.NDArray[np.float32]]]:
    for i in range(len(dataset)):
        yield {spec.name: x[i : i + 1] for spec, x in zip(inputs, dataset.inputs, strict=True)}
        if progress is not None:
            progress.advance()


def as_dataset(
    data: Dataset | npt.ArrayLike | Sequence[npt.ArrayLike], inputs: Sequence[InputShape]
) -> Dataset:
    """Accept a fitted ``Dataset`` or raw arrays (one per input, or one for a single input)."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, np.ndarray) or len(inputs) == 1:
        arrays = {inputs[0].name: np.asarray(data)}
    else:
        arrays = {s.name: np.asarray(a) for s, a in zip(inputs, data, strict=True)}  # type: ignore[arg-type]
    return fit_to_inputs(RawData("calibration arrays", arrays, None), inputs)


def convert_saved_model(
    saved_model_dir: Path,
    mode: Mode,
    representative: Dataset | None = None,
    *,
    io_type: IoType = "int8",
    label: str | None = None,
) -> bytes:
    """Convert a SavedModel in ``mode``; ``representative`` is required for ``int8``.

    ``label`` names the model in progress lines (default: the directory name).
    """
    tf = _tf()
    inputs = saved_model_inputs(saved_model_dir)
    conv = tf.lite.TFLiteConverter.from_saved_model(
        str(saved_model_dir), signature_keys=[SERVING_SIGNATURE]
    )
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    calibrating: Progress | None = None
    if mode == "float16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif mode == "dynamic":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    elif mode == "int8":
        if representative is None:
            raise ConversionError(
                "int8 needs a representative (calibration) dataset: give --calibration FILE"
            )
        if len(representative) == 0:
            raise ConversionError(f"calibration set {representative.source} is empty")
        check_fits(representative, inputs)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        rep = representative
        calibrating = Progress(
            f"converting {label or saved_model_dir.name} to int8: calibrating",
            len(rep),
            unit="sample",
        )
        conv.representative_dataset = lambda: _representative(rep, inputs, calibrating)
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        dtypes = {"int8": tf.int8, "uint8": tf.uint8, "float32": tf.float32}
        conv.inference_input_type = dtypes[io_type]
        conv.inference_output_type = dtypes[io_type]
    elif mode != "float32":
        raise ConversionError(f"unknown mode {mode!r} (one of {', '.join(MODES)})")
    label = f"converting {label or saved_model_dir.name} to {mode}"
    try:
        with _quiet(), native_stderr_to_logging(logger=TF_NATIVE):
            if calibrating is not None:
                # the calibration pass is the long part: counts and an ETA over its samples
                with calibrating:
                    data = conv.convert()
            else:
                with step(label):
                    data = conv.convert()
    except Exception as exc:  # ConverterError and friends
        raise ConversionError(_explain_converter_error(str(exc), mode)) from exc
    return bytes(data)


_OP_PATTERNS = (
    re.compile(r"'tf\.(\w+)' op is neither a custom op nor a flex op"),
    re.compile(r"(?:Custom|Flex) ops: ([\w, ]+)"),
    re.compile(r"op: '?(\w+)'? is not supported", re.IGNORECASE),
    re.compile(r"Quantization not yet supported for op: '?(\w+)'?"),
)


def _explain_converter_error(message: str, mode: Mode) -> str:
    ops: list[str] = []
    for pat in _OP_PATTERNS:
        for m in pat.finditer(message):
            for op in re.split(r"[,\s]+", m.group(1)):
                if op and op not in ops:
                    ops.append(op)
    if ops:
        return (
            f"{mode} conversion failed: unsupported op(s) {', '.join(ops)}: not TFLite builtin "
            f"ops{' with int8 kernels' if mode == 'int8' else ''}, and devices run without Flex "
            "(TensorFlow) ops. Replace them in the model, or use another mode."
        )
    first = next((ln for ln in message.splitlines() if "error" in ln.lower()), message[:400])
    return f"{mode} conversion failed: {first.strip()}"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Send what TF/Keras print to stdout to the debug log instead of the user's terminal."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), warnings.catch_warnings():
        # TF warns about its own internals (tf.lite.Interpreter deprecation during calibration).
        warnings.simplefilter("ignore", UserWarning)
        yield
    if buf.getvalue().strip():
        log.debug("%s", buf.getvalue().strip())


def convert_source(
    source: SourceModel,
    mode: Mode,
    representative: Dataset | None = None,
    *,
    io_type: IoType = "int8",
) -> bytes:
    """Convert an opened source; a ``.tflite`` source is returned as it is."""
    if source.tflite is not None:
        return source.tflite
    assert source.saved_model_dir is not None
    label = source.path.name if source.path is not None else None
    return convert_saved_model(
        source.saved_model_dir, mode, representative, io_type=io_type, label=label
    )


def convert_keras(
    model_or_path: Any,
    mode: Mode,
    representative: Dataset | npt.ArrayLike | Sequence[npt.ArrayLike] | None = None,
    *,
    io_type: IoType = "int8",
) -> bytes:
    """A Keras model (object or file) to .tflite bytes: the helper tests and benchmarks use.

    ``representative`` may be raw arrays: ``(N, *input_shape)`` for a single-input model.
    """
    with load_source(model_or_path) as source:
        rep = None
        if representative is not None:
            rep = as_dataset(representative, source.inputs())
        return convert_source(source, mode, rep, io_type=io_type)
