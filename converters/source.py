"""The source model run by its own framework, and how its input layout maps to the .tflite.

Verification compares every converted variant with the model the user trained, not with
another conversion of it: a Keras or SavedModel source runs in TensorFlow (its serving
signature), an ONNX source in onnxruntime. The data is in the source's layout (what the user
has); ``infer_layout`` finds how that layout becomes the .tflite input (onnx2tf moves channels
last: ``[1, 16, 96]`` -> ``[1, 96, 16]``), and the package records it (``InputLayout``) so the
agent's ``predict`` feeds data the way the source model takes it.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from agent.errors import ConversionError
from agent.model.runtime import TensorInfo
from agent.release.manifest import InputLayout
from converters.dataset import Dataset, InputShape

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class SourceInput:
    """An input of a source model: name and shape."""

    name: str
    shape: tuple[int, ...]
    """Batch included; -1 for a dynamic dimension."""

    def as_input_shape(self) -> InputShape:
        return InputShape(self.name, tuple(None if d < 0 else d for d in self.shape[1:]))


class SourceRunner(Protocol):
    """Runs the source model in its own framework."""

    framework: str
    inputs: list[SourceInput]
    output_names: list[str]

    def run(self, feeds: Sequence[F32]) -> list[F32]: ...


def _dist_version(*dists: str) -> str:
    for dist in dists:
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return "?"


class SavedModelRunner:
    """A SavedModel's serving signature in TensorFlow (Keras sources are exported to one)."""

    def __init__(self, saved_model_dir: Path) -> None:
        from converters.convert import SERVING_SIGNATURE, _quiet, _tf

        tf = _tf()
        with _quiet():
            self._loaded = tf.saved_model.load(str(saved_model_dir))
        self._fn = self._loaded.signatures[SERVING_SIGNATURE]
        _, kwargs = self._fn.structured_input_signature
        self._names = sorted(kwargs)
        self.inputs = [
            SourceInput(n, tuple(-1 if d is None else int(d) for d in kwargs[n].shape.as_list()))
            for n in self._names
        ]
        self.output_names = sorted(self._fn.structured_outputs)
        self.framework = f"tensorflow {_dist_version('tensorflow-cpu', 'tensorflow')}"
        self._tf = tf

    def run(self, feeds: Sequence[F32]) -> list[F32]:
        out = self._fn(**{n: self._tf.constant(x) for n, x in zip(self._names, feeds, strict=True)})
        return [np.asarray(out[n], dtype=np.float32) for n in self.output_names]


class OnnxRunner:
    """An ONNX model in onnxruntime (CPU)."""

    def __init__(self, path: Path) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ConversionError(
                f"{path}: verifying an ONNX conversion needs onnxruntime: "
                "pip install 'edge-agent[onnx]'"
            ) from exc
        try:
            self._session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ConversionError(f"onnxruntime cannot load {path}: {exc}") from exc
        self.inputs = [
            SourceInput(i.name, tuple(d if isinstance(d, int) else -1 for d in i.shape))
            for i in self._session.get_inputs()
        ]
        self.output_names = [o.name for o in self._session.get_outputs()]
        self.framework = f"onnxruntime {ort.__version__}"

    def run(self, feeds: Sequence[F32]) -> list[F32]:
        named = {i.name: np.asarray(x, np.float32) for i, x in zip(self.inputs, feeds, strict=True)}
        return [np.asarray(o, dtype=np.float32) for o in self._session.run(None, named)]


# --------------------------------------------------------------------------- layouts


def _channels_last(n: int) -> tuple[int, ...]:
    return (0, *range(2, n), 1)


def infer_layout(source: SourceInput, name: str, shape: Sequence[int]) -> InputLayout:
    """How the source's layout becomes the input ``name`` of ``shape`` (batch included): a
    permutation of the axes when the shapes are one (as-is preferred, then onnx2tf's
    channels-last move), else a reshape of the same number of values. ``ConversionError`` when
    neither fits."""
    dst = [1 if d is None or d < 0 else int(d) for d in shape]
    src = [dst[0] if d < 0 and i == 0 else d for i, d in enumerate(source.shape)]

    def layout(perm: list[int] | None) -> InputLayout:
        return InputLayout(
            input=name,
            source_name=source.name,
            source_shape=list(source.shape),
            permutation=perm,
        )

    if len(src) == len(dst) and all(d > 0 for d in src):
        candidates = [
            tuple(range(len(src))),
            _channels_last(len(src)),
            *itertools.permutations(range(len(src))),
        ]
        for perm in candidates:
            if perm[0] == 0 and [src[p] for p in perm] == dst:
                identity = list(perm) == list(range(len(src)))
                return layout(None if identity else list(perm))
    known = [d for d in src[1:] if d > 0]
    if len(known) == len(src) - 1 and np.prod(known) == np.prod(dst[1:]):
        return layout(None)  # the same values, reshaped
    raise ConversionError(
        f"input {source.name!r}: the source takes {tuple(source.shape)}, the converted model "
        f"{tuple(dst)}: no transpose or reshape maps one to the other"
    )


def to_model_layout(
    dataset: Dataset, layouts: Sequence[InputLayout], shapes: Sequence[Sequence[int]]
) -> Dataset:
    """``dataset`` (in the source's layout) laid out as inputs of ``shapes`` take it."""
    arrays = [
        lay.to_model(x, [1 if d is None or d < 0 else d for d in shape]).astype(np.float32)
        for lay, x, shape in zip(layouts, dataset.inputs, shapes, strict=True)
    ]
    return Dataset(dataset.source, arrays, dataset.labels)


def match_inputs(runner: SourceRunner, models: Sequence[TensorInfo]) -> list[InputLayout]:
    """One layout per model input (in the model's order), matched to the source's inputs by
    name where the names agree, else by position."""
    by_name = {s.name: s for s in runner.inputs}
    names = [clean_name(t.name) for t in models]
    if set(names) <= set(by_name):
        sources = [by_name[n] for n in names]
    elif len(runner.inputs) == len(models):
        sources = list(runner.inputs)
    else:
        raise ConversionError(
            f"the source has {len(runner.inputs)} inputs, the converted model {len(models)}"
        )
    return [infer_layout(s, t.name, t.shape) for s, t in zip(sources, models, strict=True)]


def clean_name(name: str) -> str:
    """``serving_default_window:0`` -> ``window``: the name the trained model gave the input."""
    base = name.removeprefix("serving_default_")
    head, sep, tail = base.rpartition(":")
    return head if sep and tail.isdigit() else base


def run_source(runner: SourceRunner, dataset: Dataset) -> list[F32]:
    """The source's outputs for every sample, one ``(N, ...)`` array per output."""
    per: list[list[F32]] = [[] for _ in runner.output_names]
    for i in range(len(dataset)):
        for acc, out in zip(per, runner.run(dataset.sample(i)), strict=True):
            acc.append(out)
    return [np.concatenate(a, axis=0) for a in per]


def source_runner(
    kind: str, path: Path | None, saved_model_dir: Path | None
) -> SourceRunner | None:
    """The runner for a source of ``kind`` (None for a .tflite source: nothing to compare)."""
    if kind == "onnx" and path is not None:
        return OnnxRunner(path)
    if kind in ("keras", "saved_model") and saved_model_dir is not None:
        return SavedModelRunner(saved_model_dir)
    return None
