"""Preprocessing: per-channel normalisation of windows, and the check that windows fit the model.

``Preprocessor`` turns the configured statistics into one ``scale`` and one ``offset`` per
channel at startup, so a window is normalised as ``x * scale + offset``: two ufunc calls on
arrays tiled to the window's shape, no per-window allocation when ``out`` is given. It doubles
as the windower's ``transform`` (``Preprocessor(src, out)``), which fuses the window copy and
the multiply into one pass.

``Encoder`` goes one step further for the streaming pipeline: it folds the normalisation and
the model input's own quantization into one pass, so the windower (in the source thread)
writes int8 windows the interpreter takes as they are (``Model.run_native``).

``check_model_input`` (``agent.model.compat``, re-exported here) validates at startup that the
model input takes one window ``(1, length, channels)`` or a layout with the same memory order,
and returns the shape to reshape each window to. A mismatch raises ``ShapeMismatch`` naming
the config keys to change.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from agent.config import PreprocessSection
from agent.errors import ConfigError, ShapeMismatch
from agent.model.compat import check_model_input
from agent.model.runtime import INT_RANGES, fast_clip

__all__ = ["Encoder", "FeedSpec", "Preprocessor", "check_model_input"]

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]


class Preprocessor:
    """Per-channel normalisation: ``none``, ``standard`` ((x-mean)/std) or ``minmax``."""

    def __init__(self, cfg: PreprocessSection, channels: int) -> None:
        self.mode = cfg.normalize
        self.channels = channels
        scale = np.ones(channels, np.float64)
        offset = np.zeros(channels, np.float64)
        if cfg.normalize == "standard":
            mean = self._stats(cfg.mean, "mean")
            std = self._stats(cfg.std, "std")
            scale = 1.0 / std
            offset = -mean * scale
        elif cfg.normalize == "minmax":
            lo = self._stats(cfg.min, "min")
            hi = self._stats(cfg.max, "max")
            scale = 1.0 / (hi - lo)
            offset = -lo * scale
        self.scale: F32 = scale.astype(np.float32)
        """Per channel: ``y = x * scale + offset``."""
        self.offset: F32 = offset.astype(np.float32)
        self._tiled: dict[int, tuple[F32, F32]] = {}

    def _stats(self, values: Sequence[float] | None, key: str) -> npt.NDArray[np.float64]:
        if values is None or len(values) != self.channels:
            got = "none" if values is None else f"{len(values)} value(s)"
            raise ConfigError(
                [(f"preprocess.{key}", f"needs one value per channel ({self.channels}), got {got}")]
            )
        return np.asarray(values, np.float64)

    @property
    def identity(self) -> bool:
        """True when windows pass through unchanged (``normalize = 'none'``)."""
        return self.mode == "none"

    def _for(self, x: F32) -> tuple[F32, F32]:
        return _per_row(self._tiled, self.scale, self.offset, x)

    def __call__(self, x: F32, out: F32 | None = None) -> F32:
        """Normalise ``x`` (..., channels) into ``out`` (may be ``x`` itself) or a new array."""
        if x.shape[-1] != self.channels:
            raise ShapeMismatch(
                f"preprocess: got {x.shape[-1]} channel(s) in shape {x.shape}, "
                f"configured for {self.channels}"
            )
        if self.mode == "none":
            if out is None:
                return x
            np.copyto(out, x)
            return out
        scale, offset = self._for(x)
        if out is None:
            out = np.multiply(x, scale, dtype=np.float32)
        else:
            np.multiply(x, scale, out)
        np.add(out, offset, out)
        return out


def _per_row(cache: dict[int, tuple[F32, F32]], a: F32, b: F32, x: F32) -> tuple[F32, F32]:
    """The per-channel ``a`` and ``b`` tiled to ``x``'s rows (cached per row count), so a
    ufunc on ``x`` needs no broadcast."""
    if x.ndim < 2:
        return a, b
    rows = x.shape[-2]
    pair = cache.get(rows)
    if pair is None:
        if len(cache) >= 8:  # windows have one length; blocks vary: do not grow
            return a, b
        pair = (
            np.ascontiguousarray(np.broadcast_to(a, (rows, a.shape[0]))),
            np.ascontiguousarray(np.broadcast_to(b, (rows, b.shape[0]))),
        )
        cache[rows] = pair
    return pair


class FeedSpec(Protocol):
    """The part of ``agent.model.runtime.TensorInfo`` an ``Encoder`` reads (``Model.feed``)."""

    @property
    def name(self) -> str: ...
    @property
    def dtype(self) -> str: ...
    @property
    def scale(self) -> float: ...
    @property
    def zero_point(self) -> int: ...


class Encoder:
    """Writes windows in the model's own input type: normalise and quantize in one pass.

    The windower calls it (``encoder(src, out)``, ``out`` of ``encoder.dtype``) in the source
    thread that read the samples, so the inference thread hands the interpreter bytes it
    takes as they are. For a quantized input with scale ``s`` and zero point ``z`` the
    normalisation ``x * scale + offset`` and ``q = round(y / s) + z`` fold into
    ``q = clip(rint(x * a + b))`` with ``a = scale / s`` and ``b = offset / s + z`` per channel.
    ``rint`` rounds exact ties to even (TFLite's QUANTIZE rounds them away from zero): one LSB,
    only on exact ties. Out-of-range values saturate as in TFLite.
    """

    def __init__(self, pre: Preprocessor, feed: FeedSpec) -> None:
        self.pre = pre
        self.dtype = np.dtype(feed.dtype)
        self.quantized = feed.dtype in INT_RANGES
        if not self.quantized and self.dtype.kind != "f":
            raise ShapeMismatch(
                f"model input {feed.name!r} is {feed.dtype}: the pipeline feeds windows of "
                "float or quantized-integer inputs only"
            )
        s = feed.scale if feed.scale > 0.0 else 1.0  # an unquantized integer input: a cast
        self.scale = float(s)
        self.zero_point = int(feed.zero_point) if feed.scale > 0.0 else 0
        self._a = (pre.scale.astype(np.float64) / s).astype(np.float32)
        self._b = (pre.offset.astype(np.float64) / s + self.zero_point).astype(np.float32)
        lo, hi = INT_RANGES.get(feed.dtype, (0, 0))
        self._lo, self._hi = np.float32(lo), np.float32(hi)
        self._tiled: dict[int, tuple[F32, F32]] = {}

    def __call__(self, src: F32, out: npt.NDArray[Any]) -> None:
        """Encode ``src`` (..., length, channels) float32, maybe a strided view, into ``out``."""
        if not self.quantized:
            if out.dtype == np.float32:
                self.pre(src, out)
            else:  # float16/float64 input: normalise in float32, then cast
                np.copyto(out, self.pre(src), casting="unsafe")
            return
        a, b = _per_row(self._tiled, self._a, self._b, src)
        tmp = np.multiply(src, a, dtype=np.float32)
        np.add(tmp, b, tmp)
        np.rint(tmp, tmp)
        fast_clip(tmp, self._lo, self._hi, tmp)
        np.copyto(out, tmp, casting="unsafe")

    def decode(self, q: npt.NDArray[Any]) -> F32:
        """The normalised float window back from an encoded one (for ``score = 'mse'``)."""
        if not self.quantized:
            return np.asarray(q, np.float32)
        y: F32 = q.astype(np.float32)
        y -= np.float32(self.zero_point)
        y *= np.float32(self.scale)
        return y
