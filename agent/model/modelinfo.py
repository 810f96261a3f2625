"""What a model file is and what it answers: the logic of ``inspect`` and ``predict``.

``describe_model`` returns a JSON-able description (inputs/outputs with shapes, dtypes and
quantization, the float range each quantized tensor can represent, ops, signatures, size,
sha256); ``format_description`` renders it as a table for people. ``predict_file`` runs a
model once per example of an input file (.npy, .npz, .json or .csv) and returns JSON-able
outputs. Everything goes through ``agent.model.runtime``; nothing here imports a TFLite runtime.

Input files for ``predict_file``:

- ``.npy``: one array, for a single-input model;
- ``.npz``: arrays by input name (a lone array feeds a single-input model whatever its key);
- ``.json``: a nested list (single input) or ``{"input name": nested list, ...}``;
- ``.csv``: rows x columns of numbers, an optional header row, for a single-input model
  (a (1, 32, 3) window is 32 rows of 3 columns).

An array may be the tensor's exact shape, the shape without its batch dimension of 1, or a
stack of N examples ``(N, *shape[1:])``; anything else is a ``ShapeMismatch`` that names
both shapes.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.errors import SampleError, ShapeMismatch
from agent.model.runtime import INT_RANGES, Model, TensorInfo, load_model, signature_names

log = logging.getLogger(__name__)

Array = npt.NDArray[Any]


# --------------------------------------------------------------------------- describe


def tensor_dict(t: TensorInfo) -> dict[str, Any]:
    """One tensor as JSON-able data; ``float_range`` is what a quantized tensor can hold."""
    d: dict[str, Any] = {
        "name": t.name,
        "tensor_name": t.tensor_name,
        "index": t.index,
        "shape": list(t.shape),
        "shape_signature": list(t.shape_signature) or list(t.shape),
        "dtype": t.dtype,
        "quantized": t.quantized,
        "scale": t.scale,
        "zero_point": t.zero_point,
    }
    if t.quantized and t.dtype in INT_RANGES:
        lo, hi = INT_RANGES[t.dtype]
        d["float_range"] = [(lo - t.zero_point) * t.scale, (hi - t.zero_point) * t.scale]
    return d


def _io(model: Model) -> dict[str, Any]:
    return {
        "inputs": [tensor_dict(t) for t in model.inputs],
        "outputs": [tensor_dict(t) for t in model.outputs],
    }


def describe_model(
    content: bytes,
    *,
    runtime: str = "auto",
    signature: str | None = None,
    path: str | None = None,
) -> dict[str, Any]:
    """Describe a .tflite model (JSON-able). ``ModelError`` when it cannot be loaded.

    ``inputs``/``outputs`` are those of ``signature`` (default: the model's only one); with
    several signatures and none chosen they are empty, and ``signatures`` holds each one's.
    """
    label = path or "model"
    names = signature_names(content, runtime=runtime, label=label)
    chosen = signature if signature is not None else (names[0] if len(names) == 1 else None)
    models = {n: load_model(content, runtime=runtime, signature=n, label=label) for n in names}
    if chosen is None and names:
        model = None
        ref = models[names[0]]
    else:
        model = models.get(chosen) if chosen is not None else None
        model = model or load_model(content, runtime=runtime, signature=chosen, label=label)
        ref = model
    counts = ref.op_counts()
    return {
        "path": path,
        "size": ref.size,
        "sha256": ref.sha256,
        "runtime": ref.runtime_name,
        "signature": chosen,
        **(_io(model) if model else {"inputs": [], "outputs": []}),
        "signatures": {n: _io(m) for n, m in models.items()},
        "ops": dict(sorted(counts.items())),
        "op_total": sum(counts.values()),
        "subgraphs": [
            {
                "index": sub.index,
                "name": sub.name,
                "ops": dict(sorted(sub.ops.items())),
                "op_total": sum(sub.ops.values()),
            }
            for sub in ref.subgraph_ops()
        ],
        "stateful": ref.stateful,
    }


def _fmt_q(t: Mapping[str, Any]) -> tuple[str, str]:
    if not t["quantized"]:
        return "-", "-"
    lo, hi = t["float_range"]
    return f"scale {t['scale']:.6g} zp {t['zero_point']}", f"[{lo:.4g}, {hi:.4g}]"


def _table(rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in rows
    ]


def _io_lines(title: str, tensors: Sequence[Mapping[str, Any]]) -> list[str]:
    rows = [["name", "shape", "dtype", "quantization", "float range"]]
    for t in tensors:
        shape = t["shape_signature"] if -1 in t["shape_signature"] else t["shape"]
        rows.append([t["name"], str(shape), t["dtype"], *_fmt_q(t)])
    return [title, *_table(rows)]


def format_description(d: Mapping[str, Any]) -> str:
    """``describe_model``'s result as a human-readable table."""
    lines = [
        f"{d.get('path') or 'model'}: {d['size']:,} bytes, sha256 {d['sha256']}",
        f"runtime {d['runtime']}"
        + (
            "; STATEFUL: keeps state (variables) between invokes. `run` gives every stream "
            "its own interpreter (window.max_streams, model.stream_state_limit_mb); `predict` "
            "starts each example fresh unless --carry-state, --stream carries it (docs/fidelity.md)"
            if d["stateful"]
            else ""
        ),
    ]
    sigs = d["signatures"]
    if d["inputs"] or d["outputs"]:
        if d["signature"]:
            lines.append(
                f"signature {d['signature']}" + (f" (of {len(sigs)})" if len(sigs) > 1 else "")
            )
        lines += ["", *_io_lines("inputs", d["inputs"]), "", *_io_lines("outputs", d["outputs"])]
    else:
        for name, io in sigs.items():
            lines += ["", f"signature {name}"]
            lines += _io_lines(" inputs", io["inputs"]) + _io_lines(" outputs", io["outputs"])
    subs = d.get("subgraphs") or []
    if len(subs) > 1:
        lines += ["", f"ops per subgraph ({len(subs)} subgraphs):"]
        for sub in subs:
            name = f" {sub['name']}" if sub["name"] else ""
            lines.append(f"  subgraph {sub['index']}{name} ({sub['op_total']}): {_ops(sub['ops'])}")
        lines.append(f"  all subgraphs ({d['op_total']} in total): {_ops(d['ops'])}")
    else:
        lines += ["", f"ops ({d['op_total']} in total): {_ops(d['ops'])}"]
    return "\n".join(lines)


def _ops(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{name} x{n}" if n > 1 else name for name, n in counts.items()) or "none"


# --------------------------------------------------------------------------- predict


def _bad_file(path: Path, detail: str) -> SampleError:
    return SampleError("bad_input_file", f"{path}: {detail}")


def _as_array(value: Any, path: Path, what: str) -> Array:
    try:
        arr = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise _bad_file(path, f"{what} is not a rectangular array of numbers ({exc})") from None
    if not np.isfinite(arr).all():
        raise _bad_file(path, f"{what} holds NaN or Inf")
    return arr


def _read_csv(path: Path) -> Array:
    with path.open(newline="", encoding="utf-8") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    if rows:
        try:
            [float(c) for c in rows[0]]
        except ValueError:
            rows = rows[1:]  # a header row
    if not rows:
        raise _bad_file(path, "no data rows")
    try:
        values = [[float(c) for c in r] for r in rows]
    except ValueError as exc:
        raise _bad_file(path, f"not numeric: {exc}") from None
    return _as_array(values, path, "the CSV")


def read_inputs(path: Path) -> Array | dict[str, Array]:
    """One array, or arrays by name, from a .npy/.npz/.json/.csv file."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return _as_array(np.load(path, allow_pickle=False), path, "the array")
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return {k: _as_array(z[k], path, k) for k in z.files}
        if suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict):
                return {str(k): _as_array(v, path, str(k)) for k, v in data.items()}
            return _as_array(data, path, "the JSON")
        if suffix == ".csv":
            return _read_csv(path)
    except (OSError, ValueError) as exc:
        raise _bad_file(path, f"cannot read: {exc}") from None
    raise _bad_file(path, f"unknown input format {suffix!r}: use .npy, .npz, .json or .csv")


def _by_name(model: Model, raw: Array | dict[str, Array], path: Path) -> dict[str, Array]:
    names = [t.name for t in model.inputs]
    if not isinstance(raw, dict):
        if len(names) != 1:
            raise ShapeMismatch(
                f"{path}: the model takes {len(names)} inputs {names}: give them by name "
                "(.npz, or a JSON object)"
            )
        return {names[0]: raw}
    if len(raw) == 1 and len(names) == 1:
        return {names[0]: next(iter(raw.values()))}
    out = {}
    for key, arr in raw.items():
        try:
            out[model.input(key).name] = arr
        except ShapeMismatch:
            raise ShapeMismatch(
                f"{path}: no model input {key!r}; the model takes {names}"
            ) from None
    missing = [n for n in names if n not in out]
    if missing:
        raise ShapeMismatch(f"{path}: missing input(s) {missing}; the model takes {names}")
    return out


def _examples(t: TensorInfo, arr: Array, path: Path) -> list[Array]:
    shape = t.shape
    if arr.shape == shape:
        return [arr]
    if shape and shape[0] == 1:
        if arr.shape == shape[1:]:
            return [arr[None]]
        if arr.ndim == len(shape) and arr.shape[1:] == shape[1:] and arr.shape[0] > 0:
            return [arr[i : i + 1] for i in range(arr.shape[0])]
    hint = f"{shape}, {shape[1:]} or (N, *{shape[1:]})" if shape and shape[0] == 1 else str(shape)
    raise ShapeMismatch(
        f"{path}: input {t.name!r} takes shape {shape}; the file has {arr.shape} (give {hint}; "
        "a recording of shape (samples, channels) is cut into windows with --stream)"
    )


def json_values(arr: Array) -> Any:
    """``arr`` as nested lists; float32 values as their shortest round-trip repr (exact)."""
    if arr.dtype.kind == "f":
        # float32's shortest repr, not float64 noise (0.1, not 0.10000000149011612)
        flat = [float(np.format_float_positional(v, unique=True, trim="-")) for v in arr.ravel()]
        return np.array(flat, dtype=np.float64).reshape(arr.shape).tolist()
    return arr.tolist()


def predict_file(
    model_content: bytes,
    input_path: Path,
    *,
    runtime: str = "auto",
    signature: str | None = None,
    num_threads: int = 1,
    reference_kernels: bool = False,
    labels: Sequence[str] | None = None,
    label: str = "model",
    prepare: Callable[[TensorInfo, Array], Array] | None = None,
    carry_state: bool = False,
) -> dict[str, Any]:
    """Run the model on every example of ``input_path``; JSON-able inputs, outputs, timing.

    A stateful (streaming) model starts every example from a fresh state (a new interpreter),
    so examples are independent; ``carry_state`` feeds them one after the other to one
    interpreter instead (for a recording, ``predict_stream`` windows it as ``run`` does).

    ``labels`` (class names of the first output) add ``predictions``: the top label and
    score per example. ``prepare(tensor, array)`` turns the file's array for an input into
    what the tensor takes (a package's normalisation and layout). Errors: ``ModelError``
    (model), ``ShapeMismatch`` (shapes/names), ``SampleError`` with reason ``bad_input_file``
    (the input file).
    """
    input_path = Path(input_path)
    model = load_model(
        model_content,
        runtime=runtime,
        signature=signature,
        num_threads=num_threads,
        reference_kernels=reference_kernels,
        label=label,
    )
    named = _by_name(model, read_inputs(input_path), input_path)
    if prepare is not None:
        named = {t.name: prepare(t, named[t.name]) for t in model.inputs}
    per_input = [_examples(t, named[t.name], input_path) for t in model.inputs]
    counts = {t.name: len(ex) for t, ex in zip(model.inputs, per_input, strict=True)}
    if len(set(counts.values())) > 1:
        raise ShapeMismatch(f"{input_path}: inputs hold different numbers of examples {counts}")
    n = len(per_input[0])
    results: list[list[Array]] = []
    times = []
    fresh = model.stateful and not carry_state
    for i in range(n):
        xs = [ex[i] for ex in per_input]
        if fresh and i:
            model.reset_state()
        t0 = time.perf_counter()
        results.append(model.run(xs))
        times.append(time.perf_counter() - t0)
    outputs = {}
    for j, t in enumerate(model.outputs):
        stacked = results[0][j] if n == 1 else np.concatenate([r[j] for r in results], axis=0)
        outputs[t.name] = {"shape": list(stacked.shape), "values": json_values(stacked)}
    out: dict[str, Any] = {
        "model": {
            "sha256": model.sha256,
            "size": model.size,
            "runtime": model.runtime_name,
            "signature": model.signature,
            "reference_kernels": model.reference_kernels,
            "num_threads": model.num_threads,
            "stateful": model.stateful,
        },
        "state": "carried" if model.stateful and carry_state else "fresh per example",
        "input_file": str(input_path),
        "examples": n,
        "inputs": {t.name: list(t.shape) for t in model.inputs},
        "outputs": outputs,
        "latency_ms": {
            "first": round(times[0] * 1e3, 4),
            "mean": round(float(np.mean(times)) * 1e3, 4),
        },
    }
    if labels:
        out["predictions"] = _predictions(model, results, list(labels))
    return out


def _predictions(model: Model, results: list[list[Array]], labels: list[str]) -> list[Any]:
    first = model.outputs[0]
    size = int(np.prod(first.shape[1:])) if first.shape else 1
    if size != len(labels):
        raise ShapeMismatch(
            f"{len(labels)} labels for output {first.name!r} of shape {first.shape} "
            f"({size} values per example)"
        )
    preds = []
    for r in results:
        scores = r[0].reshape(-1)
        k = int(np.argmax(scores))
        preds.append(
            {"label": labels[k], "score": float(np.format_float_positional(scores[k], unique=True))}
        )
    return preds
