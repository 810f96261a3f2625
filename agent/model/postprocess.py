"""Postprocessing: model outputs of one window -> the JSON-able ``outputs`` of a prediction.

One class per ``[postprocess] type`` behind the ``Postprocessor`` protocol, picked through the
explicit ``REGISTRY`` by ``build_postprocessor``, which checks at startup that the config fits
the model's output tensors (``ShapeMismatch`` naming the keys to change otherwise). The
payloads are documented in docs/payloads-outputs.md.

A call returns ``None`` for "do not publish" (classification with ``publish_on_change``).
Non-finite outputs raise ``InferenceError`` so the caller counts them (an OTA health signal)
instead of publishing invalid JSON. Floats are rounded to ``precision`` significant digits
(default 6; ``'lossless'``: the float32 value exactly, as its shortest round-trip repr). Per-stream
state (smoothing, last label, detection history) is keyed by the stream name and capped at
``max_streams`` streams (the oldest is forgotten first).

``detection`` (``agent.model.detection``) turns a stream of scores into events: rising edges of
a sliding mean, with a refractory period; it reads each window's first-sample index to report
the span of samples an event covers.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from agent.config import (
    MAX_STREAMS,
    AnomalyPost,
    ClassificationPost,
    DetectionPost,
    PostprocessConfig,
    RawPost,
    RegressionPost,
)
from agent.errors import ConfigError, InferenceError, ShapeMismatch
from agent.model.detection import DetectionPostprocessor
from agent.model.runtime import TensorLike

log = logging.getLogger(__name__)

Array = npt.NDArray[Any]
Payload = dict[str, Any]


def r6(x: float) -> float:
    """``x`` rounded to 6 significant digits (short in JSON: 0.996094, not 0.99609375)."""
    return float("%.6g" % x)  # noqa: UP031  (2x faster than an f-string here)


def _exact(x: float) -> float:
    return x


Rounder = Callable[[float], float]


def rounder(precision: int | str = 6) -> Rounder:
    """The rounding of ``postprocess.precision``: ``r6`` for 6 significant digits, the value
    itself for ``'lossless'`` (a float32 output converts to a Python float exactly, and JSON
    carries its shortest round-trip repr: the uint8/int8 output's dequantized value exactly)."""
    if precision == "lossless":
        return _exact
    if precision == 6:
        return r6
    fmt = f"%.{int(precision)}g"
    return lambda x: float(fmt % x)


class Postprocessor(Protocol):
    """Turns one window's model outputs into a prediction's ``outputs`` object."""

    kind: str

    def __call__(
        self, outputs: Sequence[Array], window: Array, stream: str, sample: int = 0
    ) -> Payload | None:
        """``outputs`` in the model's output order (float32), ``window`` the model input fed
        (after preprocessing), ``stream`` the window's stream, ``sample`` the stream-wide index
        of the window's first sample. None: do not publish."""
        ...

    def reset(self) -> None:
        """Forget per-stream state (smoothing history, last published label)."""
        ...


def _nonfinite(name: str, stream: str) -> InferenceError:
    return InferenceError(
        InferenceError.NON_FINITE, f"non-finite output {name!r} (NaN or Inf) for stream {stream!r}"
    )


def _fmt(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + (",)" if len(shape) == 1 else ")")


def _size(info: TensorLike) -> int:
    """Values per window in an output: its element count, a dynamic batch dim counted as 1."""
    shape = tuple(info.shape)
    dims = (1, *shape[1:]) if shape and shape[0] <= 0 else shape
    if any(d <= 0 for d in dims):
        raise ShapeMismatch(f"model output {info.name!r} has a dynamic shape {_fmt(shape)}")
    return math.prod(dims)


def _describe(infos: Sequence[TensorLike]) -> str:
    return ", ".join(f"{i.name!r} {_fmt(i.shape)}" for i in infos) or "none"


def _pick(infos: Sequence[TensorLike], name: str | None) -> int:
    """Index of the output named ``name`` (``postprocess.output``), default the first."""
    if not infos:
        raise ShapeMismatch("the model has no outputs")
    if name is None:
        return 0
    for i, info in enumerate(infos):
        if info.name == name:
            return i
    raise ShapeMismatch(
        f"postprocess.output = {name!r}: the model has no output of that name; "
        f"its outputs are {_describe(infos)}"
    )


# --------------------------------------------------------------------------- classification


class _Smoother:
    """Mean of the last ``n`` score vectors: a ring plus a running sum (float64)."""

    __slots__ = ("filled", "pos", "ring", "total")

    def __init__(self, n: int, k: int) -> None:
        self.ring = np.zeros((n, k), np.float64)
        self.total = np.zeros(k, np.float64)
        self.pos = 0
        self.filled = 0

    def add(self, scores: Array) -> list[float]:
        row = self.ring[self.pos]
        self.total -= row
        row[:] = scores
        self.total += row
        self.pos += 1
        if self.pos == self.ring.shape[0]:
            self.pos = 0
            self.total = self.ring.sum(axis=0)  # re-sum once per lap: no drift
        if self.filled < self.ring.shape[0]:
            self.filled += 1
        mean: list[float] = (self.total / self.filled).tolist()
        return mean


_UNSET = object()


_NUMPY_FROM = 32  # classes from which NumPy beats a Python list of the scores


class ClassificationPostprocessor:
    """Labels, top-k, threshold, smoothing over the last N windows, publish-on-change."""

    kind = "classification"

    def __init__(
        self,
        index: int,
        name: str,
        labels: Sequence[str],
        *,
        top_k: int = 1,
        threshold: float = 0.0,
        smoothing: int = 1,
        publish_on_change: bool = False,
        max_streams: int = MAX_STREAMS,
        precision: int | str = 6,
    ) -> None:
        self._r = rounder(precision)
        self.index = index
        self.name = name
        self.labels = list(labels)
        self.top_k = min(top_k, len(self.labels))
        self.threshold = threshold
        self.smoothing = smoothing
        self.publish_on_change = publish_on_change
        self.max_streams = max_streams
        self._smoothers: dict[str, _Smoother] = {}
        self._last: dict[str, object] = {}

    def reset(self) -> None:
        self._smoothers.clear()
        self._last.clear()

    def _smoother(self, stream: str) -> _Smoother:
        s = self._smoothers.get(stream)
        if s is None:
            if len(self._smoothers) >= self.max_streams:
                del self._smoothers[next(iter(self._smoothers))]
            s = self._smoothers[stream] = _Smoother(self.smoothing, len(self.labels))
        return s

    def __call__(
        self, outputs: Sequence[Array], window: Array, stream: str, sample: int = 0
    ) -> Payload | None:
        raw = outputs[self.index]
        if raw.size > _NUMPY_FROM and self.smoothing == 1:
            return self._many(raw.ravel(), stream)
        scores: list[float] = raw.ravel().tolist()
        if not math.isfinite(sum(scores)):
            raise _nonfinite(self.name, stream)
        if len(scores) != len(self.labels):
            raise InferenceError(
                InferenceError.OUTPUT_SIZE,
                f"output {self.name!r} has {len(scores)} values, expected {len(self.labels)}",
            )
        if self.smoothing > 1:
            scores = self._smoother(stream).add(raw.ravel())
        labels, r = self.labels, self._r
        if self.top_k == 1:
            best = max(scores)
            i = scores.index(best)  # the first of equal scores, as nlargest does
            score = r(best)
            top = [{"label": labels[i], "score": score}]
        else:
            order = heapq.nlargest(self.top_k, range(len(scores)), key=scores.__getitem__)
            i = order[0]
            best = scores[i]
            score = r(best)
            top = [{"label": labels[j], "score": r(scores[j])} for j in order]
        return self._publish(stream, labels[i] if best >= self.threshold else None, score, top)

    def _many(self, flat: Array, stream: str) -> Payload | None:
        """``__call__`` for outputs with many classes (ImageNet's 1,000): the same result, with
        NumPy scanning the scores instead of a Python list of them (~10x less time)."""
        if not np.isfinite(flat).all():  # (a sum of inf and -inf warns)
            raise _nonfinite(self.name, stream)
        if flat.size != len(self.labels):
            raise InferenceError(
                InferenceError.OUTPUT_SIZE,
                f"output {self.name!r} has {flat.size} values, expected {len(self.labels)}",
            )
        labels, k = self.labels, self.top_k
        if k == 1:
            order = [int(flat.argmax())]  # the first of equal scores
        else:
            kth = np.partition(flat, flat.size - k)[flat.size - k]
            cand = np.flatnonzero(flat >= kth)  # ascending: ties keep the lower index first
            order = [int(j) for j in cand[np.argsort(-flat[cand], kind="stable")[:k]]]
        scores = flat[order].tolist()
        best = scores[0]
        r = self._r
        score = r(best)
        top = [{"label": labels[j], "score": r(v)} for j, v in zip(order, scores, strict=True)]
        label = labels[order[0]] if best >= self.threshold else None
        return self._publish(stream, label, score, top)

    def rows(self, outputs: Sequence[Array], streams: Sequence[str]) -> list[Result]:
        """``__call__`` for ``len(streams)`` windows whose outputs are stacked on the first
        axis (one batched invoke): the same payloads, in order, with the scan (finiteness,
        argmax / top-k) done over the whole batch by NumPy. A failing window's entry is its
        ``InferenceError``. Smoothing keeps per-window state: it runs window by window."""
        m = len(streams)
        if self.smoothing > 1:
            return [_one(self, outputs, j, streams[j]) for j in range(m)]
        scores = outputs[self.index].reshape(m, -1)
        labels, r, k, thr = self.labels, self._r, self.top_k, self.threshold
        if scores.shape[1] != len(labels):
            return [
                InferenceError(
                    InferenceError.OUTPUT_SIZE,
                    f"output {self.name!r} has {scores.shape[1]} values, expected {len(labels)}",
                )
                for _ in range(m)
            ]
        finite: list[bool] = np.isfinite(scores).all(axis=1).tolist()  # type: ignore[assignment]
        out: list[Result] = []
        if k == 1:
            best_i = scores.argmax(axis=1)  # the first of equal scores, as max() does
            best = scores[np.arange(m), best_i].tolist()
            for j, i in enumerate(best_i.tolist()):
                if not finite[j]:
                    out.append(_nonfinite(self.name, streams[j]))
                    continue
                b = best[j]
                score = r(b)
                top = [{"label": labels[i], "score": score}]
                out.append(self._publish(streams[j], labels[i] if b >= thr else None, score, top))
            return out
        # descending, ties in index order (as heapq.nlargest and the partition path)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        values = np.take_along_axis(scores, order, axis=1).tolist()
        for j, idx in enumerate(order.tolist()):
            if not finite[j]:
                out.append(_nonfinite(self.name, streams[j]))
                continue
            vals = values[j]
            top = [{"label": labels[i], "score": r(v)} for i, v in zip(idx, vals, strict=True)]
            b = vals[0]
            label = labels[idx[0]] if b >= thr else None
            out.append(self._publish(streams[j], label, top[0]["score"], top))
        return out

    def _publish(
        self, stream: str, label: str | None, score: float, top: list[dict[str, Any]]
    ) -> Payload | None:
        if self.publish_on_change:
            if self._last.get(stream, _UNSET) == label:
                return None
            if stream not in self._last and len(self._last) >= self.max_streams:
                del self._last[next(iter(self._last))]
            self._last[stream] = label
        return {"label": label, "score": score, "top": top}


# --------------------------------------------------------------------------- batches

Result = Payload | None | InferenceError
"""One window's outcome in a batch: its payload, None (do not publish), or why it failed."""


def _one(
    post: Postprocessor,
    outputs: Sequence[Array],
    j: int,
    stream: str,
    window: Any = None,
    sample: int = 0,
) -> Result:
    try:
        return post([o[j : j + 1] for o in outputs], window, stream, sample)
    except InferenceError as exc:
        return exc


def postprocess_rows(
    post: Postprocessor,
    outputs: Sequence[Array],
    streams: Sequence[str],
    samples: Sequence[int],
    windows: Callable[[int], Array] | None = None,
) -> list[Result]:
    """The outcomes of ``len(streams)`` windows whose outputs are stacked on the first axis
    (one batched invoke), equal to one ``post`` call per window in order (each with its own
    ``[1, ...]`` rows): vectorised for classification, window by window for the others.
    ``windows(j)`` gives window ``j``'s input when the postprocessor reads it (anomaly MSE)."""
    if isinstance(post, ClassificationPostprocessor):
        return post.rows(outputs, streams)
    return [
        _one(post, outputs, j, streams[j], windows(j) if windows else None, samples[j])
        for j in range(len(streams))
    ]


# --------------------------------------------------------------------------- regression


class RegressionPostprocessor:
    """The output's values, named (``{name: value}``) or as a list."""

    kind = "regression"

    def __init__(
        self, index: int, name: str, names: Sequence[str], precision: int | str = 6
    ) -> None:
        self._r = rounder(precision)
        self.index = index
        self.name = name
        self.names = list(names)

    def reset(self) -> None:
        pass

    def __call__(
        self, outputs: Sequence[Array], window: Array, stream: str, sample: int = 0
    ) -> Payload | None:
        values: list[float] = outputs[self.index].ravel().tolist()
        if not math.isfinite(sum(values)):
            raise _nonfinite(self.name, stream)
        r = self._r
        rounded = [r(v) for v in values]
        if self.names:
            if len(rounded) != len(self.names):
                raise InferenceError(
                    InferenceError.OUTPUT_SIZE,
                    f"output {self.name!r} has {len(rounded)} values, expected {len(self.names)}",
                )
            return {"values": dict(zip(self.names, rounded, strict=True))}
        return {"values": rounded}


# --------------------------------------------------------------------------- anomaly


class AnomalyPostprocessor:
    """A score (the output, or the MSE between output and input) against a threshold."""

    kind = "anomaly"

    def __init__(
        self,
        index: int,
        name: str,
        threshold: float,
        *,
        mse: bool = False,
        precision: int | str = 6,
    ) -> None:
        self._r = rounder(precision)
        self.index = index
        self.name = name
        self.threshold = threshold
        self.mse = mse

    def reset(self) -> None:
        pass

    def __call__(
        self, outputs: Sequence[Array], window: Array, stream: str, sample: int = 0
    ) -> Payload | None:
        out = outputs[self.index]
        if self.mse:
            flat = out.ravel()
            ref = window.ravel()
            if flat.shape != ref.shape:
                raise InferenceError(
                    InferenceError.OUTPUT_SIZE,
                    f"output {self.name!r} has {flat.size} values, the input {ref.size}: "
                    "score = 'mse' needs equal sizes",
                )
            diff = flat.astype(np.float64) - ref
            score = float(np.dot(diff, diff)) / diff.size
        else:
            score = float(out.item(0))
        if not math.isfinite(score):
            raise _nonfinite(self.name, stream)
        return {
            "anomaly": score > self.threshold,
            "score": self._r(score),
            "threshold": self.threshold,
        }


# --------------------------------------------------------------------------- raw


class RawPostprocessor:
    """Every output tensor as a nested list (the tensor's own shape), by output name."""

    kind = "raw"

    def __init__(self, names: Sequence[str], precision: int | str = 6) -> None:
        self._r = rounder(precision)
        self.names = list(names)

    def reset(self) -> None:
        pass

    def __call__(
        self, outputs: Sequence[Array], window: Array, stream: str, sample: int = 0
    ) -> Payload | None:
        tensors: dict[str, Any] = {}
        for name, out in zip(self.names, outputs, strict=True):
            if not np.isfinite(out).all():
                raise _nonfinite(name, stream)
            r = self._r
            flat = [r(v) for v in out.ravel().tolist()]
            tensors[name] = np.asarray(flat, np.float64).reshape(out.shape).tolist()
        return {"tensors": tensors}


# --------------------------------------------------------------------------- building


@dataclass(frozen=True)
class BuildContext:
    """What a builder checks the config against."""

    outputs: Sequence[TensorLike]
    labels_from_manifest: Sequence[str] | None
    input_size: int | None
    max_streams: int
    window_length: int = 1


def _labels(
    cfg: ClassificationPost | DetectionPost, ctx: BuildContext
) -> tuple[int, TensorLike, list[str], str]:
    """The output's index and info, its labels and where they came from, checked."""
    index = _pick(ctx.outputs, cfg.output)
    info = ctx.outputs[index]
    classes = _size(info)
    where = f"model output {info.name!r} {_fmt(info.shape)} has {classes} class(es)"
    if cfg.labels:
        labels, origin = list(cfg.labels), "postprocess.labels"
    elif ctx.labels_from_manifest:
        labels, origin = list(ctx.labels_from_manifest), "the model package's labels"
    else:
        labels, origin = [str(i) for i in range(classes)], ""
    if len(labels) != classes:
        raise ShapeMismatch(
            f"{origin} has {len(labels)} label(s) but {where}: set postprocess.labels to "
            f"{classes} class names in output order"
            + (" (or leave it empty to use '0', '1', ...)" if origin.startswith("post") else "")
        )
    if len(set(labels)) != len(labels):
        raise ShapeMismatch(f"{origin} has repeated labels: {labels}")
    return index, info, labels, where


def _build_classification(cfg: PostprocessConfig, ctx: BuildContext) -> Postprocessor:
    assert isinstance(cfg, ClassificationPost)
    index, info, labels, where = _labels(cfg, ctx)
    classes = len(labels)
    if cfg.top_k > classes:
        raise ShapeMismatch(f"postprocess.top_k = {cfg.top_k} but {where}")
    return ClassificationPostprocessor(
        index,
        info.name,
        labels,
        top_k=cfg.top_k,
        threshold=cfg.threshold,
        smoothing=cfg.smoothing,
        publish_on_change=cfg.publish_on_change,
        max_streams=ctx.max_streams,
        precision=cfg.precision,
    )


def _build_regression(cfg: PostprocessConfig, ctx: BuildContext) -> Postprocessor:
    assert isinstance(cfg, RegressionPost)
    index = _pick(ctx.outputs, cfg.output)
    info = ctx.outputs[index]
    size = _size(info)
    if cfg.names and len(cfg.names) != size:
        raise ShapeMismatch(
            f"postprocess.names has {len(cfg.names)} name(s) but model output {info.name!r} "
            f"{_fmt(info.shape)} has {size} value(s): give {size} names, or none for a list"
        )
    if len(set(cfg.names)) != len(cfg.names):
        raise ShapeMismatch(f"postprocess.names has repeated names: {cfg.names}")
    return RegressionPostprocessor(index, info.name, cfg.names, cfg.precision)


def _build_anomaly(cfg: PostprocessConfig, ctx: BuildContext) -> Postprocessor:
    assert isinstance(cfg, AnomalyPost)
    index = _pick(ctx.outputs, cfg.output)
    info = ctx.outputs[index]
    size = _size(info)
    if cfg.score == "value" and size != 1:
        raise ShapeMismatch(
            f"postprocess.score = 'value' needs a single-value output, but model output "
            f"{info.name!r} {_fmt(info.shape)} has {size} values; for an autoencoder set "
            f"postprocess.score = 'mse', or pick the score with postprocess.output "
            f"(outputs: {_describe(ctx.outputs)})"
        )
    if cfg.score == "mse":
        if ctx.input_size is None:
            raise ValueError("build_postprocessor: input_size is needed for score = 'mse'")
        if size != ctx.input_size:
            raise ShapeMismatch(
                f"postprocess.score = 'mse' compares the output with the model input, but "
                f"model output {info.name!r} {_fmt(info.shape)} has {size} values and the "
                f"input {ctx.input_size} (window.length x channels)"
            )
    return AnomalyPostprocessor(
        index, info.name, cfg.threshold, mse=cfg.score == "mse", precision=cfg.precision
    )


def _build_raw(cfg: PostprocessConfig, ctx: BuildContext) -> Postprocessor:
    assert isinstance(cfg, RawPost)
    if not ctx.outputs:
        raise ShapeMismatch("the model has no outputs")
    names: list[str] = []
    for i, info in enumerate(ctx.outputs):
        name = info.name or f"output_{i}"
        names.append(name if name not in names else f"{name}_{i}")
    return RawPostprocessor(names, cfg.precision)


def _build_detection(cfg: PostprocessConfig, ctx: BuildContext) -> Postprocessor:
    assert isinstance(cfg, DetectionPost)
    index, info, labels, _ = _labels(cfg, ctx)
    unknown = sorted((set(cfg.thresholds) | set(cfg.ignore)) - set(labels))
    if unknown:
        raise ShapeMismatch(
            f"postprocess.thresholds / postprocess.ignore name label(s) {unknown} the model "
            f"output {info.name!r} does not have; its labels are {labels}"
        )
    return DetectionPostprocessor(
        index,
        info.name,
        labels,
        average=cfg.average_windows,
        thresholds=[cfg.thresholds.get(label, cfg.threshold) for label in labels],
        ignore=cfg.ignore,
        refractory=cfg.refractory_windows,
        heartbeat=cfg.heartbeat_windows,
        window_length=ctx.window_length,
        max_streams=ctx.max_streams,
        round_=rounder(cfg.precision),
    )


Builder = Callable[[PostprocessConfig, BuildContext], Postprocessor]

REGISTRY: dict[str, Builder] = {
    "classification": _build_classification,
    "regression": _build_regression,
    "anomaly": _build_anomaly,
    "raw": _build_raw,
    "detection": _build_detection,
}


def build_postprocessor(
    cfg: PostprocessConfig,
    output_infos: Sequence[TensorLike],
    labels_from_manifest: Sequence[str] | None = None,
    *,
    input_size: int | None = None,
    max_streams: int = MAX_STREAMS,
    window_length: int = 1,
) -> Postprocessor:
    """Check ``cfg`` against the model's outputs and build its postprocessor.

    ``labels_from_manifest`` are used when ``postprocess.labels`` is empty; ``input_size``
    (window.length x channels) is required for anomaly ``score = 'mse'``; ``window_length``
    (samples per window) gives the sample spans of detection events.
    """
    try:
        builder = REGISTRY[cfg.type]
    except KeyError:
        problem = f"{cfg.type!r} is not one of {sorted(REGISTRY)}"
        raise ConfigError([("postprocess.type", problem)]) from None
    ctx = BuildContext(output_infos, labels_from_manifest, input_size, max_streams, window_length)
    post = builder(cfg, ctx)
    log.info("postprocess: %s on outputs %s", cfg.type, _describe(output_infos))
    return post
