"""What "normal" looks like for one model: the reference statistics a package carries.

The converters compute a ``Reference`` from the calibration (and validation) data and put it
in the manifest, so it is signed with the model; the device (``agent.pipeline.drift``) keeps
the same histograms over its recent windows and compares them (``psi``). Both sides bin
values with ``bin_counts``: one definition of the bins.

Inputs are per channel, in the model's input space (normalised, before quantisation): mean,
std, quantiles at ``QUANTILE_LEVELS`` and a histogram of ``bins`` equal bins over the
calibration range ``[lo, hi]`` with one bin below and one above (``hist`` has ``bins + 2``
shares, out-of-range first and last). The output is class shares of the top-1 (classification)
or the first output value's quantiles and histogram (regression, anomaly).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, model_validator

REFERENCE_SCHEMA_VERSION = 1
QUANTILE_LEVELS = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
DEFAULT_BINS = 16
PSI_FLOOR = 1e-4
"""Shares below this count as this in ``psi`` (an empty bin would make it infinite)."""
MAX_REFERENCE_CHANNELS = 1024
"""A reference describes at most this many channels (keeps the manifest small)."""

F64 = npt.NDArray[np.float64]


class _Schema(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _round(values: npt.ArrayLike) -> list[float]:
    """Shares and statistics with 6 significant digits: small manifests, exact enough."""
    return [float(f"{v:.6g}") for v in np.asarray(values, np.float64).reshape(-1)]


class Histogram(_Schema):
    """``bins`` equal bins over ``[lo, hi]`` plus one below and one above."""

    lo: float = Field(description="Lower edge of the first in-range bin.")
    hi: float = Field(description="Upper edge of the last in-range bin (inclusive).")
    hist: list[float] = Field(
        min_length=3,
        description="Shares (sum 1): [below lo, bins..., above hi].",
    )

    @model_validator(mode="after")
    def _order(self) -> Histogram:
        if not self.hi > self.lo:
            raise ValueError(f"hi ({self.hi}) must be above lo ({self.lo})")
        return self

    @property
    def bins(self) -> int:
        return len(self.hist) - 2


class ChannelReference(Histogram):
    """One input channel's statistics over the reference data."""

    mean: float = Field(description="Mean of the channel's values.")
    std: float = Field(ge=0, description="Standard deviation of the channel's values.")
    quantiles: list[float] = Field(description="Values at QUANTILE_LEVELS.")


class OutputReference(_Schema):
    """The model's output over the reference data."""

    kind: Literal["classes", "scores"] = Field(
        description="'classes': top-1 shares; 'scores': the first output value's distribution."
    )
    frequencies: list[float] | None = Field(
        default=None, description="classes: share of windows whose top-1 is each class."
    )
    scores: ChannelReference | None = Field(
        default=None, description="scores: statistics and histogram of the score."
    )

    @model_validator(mode="after")
    def _kind(self) -> OutputReference:
        if (self.kind == "classes") != (self.frequencies is not None) or (
            self.kind == "scores"
        ) != (self.scores is not None):
            raise ValueError("classes carry frequencies, scores carry scores (and only that)")
        return self


class Reference(_Schema):
    """The reference statistics of one model version (the manifest's ``reference``)."""

    schema_version: Literal[1] = Field(default=1, description="Version of this schema.")
    source: str = Field(description="The data the statistics were computed from (file names).")
    windows: int = Field(ge=1, description="Windows (samples of the data set) used.")
    values_per_channel: int = Field(ge=1, description="Values per channel those windows hold.")
    quantile_levels: list[float] = Field(
        default_factory=lambda: list(QUANTILE_LEVELS), description="Levels of ``quantiles``."
    )
    channels: list[ChannelReference] = Field(
        min_length=1, max_length=MAX_REFERENCE_CHANNELS, description="One per input channel."
    )
    output: OutputReference | None = Field(
        default=None, description="The output distribution (null for raw outputs)."
    )

    @model_validator(mode="after")
    def _same_bins(self) -> Reference:
        if len({c.bins for c in self.channels}) != 1:
            raise ValueError("every channel has the same number of bins")
        return self

    @property
    def bins(self) -> int:
        return self.channels[0].bins

    def ranges(self) -> tuple[F64, F64]:
        """Per-channel ``lo`` and ``hi`` as arrays (for ``bin_counts``)."""
        lo = np.array([c.lo for c in self.channels], np.float64)
        hi = np.array([c.hi for c in self.channels], np.float64)
        return lo, hi

    def shares(self) -> F64:
        """``(channels, bins + 2)`` reference shares."""
        return np.array([c.hist for c in self.channels], np.float64)


# --------------------------------------------------------------------------- shared maths


def bin_counts(
    values: npt.NDArray[np.floating], lo: F64, hi: F64, bins: int
) -> npt.NDArray[np.int64]:
    """Counts ``(channels, bins + 2)`` of ``values`` ``(n, channels)``: below ``lo``, ``bins``
    equal bins over ``[lo, hi]`` (``hi`` falls in the last), above ``hi``. Vectorised: a few
    ufunc passes and one ``bincount``, whatever ``n``."""
    x = np.asarray(values)
    channels = x.shape[-1]
    x = x.reshape(-1, channels)
    lo_t = lo.astype(x.dtype)
    scale = (bins / (hi - lo)).astype(x.dtype)
    t = np.subtract(x, lo_t)
    t *= scale
    np.floor(t, t)
    np.clip(t, -1.0, bins - 1, t)  # x == hi lands in the last bin
    idx = t.astype(np.int64)
    idx[x > hi.astype(x.dtype)] = bins  # above; NaN compares False and stays in range
    idx += 1
    idx += np.arange(channels, dtype=np.int64) * (bins + 2)
    counts = np.bincount(idx.reshape(-1), minlength=channels * (bins + 2))
    return counts.reshape(channels, bins + 2)


def psi(counts: npt.NDArray[np.integer | np.floating], reference: F64) -> F64:
    """Population stability index per row: ``sum((p - q) * ln(p / q))`` over the bins, with
    ``p`` the shares of ``counts`` and ``q`` the reference shares, both floored at
    ``PSI_FLOOR``. 0 for the same distribution; above 0.25 is a large shift by convention."""
    c = np.asarray(counts, np.float64)
    total = c.sum(axis=-1, keepdims=True)
    p = np.maximum(c / np.maximum(total, 1.0), PSI_FLOOR)
    q = np.maximum(reference, PSI_FLOOR)
    out: F64 = np.sum((p - q) * np.log(p / q), axis=-1)
    return out


def _channel(values: F64, lo: float, hi: float, bins: int) -> ChannelReference:
    if not hi > lo:  # a constant channel: a small range around it
        pad = max(abs(lo) * 1e-3, 1e-3)
        lo, hi = lo - pad, hi + pad
    counts = bin_counts(values.reshape(-1, 1), np.array([lo]), np.array([hi]), bins)[0]
    return ChannelReference(
        lo=lo,
        hi=hi,
        hist=_round(counts / counts.sum()),
        mean=_round([values.mean()])[0],
        std=_round([values.std()])[0],
        quantiles=_round(np.quantile(values, QUANTILE_LEVELS)),
    )


def compute_reference(
    inputs: npt.NDArray[np.floating],
    channels: int,
    *,
    outputs: npt.NDArray[np.floating] | None = None,
    output_kind: Literal["classes", "scores"] | None = None,
    source: str,
    bins: int = DEFAULT_BINS,
) -> Reference:
    """The reference of ``inputs`` ``(windows, ...)`` whose values are ``channels``-last, and of
    the model's first output ``(windows, ...)`` for ``output_kind``."""
    x = np.asarray(inputs, np.float64)
    windows = int(x.shape[0])
    per = x.reshape(-1, channels)
    chans = [
        _channel(per[:, c], float(per[:, c].min()), float(per[:, c].max()), bins)
        for c in range(channels)
    ]
    out = None
    if outputs is not None and output_kind is not None:
        y = np.asarray(outputs, np.float64).reshape(windows, -1)
        if output_kind == "classes":
            top = np.argmax(y, axis=1)
            freq = np.bincount(top, minlength=y.shape[1]) / windows
            out = OutputReference(kind="classes", frequencies=_round(freq))
        else:
            s = y[:, 0]
            out = OutputReference(
                kind="scores", scores=_channel(s, float(s.min()), float(s.max()), bins)
            )
    return Reference(
        source=source,
        windows=windows,
        values_per_channel=int(per.shape[0]),
        channels=chans,
        output=out,
    )
