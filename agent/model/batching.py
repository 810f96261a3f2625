"""Several windows in one ``invoke()``: whether a model allows it, decided once at load.

``invoke_batch(model, size)`` returns an ``InvokeBatch`` (a second interpreter of the model
whose input's first dimension is resized to ``size``) or raises ``BatchUnsupported`` with the
reason. A model allows batching when all of these hold:

- ``size`` > 1 (``model.max_invoke_batch``; 1 turns batching off);
- it keeps no state between invokes (``Model.stateful``): a stateful model never batches,
  its windows must run in order on their stream's own interpreter;
- it has one input whose first dimension is 1 or -1 in ``shape_signature`` (and 1 as
  allocated), and the runtime resizes and allocates it (``Model.batched``);
- every output carries one row per window after the resize (``[1, ...]`` -> ``[size, ...]``);
- a smoke run of ``size`` windows (seeded pseudo-random values over the input type's whole
  range) in one invoke gives outputs *equal* to ``size`` single invokes, row by row. No
  tolerance: the int8 bench models (and the demo model) are bit-exact under XNNPACK; a model
  whose batched kernels round differently falls back to one invoke per window rather than
  publish anything the single path would not.

``pad_from``: a partial group of at least this many windows is padded to ``size`` (the
padding rows' outputs are dropped, never published); fewer run one invoke each. It is
measured in the smoke run (the quickest of three timings of each): padding costs one batched
invoke, the alternative one single invoke per window.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from agent.errors import BatchUnsupported, InferenceError, ShapeMismatch
from agent.model.runtime import Array, Model, TensorInfo

log = logging.getLogger(__name__)

_SEED = 20261202


@dataclass(frozen=True)
class InvokeBatch:
    """A batched interpreter of a stateless model, checked against single invokes."""

    model: Model
    """The interpreter whose ``run_native`` takes ``[size, ...]`` windows."""
    size: int
    pad_from: int
    """A partial group of at least this many windows is padded to ``size``; fewer run singly."""
    pad: Array
    """``[size, ...]`` zeros of the input type: the rows a partial group is padded with."""

    @property
    def run(self) -> Callable[[Array], list[Array]]:
        return self.model.run_native


def smoke_windows(feed: TensorInfo, size: int, seed: int = _SEED) -> Array:
    """``size`` windows for ``feed`` (its shape with the first dimension ``size``): integers
    over the whole range of an integer input, standard normal values for a float one."""
    shape = (size, *feed.shape[1:])
    rng = np.random.default_rng(seed)
    dtype = np.dtype(feed.dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    return rng.standard_normal(shape).astype(dtype)


def invoke_batch(model: Model, size: int) -> InvokeBatch:
    """The checked batched interpreter of ``model`` for ``size`` windows per invoke, or
    ``BatchUnsupported`` naming why not (module docstring)."""
    if size <= 1:
        raise BatchUnsupported(BatchUnsupported.OFF, "model.max_invoke_batch = 1")
    if model.stateful:
        raise BatchUnsupported(
            BatchUnsupported.STATEFUL,
            f"{model.label} keeps state between invokes: its windows run one by one, in order",
        )
    try:
        feed = model.feed
    except ShapeMismatch as exc:
        raise BatchUnsupported(BatchUnsupported.MULTI_INPUT, str(exc)) from exc
    batched = model.batched(size)
    singles_out = model.outputs
    for t1, tb in zip(singles_out, batched.outputs, strict=True):
        if t1.shape[:1] != (1,) or tb.shape != (size, *t1.shape[1:]):
            raise BatchUnsupported(
                BatchUnsupported.OUTPUT_SHAPE,
                f"{model.label}: output {t1.name!r} is {list(t1.shape)} for one window and "
                f"{list(tb.shape)} for {size} (want {[size, *t1.shape[1:]]})",
            )
    x = smoke_windows(feed, size)
    try:
        outs = batched.run_native(x)
        singles = [model.run_native(x[i : i + 1]) for i in range(size)]
    except (InferenceError, ShapeMismatch) as exc:
        raise BatchUnsupported(BatchUnsupported.SMOKE_FAILED, str(exc)) from exc
    for k, info in enumerate(singles_out):
        for i in range(size):
            got, want = outs[k][i : i + 1], singles[i][k]
            if not np.array_equal(got, want):
                diff = np.flatnonzero(got.ravel() != want.ravel())
                j = int(diff[0]) if diff.size else 0
                raise BatchUnsupported(
                    BatchUnsupported.MISMATCH,
                    f"{model.label}: output {info.name!r} of smoke window {i}: batched invoke "
                    f"gave {got.ravel()[j]!r} at element {j}, a single invoke "
                    f"{want.ravel()[j]!r} ({diff.size} element(s) differ)",
                )
    t_batch = _quickest(lambda: batched.run_native(x))
    first = x[:1]
    t_one = _quickest(lambda: model.run_native(first))
    pad_from = min(size, max(2, math.ceil(t_batch / max(t_one, 1e-9))))
    log.info(
        "%s: up to %d windows per invoke (smoke run equal to single invokes; %.1f us per "
        "window batched, %.1f us single; a partial group of >= %d windows is padded)",
        model.label,
        size,
        t_batch / size * 1e6,
        t_one * 1e6,
        pad_from,
    )
    return InvokeBatch(batched, size, pad_from, np.zeros_like(x))


def _quickest(call: Callable[[], object], runs: int = 3) -> float:
    best = math.inf
    for _ in range(runs):
        t0 = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - t0)
    return best
