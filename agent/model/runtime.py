"""Where the model runs: the one module that imports a TFLite interpreter.

``load_model(content)`` picks an interpreter package through the ``RUNTIMES`` registry
(``auto`` tries ai-edge-litert, tflite-runtime, tensorflow in that order; a missing one names
the pip package), builds the interpreter once from the model *bytes* (``model_content=`` runs
the flatbuffer verifier, ``model_path=`` does not) and returns a ``Model``. The interpreter
lives as long as the ``Model``: streaming models that keep state in resource variables keep
it between calls until ``reset_state()``.

``Model.run`` takes float arrays and returns float32 arrays. Quantized (int8/uint8/int16)
inputs are quantized with each input tensor's own scale and zero point, quantized outputs
dequantized with each output's own, in one of two ways:

- NumPy (default): everything is precomputed at load (1/scale, clip bounds, scratch buffers,
  a 256-entry lookup table per 8-bit output) and a call is a few ufuncs around set/invoke/get.
  ``rint`` rounds exact ties to even where TFLite rounds them away from zero: one input LSB,
  only on exact ties.
- in-graph (``quantize_in_graph=True``, when the runtime ships its flatbuffer schema):
  ``agent.model.tflite_graph.float_io`` wraps the quantized I/O in QUANTIZE/DEQUANTIZE ops before
  the interpreter is built, so TFLite converts inside ``invoke()`` with its own rounding.
  ``inputs``/``outputs`` still describe the model as shipped (int8 stays int8 there).

``Model.run_native`` is the streaming pipeline's call: the window arrives already in the
interpreter's own input type (``Model.feed``: int8 with the input's scale, encoded by
``agent.ingest.preprocess.Encoder`` in the source threads), so the inference thread only sets,
invokes and reads.

Hot path: the interpreter's own wrapper object (``Interpreter._interpreter``, the same in all
three packages) is called directly when present. That skips the public methods' per-call
checks (~1 us of a ~5 us tiny-model call) and runs a signature living in another subgraph
without the public ``SignatureRunner``, which resizes and re-allocates on every call. The
public API remains as the fallback. Holding that wrapper makes the public ``invoke()`` refuse
to run (it checks the wrapper's reference count): everything goes through this module.

Inputs must be finite (the sample layer rejects NaN/Inf before windows are built). A
``Model`` serialises its calls with a lock.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import logging
import sys
import threading
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import ModuleType
from typing import Any, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from agent.errors import (
    BatchUnsupported,
    InferenceError,
    ModelError,
    RuntimeUnavailable,
    ShapeMismatch,
)
from agent.model.native_stderr import native_stderr_to_logging
from agent.model.tflite_graph import (
    SubgraphOps,
    WrappedTensor,
    float_io,
    op_counts,
    subgraph_ops,
    variable_tensors,
)

log = logging.getLogger(__name__)

Array = npt.NDArray[Any]
Writer = Callable[[Array], None]
Reader = Callable[[], Array]
_T = TypeVar("_T")

INT_RANGES = {
    "int8": (-128, 127),
    "uint8": (0, 255),
    "int16": (-32768, 32767),
}
_STATE_OPS = frozenset({"VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE"})
_RESOURCE_OPS = _STATE_OPS | {"CALL_ONCE"}  # CALL_ONCE runs the variables' init subgraph
# Ops that may keep state in *variable* tensors (old-style streaming: SVDF, LSTMs, RNNs).
# A DELEGATE node is not among them: XNNPACK takes stateless math kernels only, so the ops
# above (and the resource-variable ops) stay visible as nodes of their own.
_VARIABLE_OPS = frozenset(
    {
        "SVDF",
        "LSTM",
        "RNN",
        "UNIDIRECTIONAL_SEQUENCE_LSTM",
        "UNIDIRECTIONAL_SEQUENCE_RNN",
        "BIDIRECTIONAL_SEQUENCE_LSTM",
        "BIDIRECTIONAL_SEQUENCE_RNN",
    }
)
# np.clip is a Python wrapper costing ~3 us on a tiny array; its ufunc costs ~1 us.
_core = getattr(np, "_core", None) or getattr(np, "core", None)
fast_clip: Callable[..., Any] = getattr(getattr(_core, "umath", None), "clip", None) or np.clip


# --------------------------------------------------------------------------- registry


class TensorLike(Protocol):
    """The part of ``TensorInfo`` the pipeline stages read (pre- and postprocessing)."""

    @property
    def name(self) -> str: ...
    @property
    def shape(self) -> tuple[int, ...]: ...


@dataclass(frozen=True)
class Backend:
    """One interpreter package: its Interpreter class and op-resolver enum."""

    name: str
    interpreter: Any
    op_resolver: Any
    schema_modules: tuple[str, ...]


def _litert() -> Backend:
    mod = importlib.import_module("ai_edge_litert.interpreter")
    return Backend(
        "litert", mod.Interpreter, mod.OpResolverType, ("ai_edge_litert.schema_py_generated",)
    )


def _tflite_runtime() -> Backend:
    mod = importlib.import_module("tflite_runtime.interpreter")
    return Backend("tflite-runtime", mod.Interpreter, getattr(mod, "OpResolverType", None), ())


def _tensorflow() -> Backend:
    mod = importlib.import_module("tensorflow.lite.python.interpreter")
    return Backend(
        "tensorflow",
        mod.Interpreter,
        mod.OpResolverType,
        ("tensorflow.lite.python.schema_py_generated",),
    )


@dataclass(frozen=True)
class RuntimeEntry:
    """A registry entry: the pip package to install and how to import the backend."""

    package: str
    module: str
    load: Callable[[], Backend]
    numpy_below: int | None = None
    """The NumPy major version its wheels need to stay below (built against NumPy 1.x)."""


RUNTIMES: dict[str, RuntimeEntry] = {
    "litert": RuntimeEntry("ai-edge-litert", "ai_edge_litert", _litert),
    "tflite-runtime": RuntimeEntry(
        "tflite-runtime", "tflite_runtime", _tflite_runtime, numpy_below=2
    ),
    "tensorflow": RuntimeEntry("tensorflow", "tensorflow", _tensorflow),
}
"""Runtime name (config ``model.runtime``) -> package; ``auto`` tries them in this order."""


def available_runtimes() -> dict[str, bool]:
    """Which runtime packages are installed (found on the path; nothing is imported)."""
    out = {}
    for name, entry in RUNTIMES.items():
        try:
            out[name] = importlib.util.find_spec(entry.module) is not None
        except (ImportError, ValueError):
            out[name] = False
    return out


def numpy_problem(name: str, numpy_version: str = np.__version__) -> str | None:
    """Why the installed runtime ``name`` cannot work with this NumPy, or None (nothing is
    imported: tflite-runtime under NumPy 2 prints to stderr and fails with SystemError)."""
    entry = RUNTIMES.get(name)
    if entry is None or entry.numpy_below is None or not available_runtimes().get(name):
        return None  # not installed: loading it says which package to install
    major = int(numpy_version.split(".", maxsplit=1)[0])
    if major < entry.numpy_below:
        return None
    return (
        f"runtime {name!r} ({entry.package}) is built for NumPy 1.x and needs "
        f"'numpy<{entry.numpy_below}', but NumPy {numpy_version} is installed: "
        f"pip install 'numpy<{entry.numpy_below}', or set model.runtime = 'litert' "
        "(ai-edge-litert works with NumPy 2)"
    )


def _backend(name: str) -> Backend:
    entry = RUNTIMES[name]
    problem = numpy_problem(name)
    if problem is not None:
        raise RuntimeUnavailable(problem)
    try:
        return entry.load()
    except (ImportError, SystemError) as exc:
        raise RuntimeUnavailable(
            f"runtime {name!r} is not available ({exc}): pip install {entry.package}"
        ) from exc


# --------------------------------------------------------------------------- tensors


@dataclass(frozen=True)
class TensorInfo:
    """One model input or output, as ``run`` sees it.

    ``name`` is the signature's name for the tensor when the model is run through a signature
    (``"x"``), else the tensor's own name; ``tensor_name`` is always the latter
    (``"serving_default_x:0"``). ``scale == 0.0`` means not quantized. ``shape_signature``
    has -1 where the model leaves a dimension free (``shape`` is the allocated one).
    """

    name: str
    index: int
    shape: tuple[int, ...]
    dtype: str
    scale: float
    zero_point: int
    tensor_name: str = ""
    shape_signature: tuple[int, ...] = ()

    @property
    def quantized(self) -> bool:
        return self.scale != 0.0

    def describe(self) -> str:
        q = f" q(scale={self.scale:.6g}, zp={self.zero_point})" if self.quantized else ""
        return f"{self.name} {list(self.shape)} {self.dtype}{q}"


def _tensor_info(name: str, d: Mapping[str, Any], where: str) -> TensorInfo:
    dtype = np.dtype(d["dtype"]).name
    qp = d.get("quantization_parameters") or {}
    scales = np.asarray(qp.get("scales", []))
    zps = np.asarray(qp.get("zero_points", []))
    scale, zp = 0.0, 0
    if dtype in INT_RANGES and scales.size:
        if scales.size > 1:
            raise ModelError(f"{where} {name!r} is quantized per channel: not supported for I/O")
        scale, zp = float(scales[0]), int(zps[0]) if zps.size else 0
        if not scale > 0.0:
            raise ModelError(f"{where} {name!r} has quantization scale {scale}")
    sig = d.get("shape_signature")
    return TensorInfo(
        name=name,
        index=int(d["index"]),
        shape=tuple(int(v) for v in d["shape"]),
        dtype=dtype,
        scale=scale,
        zero_point=zp,
        tensor_name=str(d["name"]),
        shape_signature=tuple(int(v) for v in sig) if sig is not None else (),
    )


# --------------------------------------------------------------------------- the flatbuffer


def _schema(backend: Backend) -> ModuleType | None:
    """The runtime's generated flatbuffer schema module, if it ships one."""
    for name in (*backend.schema_modules, "ai_edge_litert.schema_py_generated"):
        if name.startswith("tensorflow.") and "tensorflow" not in sys.modules:
            continue  # never pay TensorFlow's import just to read a flatbuffer
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


def _interpreter(
    backend: Backend,
    content: bytes,
    num_threads: int,
    reference_kernels: bool,
    label: str,
    allocate: bool = True,
) -> Any:
    """A new interpreter (allocated unless ``allocate`` is False); ``ModelError`` for a bad
    model, ``RuntimeUnavailable`` when the package cannot build one at all."""
    kwargs: dict[str, Any] = {"model_content": content, "num_threads": num_threads}
    if reference_kernels:
        if backend.op_resolver is None:
            raise ModelError(f"{label}: runtime {backend.name!r} cannot select reference kernels")
        kwargs["experimental_op_resolver_type"] = (
            backend.op_resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        )
    try:
        # the runtime's C++ INFO/WARNING lines go to logging, not straight to fd 2
        with warnings.catch_warnings(), native_stderr_to_logging():
            # tf.lite.Interpreter warns that it is deprecated on every construction.
            warnings.simplefilter("ignore", UserWarning)
            interp = backend.interpreter(**kwargs)
            if allocate:
                interp.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise ModelError(
            f"{label}: not a usable TFLite model ({len(content)} bytes, runtime "
            f"{backend.name}): {exc}"
        ) from exc
    except (ImportError, AttributeError, TypeError, SystemError) as exc:
        # tflite-runtime built for NumPy 1.x imports under NumPy 2 and fails only here.
        raise RuntimeUnavailable(
            f"runtime {backend.name!r} failed to create an interpreter ({exc}); "
            "tflite-runtime needs numpy<2, ai-edge-litert does not: "
            f"pip install {RUNTIMES[backend.name].package}"
        ) from exc
    return interp


# --------------------------------------------------------------------------- model


class Model:
    """A loaded model: one interpreter, created once, run with float arrays.

    Build with ``load_model``. ``inputs``/``outputs`` are in signature order (or the model's
    input/output order when it has no signature) and describe the model as shipped (an int8
    input stays int8 here even when the quantization runs in-graph).
    """

    def __init__(
        self,
        content: bytes,
        backend: Backend,
        *,
        num_threads: int,
        reference_kernels: bool,
        signature: str | None,
        quantize_in_graph: bool,
        label: str,
        window: tuple[int, int] | None = None,
        batch: int = 1,
    ) -> None:
        self.size = len(content)
        self._window = window
        self.batch = batch
        """Windows per invoke: the single input's first dimension resized to this (``batched``)."""
        self._resize_to: dict[int, tuple[int, ...]] = {}
        """Input tensor index -> shape, for inputs with dynamic dimensions (``window``)."""
        self.sha256 = hashlib.sha256(content).hexdigest()
        self.runtime_name = backend.name
        self.num_threads = num_threads
        self.reference_kernels = reference_kernels
        self.label = label
        self.signature: str | None = None
        self.inputs: list[TensorInfo] = []
        self.outputs: list[TensorInfo] = []
        self.quantize_in_graph = False
        """True when (de)quantization runs inside the interpreter (``tflite_graph.float_io``)."""
        self._content = content
        self._backend = backend
        self._lock = threading.Lock()
        self._op_counts: dict[str, int] | None = None
        self._signatures: dict[str, dict[str, list[str]]] = {}
        engine: bytes = content
        wrapped: dict[int, WrappedTensor] = {}
        if quantize_in_graph and self._schema is not None:
            engine, wrapped = self._in_graph(content, self._schema, signature)
        self._engine_content = engine
        self._build(signature, wrapped)

    @functools.cached_property
    def _schema(self) -> ModuleType | None:
        # Imported on first need only (in-graph rewrite, op counts): the generated schema
        # module alone costs ~4 MB of RSS, and the streaming pipeline never needs it.
        return _schema(self._backend)

    # ------------------------------------------------------------------ setup

    def _in_graph(
        self, content: bytes, schema: ModuleType, signature: str | None
    ) -> tuple[bytes, dict[int, WrappedTensor]]:
        # Building an interpreter from bytes runs the flatbuffer verifier: do that (without
        # delegates or allocation) before Python parses the model, so corrupt or hostile
        # bytes fail in the verifier and never reach the flatbuffer object API.
        probe = _interpreter(
            self._backend, content, 1, self._backend.op_resolver is not None, self.label, False
        )
        if not _has_quantized_io(probe):
            return content, {}
        del probe
        try:
            return float_io(content, schema, signature)
        except Exception as exc:
            log.warning(
                "%s: cannot move I/O quantization in-graph (%s); using NumPy", self.label, exc
            )
            return content, {}

    def _new_interpreter(self, content: bytes, reference_kernels: bool) -> Any:
        interp = _interpreter(
            self._backend, content, self.num_threads, reference_kernels, self.label
        )
        if self._resize_to:
            for index, shape in self._resize_to.items():
                interp.resize_tensor_input(index, list(shape), strict=False)
            interp.allocate_tensors()
        return interp

    def _plan_resize(self, ins: list[tuple[str, Mapping[str, Any]]]) -> None:
        """Inputs with dynamic dimensions other than the batch are allocated as 1 by the
        runtime; with a ``window`` they are resized to take one window (``dynamic_shape``)."""
        if self._window is None:
            return
        for name, d in ins:
            sig = d.get("shape_signature")
            if sig is None or all(int(v) > 0 for v in list(sig)[1:]):
                continue
            shape = dynamic_shape(tuple(int(v) for v in sig), *self._window)
            if shape is None:
                raise ShapeMismatch(
                    f"{self.label}: input {name!r} has dynamic shape {list(sig)}, which no "
                    f"layout of a {self._window[0]} x {self._window[1]} window fills"
                )
            log.info("%s: input %r %s resized to %s", self.label, name, list(sig), shape)
            self._resize_to[int(d["index"])] = shape

    def _plan_batch(self, ins: list[tuple[str, Mapping[str, Any]]]) -> None:
        """Resize the single input's first (batch) dimension to ``self.batch``: allowed when
        the model declares it 1 or -1 (``BatchUnsupported`` otherwise)."""
        if len(ins) != 1:
            raise BatchUnsupported(
                BatchUnsupported.MULTI_INPUT, f"{self.label}: {len(ins)} inputs (batching: one)"
            )
        name, d = ins[0]
        index = int(d["index"])
        shape = self._resize_to.get(index, tuple(int(v) for v in d["shape"]))
        sig = d.get("shape_signature")
        first = int(next(iter(sig))) if sig is not None and len(sig) else (shape[0] if shape else 0)
        if not shape or first not in (1, -1) or shape[0] != 1:
            raise BatchUnsupported(
                BatchUnsupported.BATCH_DIM,
                f"{self.label}: input {name!r} {list(sig) if sig is not None else list(shape)} "
                "has no batch dimension of 1 or -1",
            )
        self._resize_to[index] = (self.batch, *shape[1:])

    def _build(self, wanted: str | None, wrapped: Mapping[int, WrappedTensor]) -> None:
        interp = self._new_interpreter(self._engine_content, self.reference_kernels)
        if self._window is not None or self.batch != 1:
            details = [(d["name"], d) for d in interp.get_input_details()]
            self._plan_resize(details)
            if self.batch != 1:
                self._plan_batch(details)
            if self._resize_to:
                interp = self._new_interpreter(self._engine_content, self.reference_kernels)
        sigs: dict[str, Any] = interp._get_full_signature_list() or {}
        if sigs:
            if wanted is None:
                if len(sigs) > 1:
                    raise ModelError(
                        f"{self.label}: the model has {len(sigs)} signatures {sorted(sigs)}: "
                        "choose one (model.signature)"
                    )
                wanted = next(iter(sigs))
            if wanted not in sigs:
                raise ModelError(
                    f"{self.label}: no signature {wanted!r}; the model has {sorted(sigs)}"
                )
            runner = interp.get_signature_runner(wanted)
            ins = list(runner.get_input_details().items())
            outs = list(runner.get_output_details().items())
        else:
            if wanted is not None:
                raise ModelError(
                    f"{self.label}: the model has no signatures (asked for {wanted!r})"
                )
            ins = [(d["name"], d) for d in interp.get_input_details()]
            outs = [(d["name"], d) for d in interp.get_output_details()]
        self.signature = wanted
        self._signatures = {
            k: {"inputs": list(v["inputs"]), "outputs": list(v["outputs"])} for k, v in sigs.items()
        }
        self._engine_inputs = [_tensor_info(n, d, "input") for n, d in ins]
        self._engine_outputs = [_tensor_info(n, d, "output") for n, d in outs]
        self.inputs = [_public(t, wrapped) for t in self._engine_inputs]
        self.outputs = [_public(t, wrapped) for t in self._engine_outputs]
        self.quantize_in_graph = bool(wrapped)
        if self.batch != 1 and self._subgraph(interp) != 0:
            raise BatchUnsupported(
                BatchUnsupported.SIGNATURE,
                f"{self.label}: signature {wanted!r} runs in another subgraph than the input "
                "that batching resizes",
            )
        self._bind(interp)

    def _subgraph(self, interp: Any) -> int:
        if self.signature is None:
            return 0
        runner = interp.get_signature_runner(self.signature)
        return int(getattr(runner, "_subgraph_index", 0))

    def _bind(self, interp: Any) -> None:
        """Precompute the per-call closures for this interpreter."""
        subgraph = self._subgraph(interp)
        wrapper: Any = getattr(interp, "_interpreter", None)
        raw = all(hasattr(wrapper, a) for a in ("SetTensor", "Invoke", "GetTensor"))
        if raw and subgraph == 0:
            set_: Callable[..., Any] = wrapper.SetTensor
            invoke: Callable[[], Any] = wrapper.Invoke
            get: Callable[[int], Array] = wrapper.GetTensor
        elif raw:
            # A signature in another subgraph: allocate it once here (the public
            # SignatureRunner would resize and re-allocate on every call).
            wrapper.AllocateTensors(subgraph)
            s_set, s_inv, s_get = wrapper.SetTensor, wrapper.Invoke, wrapper.GetTensor

            def set_(i: int, v: Array) -> None:
                s_set(i, v, subgraph)

            def invoke() -> None:
                s_inv(subgraph)

            def get(i: int) -> Array:
                return s_get(i, subgraph)  # type: ignore[no-any-return]
        elif subgraph == 0:
            set_, invoke, get = interp.set_tensor, interp.invoke, interp.get_tensor
        else:
            raise ModelError(
                f"{self.label}: runtime {self.runtime_name!r} cannot run signature "
                f"{self.signature!r} (subgraph {subgraph}) directly"
            )
        self._interp = interp
        self._invoke = invoke
        self._writers = [
            self._writer(t, pub, set_)
            for t, pub in zip(self._engine_inputs, self.inputs, strict=True)
        ]
        self._read_all = self._read_all_outputs(get)
        self._write0 = self._writers[0] if len(self._writers) == 1 else None
        idx0 = self._engine_inputs[0].index if len(self._engine_inputs) == 1 else -1
        self._set0: Callable[[Array], Any] = functools.partial(set_, idx0)  # C-level call

    def _shape_error(self, t: TensorInfo, x: Any) -> ShapeMismatch:
        got = getattr(x, "shape", type(x).__name__)
        return ShapeMismatch(
            f"{self.label}: input {t.name!r} takes shape {t.shape} (float), got {got}"
        )

    def _writer(self, t: TensorInfo, pub: TensorInfo, set_: Callable[..., Any]) -> Writer:
        """``t``: the tensor as the interpreter has it; ``pub``: as the model shipped it."""
        idx, shape = t.index, t.shape
        if t.quantized:  # NumPy quantization: only when it could not move in-graph
            lo, hi = INT_RANGES[t.dtype]
            inv = np.float32(1.0 / t.scale)
            lo_f, hi_f = float(lo - t.zero_point), float(hi - t.zero_point)
            zp = np.float32(t.zero_point)
            buf = np.empty(shape, np.float32)
            q = np.empty(shape, t.dtype)
            mul, rint, add, clip = np.multiply, np.rint, np.add, fast_clip

            def write_q(x: Array) -> None:
                if x.shape != shape:
                    raise self._shape_error(pub, x)
                mul(x, inv, buf)
                rint(buf, buf)
                clip(buf, lo_f, hi_f, buf)
                add(buf, zp, buf)
                q[...] = buf
                set_(idx, q)

            return write_q

        dtype = np.dtype(t.dtype)

        def write(x: Array) -> None:
            try:
                set_(idx, x)  # the runtime checks dtype and shape in C
            except (ValueError, TypeError) as exc:
                if getattr(x, "shape", None) != shape:
                    raise self._shape_error(pub, x) from None
                try:
                    set_(idx, np.asarray(x, dtype))
                except (ValueError, TypeError) as exc2:
                    raise InferenceError(
                        InferenceError.BAD_INPUT, f"{self.label}: input {pub.name!r}: {exc2}"
                    ) from exc

        return write

    def _read_all_outputs(self, get: Callable[[int], Array]) -> Callable[[], list[Array]]:
        outs = self._engine_outputs
        if all(_plain(t) for t in outs):  # float32 (or in-graph dequantized): nothing to do
            idx = [t.index for t in outs]
            if len(idx) == 1:
                i0 = idx[0]
                return lambda: [get(i0)]
            return lambda: [get(i) for i in idx]
        readers = [self._reader(t, get) for t in outs]
        if len(readers) == 1:
            t = outs[0]
            if t.quantized and t.dtype in ("int8", "uint8"):  # the common case, inlined
                take, i0 = self._table(t).take, t.index
                return lambda: [take(get(i0))]
            r0 = readers[0]
            return lambda: [r0()]
        return lambda: [r() for r in readers]

    @staticmethod
    def _table(t: TensorInfo) -> Array:
        """The 256 dequantized values of an 8-bit output: ``table.take(q)`` dequantizes."""
        codes = np.arange(256, dtype=np.int64)
        if t.dtype == "int8":
            codes = np.where(codes < 128, codes, codes - 256)  # table[q] for negative q wraps
        return ((codes - t.zero_point) * t.scale).astype(np.float32)

    def _reader(self, t: TensorInfo, get: Callable[[int], Array]) -> Reader:
        idx = t.index
        if t.quantized and t.dtype in ("int8", "uint8"):
            take = self._table(t).take
            return lambda: take(get(idx))
        if t.quantized:
            scale, zp = np.float32(t.scale), np.float32(t.zero_point)
            return lambda: (get(idx).astype(np.float32) - zp) * scale
        if t.dtype in ("float16", "float64"):
            return lambda: get(idx).astype(np.float32)
        return lambda: get(idx)

    # ------------------------------------------------------------------ running

    def run(self, inputs: Sequence[Array]) -> list[Array]:
        """Run once. ``inputs`` in ``self.inputs`` order; outputs in ``self.outputs`` order.

        Float inputs, float32 outputs (non-quantized integer/bool outputs keep their dtype).
        The returned arrays are new: the caller may keep them.
        Wrong shape or count -> ``ShapeMismatch``; a failed invoke -> ``InferenceError``.
        """
        writers = self._writers
        if len(inputs) != len(writers):
            raise ShapeMismatch(
                f"{self.label}: the model takes {len(writers)} input(s) "
                f"{[t.name for t in self.inputs]}, got {len(inputs)}"
            )
        with self._lock:
            for w, x in zip(writers, inputs, strict=True):
                w(x)
            try:
                self._invoke()
            except (RuntimeError, ValueError) as exc:
                raise self._invoke_error(exc) from exc
            return self._read_all()

    def run1(self, x: Array) -> list[Array]:
        """``run([x])`` for a single-input model, with the least per-call work."""
        w = self._write0
        if w is None:
            raise ShapeMismatch(
                f"{self.label}: run1 needs a single-input model; this one takes "
                f"{[t.name for t in self.inputs]}"
            )
        with self._lock:
            w(x)
            try:
                self._invoke()
            except (RuntimeError, ValueError) as exc:
                raise self._invoke_error(exc) from exc
            return self._read_all()

    @property
    def feed(self) -> TensorInfo:
        """The single input as the interpreter itself takes it, for ``run_native``: the model's
        int8/uint8 input when quantization is not in-graph, float32 when it is."""
        if len(self._engine_inputs) != 1:
            raise ShapeMismatch(
                f"{self.label}: a native feed needs a single-input model; this one takes "
                f"{[t.name for t in self.inputs]}"
            )
        return self._engine_inputs[0]

    def run_native(self, x: Array) -> list[Array]:
        """Run a single-input model on ``x`` already in ``feed``'s dtype, scale and shape
        (the streaming pipeline encodes windows so in its source threads): no conversion at
        all before ``invoke()``. Outputs as ``run`` returns them (dequantized float32)."""
        with self._lock:
            try:
                self._set0(x)
            except (ValueError, TypeError) as exc:
                t = self.feed
                raise ShapeMismatch(
                    f"{self.label}: input {t.name!r} takes {t.dtype} {t.shape}, got "
                    f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}"
                ) from exc
            try:
                self._invoke()
            except (RuntimeError, ValueError) as exc:
                raise self._invoke_error(exc) from exc
            return self._read_all()

    def _invoke_error(self, exc: Exception) -> InferenceError:
        return InferenceError(
            InferenceError.INVOKE_FAILED,
            f"{self.label}: invoke failed (runtime {self.runtime_name}): {exc}",
        )

    def run_named(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        """Run with inputs by name; outputs by name. Unknown or missing names -> ShapeMismatch."""
        names = [t.name for t in self.inputs]
        if set(inputs) != set(names):
            raise ShapeMismatch(
                f"{self.label}: inputs must be exactly {names}, got {sorted(inputs)}"
            )
        outs = self.run([inputs[n] for n in names])
        return {t.name: o for t, o in zip(self.outputs, outs, strict=True)}

    def reset_state(self) -> None:
        """Forget what a stateful (streaming) model has accumulated: a fresh interpreter."""
        with self._lock:
            self._interp = None  # drop the old one first: it holds the wrapper we bound
            self._bind(self._new_interpreter(self._engine_content, self.reference_kernels))

    # ------------------------------------------------------------------ description

    def input(self, name: str | None = None) -> TensorInfo:
        """The input called ``name`` (signature or tensor name), or the only input."""
        return self._pick(self.inputs, name, "input")

    def output(self, name: str | None = None) -> TensorInfo:
        """The output called ``name`` (signature or tensor name), or the first output."""
        return self._pick(self.outputs, name, "output")

    def _pick(self, infos: list[TensorInfo], name: str | None, what: str) -> TensorInfo:
        names = [t.name for t in infos]
        if name is None:
            if what == "input" and len(infos) != 1:
                raise ShapeMismatch(f"{self.label}: the model has {len(infos)} inputs {names}")
            return infos[0]
        for t in infos:
            if name in (t.name, t.tensor_name):
                return t
        raise ShapeMismatch(f"{self.label}: no {what} {name!r}; the model has {names}")

    def signatures(self) -> dict[str, dict[str, list[str]]]:
        """Signature name -> {"inputs": [...], "outputs": [...]} (empty when none)."""
        return {k: {io: list(v[io]) for io in v} for k, v in self._signatures.items()}

    def op_counts(self) -> dict[str, int]:
        """Builtin op name -> uses, over all subgraphs (custom ops as ``CUSTOM:name``)."""
        if self._op_counts is None:
            if self._schema is not None:
                self._op_counts = op_counts(self._content, self._schema)
            else:  # no schema module: the main subgraph's nodes, without delegates
                interp = self._new_interpreter(self._content, self._backend.op_resolver is not None)
                names = (str(d["op_name"]) for d in interp._get_ops_details())
                self._op_counts = dict(Counter(n for n in names if n != "DELEGATE"))
        return dict(self._op_counts)

    def subgraph_ops(self) -> list[SubgraphOps]:
        """Op counts per subgraph (index, name, ops). Without the runtime's flatbuffer schema
        module: the main subgraph's nodes only, as ``op_counts`` then gives them."""
        if self._schema is not None:
            return subgraph_ops(self._content, self._schema)
        return [SubgraphOps(0, "", self.op_counts())]

    @property
    def content(self) -> bytes:
        """The model bytes as loaded (verified), e.g. for a second interpreter."""
        return self._content

    def batched(self, size: int) -> Model:
        """Another interpreter of this model whose input takes ``size`` windows in one invoke
        (the first dimension resized; ``run_native`` then takes and returns ``[size, ...]``).
        ``BatchUnsupported`` when the input has no batch dimension to resize, ``ModelError``
        when the runtime cannot allocate it. Whether its outputs equal ``size`` single
        invokes is the caller's check (``agent.model.batching``)."""
        try:
            return Model(
                self._content,
                self._backend,
                num_threads=self.num_threads,
                reference_kernels=self.reference_kernels,
                signature=self.signature,
                quantize_in_graph=self.quantize_in_graph,
                label=f"{self.label} [batch {size}]",
                window=self._window,
                batch=size,
            )
        except BatchUnsupported:
            raise
        except (ModelError, ValueError, RuntimeError) as exc:
            raise BatchUnsupported(BatchUnsupported.RESIZE_FAILED, str(exc)) from exc

    def clone(self, label: str | None = None) -> Model:
        """A second, independent interpreter of this model with the same settings."""
        return load_model(
            self._content,
            runtime=self.runtime_name,
            num_threads=self.num_threads,
            reference_kernels=self.reference_kernels,
            signature=self.signature,
            quantize_in_graph=self.quantize_in_graph,
            label=label or self.label,
        )

    def ops(self) -> list[str]:
        """Builtin op names the model uses, sorted."""
        return sorted(self.op_counts())

    @functools.cached_property
    def stateful(self) -> bool:
        """True when the model keeps state between invokes (resource or variable tensors).

        Read from the running interpreter's own node list when that decides it (resource
        variable ops, or only ops that keep no state), so the streaming pipeline does not pay
        the flatbuffer schema module's import (~4 MB RSS); else from the flatbuffer."""
        names = self._node_names()
        if names is not None:
            if _RESOURCE_OPS & names:
                return True
            if not _VARIABLE_OPS & names:
                return False
        if _STATE_OPS & set(self.op_counts()):
            return True
        return self._schema is not None and variable_tensors(self._content, self._schema) > 0

    def _node_names(self) -> set[str] | None:
        """Op names of the subgraph that runs (None when the runtime cannot say)."""
        if self._subgraph(self._interp) != 0:
            return None
        try:
            return {str(d["op_name"]) for d in self._interp._get_ops_details()}
        except (AttributeError, KeyError, RuntimeError, ValueError):
            return None

    def memory_estimate(self) -> int:
        """Bytes one more interpreter of this model may take: the model bytes plus every
        tensor of the running subgraph (an upper bound on its arena; constant tensors point
        into the model). What a per-stream interpreter of a stateful model is charged."""
        total = self.size
        try:
            details = self._interp.get_tensor_details()
        except (AttributeError, RuntimeError, ValueError):
            return 4 * total
        for d in details:
            try:
                item = np.dtype(d["dtype"]).itemsize
            except TypeError:
                continue
            total += int(np.prod(d["shape"])) * item
        return total

    def __repr__(self) -> str:
        return (
            f"Model({self.label!r}, runtime={self.runtime_name}, sha256={self.sha256[:12]}, "
            f"inputs=[{', '.join(t.describe() for t in self.inputs)}], "
            f"outputs=[{', '.join(t.describe() for t in self.outputs)}])"
        )


def _has_quantized_io(interp: Any) -> bool:
    """Whether any input/output of the model or of one of its signatures is an integer."""
    details = [*interp.get_input_details(), *interp.get_output_details()]
    for key in interp.get_signature_list() or {}:
        runner = interp.get_signature_runner(key)
        details += [*runner.get_input_details().values(), *runner.get_output_details().values()]
    return any(np.dtype(d["dtype"]).name in INT_RANGES for d in details)


def _plain(t: TensorInfo) -> bool:
    """The interpreter's output is returned as it is (a fresh array: GetTensor copies)."""
    return not t.quantized and t.dtype not in ("float16", "float64")


def dynamic_shape(signature: tuple[int, ...], length: int, channels: int) -> tuple[int, ...] | None:
    """The shape a window of ``length`` x ``channels`` fills in an input whose ``signature``
    has dynamic (-1) dimensions: the first of the layouts the pipeline feeds ((1, L, C),
    (1, L, C, 1), (1, L, 1, C), (1, L*C), (L, C), (L*C,)) of the same rank that agrees with
    every fixed dimension; None when none does."""
    for cand in (
        (1, length, channels),
        (1, length, channels, 1),
        (1, length, 1, channels),
        (1, length * channels),
        (length, channels),
        (length * channels,),
    ):
        if len(cand) == len(signature) and all(
            s <= 0 or s == c for s, c in zip(signature, cand, strict=True)
        ):
            return cand
    return None


def _public(t: TensorInfo, wrapped: Mapping[int, WrappedTensor]) -> TensorInfo:
    q = wrapped.get(t.index)
    if q is None:
        return t
    name = q.name if t.name == t.tensor_name else t.name  # no signature: named by tensor
    return replace(
        t,
        name=name,
        index=q.index,
        tensor_name=q.name,
        dtype=q.dtype,
        scale=q.scale,
        zero_point=q.zero_point,
    )


def load_model(
    content: bytes,
    *,
    runtime: str = "auto",
    num_threads: int = 1,
    reference_kernels: bool = False,
    signature: str | None = None,
    quantize_in_graph: bool = False,
    label: str = "model",
    window: tuple[int, int] | None = None,
) -> Model:
    """Load a .tflite model from its bytes.

    ``window`` (length, channels): an input with dynamic dimensions other than the batch
    (``[-1, -1]``, ``[1, -1, 3]``: allocated as 1 by the runtime) is resized to take one window.

    ``runtime``: ``auto`` or a key of ``RUNTIMES``. ``reference_kernels`` selects the builtin
    kernels without the default XNNPACK delegate (bit-exact with TFLite's C library).
    ``signature``: the signature to run (default: the model's only one).
    ``quantize_in_graph``: wrap quantized inputs/outputs in QUANTIZE/DEQUANTIZE ops so TFLite
    does the conversion inside invoke() (falls back to NumPy when the runtime ships no
    flatbuffer schema). Off by default: the rewrite parses the whole flatbuffer in Python
    (~10x the model's size in RSS while it runs), and the agent's pipeline feeds quantized
    windows natively (``run_native``). ``label`` names the model in error messages (path,
    name, version).

    Raises ``ModelError`` for bytes that are not a usable model, ``RuntimeUnavailable``
    (naming the pip package) when no requested runtime can be imported.
    """
    content = _check_content(content, label)
    if not isinstance(num_threads, int) or isinstance(num_threads, bool) or num_threads < 1:
        raise ModelError(f"{label}: num_threads must be an integer >= 1, got {num_threads!r}")
    model = _with_runtime(
        runtime,
        lambda backend: Model(
            content,
            backend,
            num_threads=num_threads,
            reference_kernels=reference_kernels,
            signature=signature,
            quantize_in_graph=quantize_in_graph,
            label=label,
            window=window,
        ),
    )
    log.info(
        "loaded %s with %s: %d bytes, sha256 %s, %d thread(s)%s%s",
        label,
        model.runtime_name,
        model.size,
        model.sha256[:12],
        num_threads,
        ", reference kernels" if reference_kernels else "",
        ", in-graph I/O quantization" if model.quantize_in_graph else "",
    )
    return model


def signature_names(content: bytes, *, runtime: str = "auto", label: str = "model") -> list[str]:
    """The model's signature names (empty when it has none), without choosing one."""
    content = _check_content(content, label)
    names = _with_runtime(
        runtime,
        lambda b: list(_interpreter(b, content, 1, False, label)._get_full_signature_list() or {}),
    )
    return sorted(names)


def _check_content(content: bytes, label: str) -> bytes:
    if not isinstance(content, bytes | bytearray | memoryview):
        raise ModelError(f"{label}: model content must be bytes, got {type(content).__name__}")
    content = bytes(content)
    if len(content) < 8 or content[4:8] != b"TFL3":
        raise ModelError(
            f"{label}: not a TFLite flatbuffer ({len(content)} bytes, no 'TFL3' identifier)"
        )
    return content


def _with_runtime(runtime: str, build: Callable[[Backend], _T]) -> _T:
    """``build(backend)`` with the requested runtime, or the first that works for ``auto``."""
    if runtime == "auto":
        names = list(RUNTIMES)
    elif runtime in RUNTIMES:
        names = [runtime]
    else:
        raise ModelError(f"unknown runtime {runtime!r}: choose auto or one of {list(RUNTIMES)}")
    reasons = []
    for name in names:
        try:
            return build(_backend(name))
        except RuntimeUnavailable as exc:
            if runtime != "auto":
                raise
            log.debug("runtime %s unavailable: %s", name, exc)
            reasons.append(f"{name}: {exc}")
    raise RuntimeUnavailable(
        "no TFLite runtime is available (" + "; ".join(reasons) + "): pip install ai-edge-litert"
    )
