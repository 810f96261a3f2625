"""Calibration and validation data: .npy, .npz and CSV files fitted to a model's inputs.

Formats:

* ``.npy`` — one array ``(N, *input_shape)`` (or ``(N, prod(input_shape))``), single-input models.
* ``.npz`` — inputs under ``x`` / ``inputs`` or under each input's name (multi-input models),
  optional labels under ``y`` / ``labels``.
* ``.csv`` — one sample per row, the input flattened; an optional header row; a column named
  ``label`` (or ``y``) holds the class index or class name.

Whatever the format, ``fit_to_inputs`` checks every array against the model's input shapes and
raises ``ConversionError`` naming the file, the tensor and both shapes when they disagree, or
when the set is empty or holds NaN/Inf.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from agent.errors import ConversionError

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
_INPUT_KEYS = ("x", "inputs", "input")
_LABEL_KEYS = ("y", "labels", "label")


@dataclass(frozen=True)
class InputShape:
    """A model input as the data must match it: name and per-sample shape (no batch dim).

    ``None`` in ``shape`` is a dimension of any size.
    """

    name: str
    shape: tuple[int | None, ...]

    def describe(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"input {self.name!r} of shape (N, {dims})"


@dataclass(frozen=True)
class RawData:
    """Arrays as read from a file, before they are matched to a model."""

    source: str
    arrays: dict[str, npt.NDArray[np.generic]]
    labels: npt.NDArray[np.generic] | None


@dataclass(frozen=True)
class Dataset:
    """Samples fitted to a model: one float32 array ``(N, *shape)`` per input, labels ``(N,)``."""

    source: str
    inputs: list[F32]
    labels: I64 | None

    def __len__(self) -> int:
        return int(self.inputs[0].shape[0])

    def sample(self, i: int) -> list[F32]:
        """Sample ``i`` with a batch dimension of 1, one array per input."""
        return [x[i : i + 1] for x in self.inputs]

    def take(self, n: int | None) -> Dataset:
        """The first ``n`` samples (all when ``n`` is None)."""
        if n is None or n >= len(self):
            return self
        labels = self.labels[:n] if self.labels is not None else None
        return Dataset(f"{self.source}[:{n}]", [x[:n] for x in self.inputs], labels)


def read_data(path: Path) -> RawData:
    """Read a .npy, .npz or .csv file; ``ConversionError`` for anything else or unreadable."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return RawData(str(path), {"x": np.load(path, allow_pickle=False)}, None)
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
            labels = next((arrays.pop(k) for k in _LABEL_KEYS if k in arrays), None)
            return RawData(str(path), arrays, labels)
        if suffix == ".csv":
            return _read_csv(path)
    except (OSError, ValueError, EOFError) as exc:
        raise ConversionError(f"cannot read data file {path}: {exc}") from exc
    raise ConversionError(f"data file {path}: unknown format {suffix!r} (use .npy, .npz or .csv)")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_csv(path: Path) -> RawData:
    with path.open(newline="", encoding="utf-8") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    if not rows:
        return RawData(str(path), {"x": np.zeros((0, 0), np.float32)}, None)
    header: list[str] | None = None
    if not all(_is_number(c) for c in rows[0]):
        header = [c.strip().lower() for c in rows[0]]
        rows = rows[1:]
    label_col = None
    if header is not None:
        label_col = next((header.index(k) for k in ("label", "y") if k in header), None)
    values: list[list[float]] = []
    labels: list[str] = []
    for lineno, row in enumerate(rows, start=2 if header else 1):
        cells = [c for i, c in enumerate(row) if i != label_col]
        try:
            values.append([float(c) for c in cells])
        except ValueError:
            raise ConversionError(f"{path}:{lineno}: non-numeric value in {cells[:8]}") from None
        if label_col is not None:
            labels.append(row[label_col].strip())
    widths = {len(v) for v in values}
    if len(widths) > 1:
        raise ConversionError(f"{path}: rows have different numbers of values: {sorted(widths)}")
    arr = np.asarray(values, dtype=np.float32).reshape(len(values), -1)
    lab = np.asarray(labels) if label_col is not None else None
    return RawData(str(path), {"x": arr}, lab)


def load_dataset(
    path: Path, inputs: Sequence[InputShape], class_names: Sequence[str] = ()
) -> Dataset:
    """Read ``path`` and fit it to ``inputs`` (see ``fit_to_inputs``)."""
    return fit_to_inputs(read_data(path), inputs, class_names)


def fit_to_inputs(
    raw: RawData, inputs: Sequence[InputShape], class_names: Sequence[str] = ()
) -> Dataset:
    """Match arrays to model inputs, reshape flattened rows, check shapes, counts and values."""
    if not inputs:
        raise ConversionError("the model has no inputs")
    chosen: list[npt.NDArray[np.generic]] = []
    for spec in inputs:
        if spec.name in raw.arrays:
            chosen.append(raw.arrays[spec.name])
        elif len(inputs) == 1 and len(raw.arrays) == 1:
            chosen.append(next(iter(raw.arrays.values())))
        elif len(inputs) == 1 and (key := next((k for k in _INPUT_KEYS if k in raw.arrays), "")):
            chosen.append(raw.arrays[key])
        else:
            raise ConversionError(
                f"{raw.source}: no array for {spec.describe()} (arrays in the file: "
                f"{sorted(raw.arrays)}; name them after the inputs)"
            )
    fitted = [_fit_one(raw.source, spec, arr) for spec, arr in zip(inputs, chosen, strict=True)]
    counts = {x.shape[0] for x in fitted}
    if len(counts) > 1:
        raise ConversionError(f"{raw.source}: inputs have different sample counts {sorted(counts)}")
    n = fitted[0].shape[0]
    if n == 0:
        raise ConversionError(
            f"{raw.source} is empty: 0 samples for {inputs[0].describe()} "
            f"(array shape {tuple(chosen[0].shape)})"
        )
    labels = _labels(raw, n, class_names)
    return Dataset(raw.source, fitted, labels)


def _fit_one(source: str, spec: InputShape, arr: npt.NDArray[np.generic]) -> F32:
    if arr.dtype.kind not in "fiub":
        raise ConversionError(f"{source}: {spec.describe()} got non-numeric dtype {arr.dtype}")
    shape = spec.shape
    if arr.ndim == len(shape) and _matches(arr.shape, shape):
        arr = arr[None]  # one sample without a batch dimension
    elif (
        arr.ndim == 2
        and len(shape) != 1
        and None not in shape
        and arr.shape[1] == math.prod(d for d in shape if d is not None)
    ):
        arr = arr.reshape((arr.shape[0], *(d for d in shape if d is not None)))  # flat rows
    if arr.ndim != len(shape) + 1 or not _matches(arr.shape[1:], shape):
        raise ConversionError(
            f"{source}: data of shape {tuple(arr.shape)} does not fit {spec.describe()}"
        )
    out = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(out).all():
        bad = int((~np.isfinite(out)).reshape(out.shape[0], -1).any(axis=1).sum())
        raise ConversionError(f"{source}: {bad} sample(s) for input {spec.name!r} hold NaN/Inf")
    return out


def check_fits(dataset: Dataset, inputs: Sequence[InputShape]) -> None:
    """``ConversionError`` unless ``dataset`` has one array per input of the right shape."""
    if len(dataset.inputs) != len(inputs):
        raise ConversionError(
            f"{dataset.source}: {len(dataset.inputs)} input array(s) for {len(inputs)} inputs"
        )
    if len(dataset) == 0:
        raise ConversionError(f"{dataset.source} is empty: 0 samples for {inputs[0].describe()}")
    for spec, x in zip(inputs, dataset.inputs, strict=True):
        if not _matches(x.shape[1:], spec.shape):
            raise ConversionError(
                f"{dataset.source}: data of shape {tuple(x.shape)} does not fit {spec.describe()}"
            )


def _matches(got: tuple[int, ...], want: tuple[int | None, ...]) -> bool:
    return len(got) == len(want) and all(
        w is None or g == w for g, w in zip(got, want, strict=True)
    )


def _labels(raw: RawData, n: int, class_names: Sequence[str]) -> I64 | None:
    if raw.labels is None:
        return None
    lab = np.asarray(raw.labels).reshape(-1)
    if lab.shape[0] != n:
        raise ConversionError(f"{raw.source}: {lab.shape[0]} labels for {n} samples")
    if lab.dtype.kind in "iu":
        return lab.astype(np.int64)
    if lab.dtype.kind == "f":
        if not np.all(np.isfinite(lab)) or not np.all(lab == np.round(lab)):
            raise ConversionError(f"{raw.source}: labels must be class indices (whole numbers)")
        return lab.astype(np.int64)
    names = list(class_names)
    out = np.empty(n, dtype=np.int64)
    for i, text in enumerate(lab.astype(str)):
        if text.lstrip("-").isdigit():
            out[i] = int(text)
        elif text in names:
            out[i] = names.index(text)
        else:
            raise ConversionError(
                f"{raw.source}: label {text!r} is not a class index or one of {names}"
            )
    return out
