"""Several windows in one ``invoke()``: whether a model allows it.

Decided in two steps, each logged once at INFO with its typed reason when the answer is no:

1. At load, ``invoke_batch(model, size)`` checks what the model declares and returns an
   ``InvokeBatch`` (or raises ``BatchUnsupported``): ``size`` > 1 (``model.max_invoke_batch``;
   1 turns batching off); the model keeps no state between invokes (``Model.stateful``: a
   stateful model never batches, its windows run in order on their stream's interpreter); it
   has one input whose first dimension is 1 or -1 in ``shape_signature`` and 1 as allocated.
2. The first time ``size`` windows are queued together (a fast source or a backlog: never at
   a sensor's pace), ``InvokeBatch.enable(windows)`` builds the batched interpreter (the input's
   first dimension resized to ``size``: ``Model.batched``) and runs those real windows once in
   one invoke and once one by one. Batching stays on only when every output carries one row
   per window and each row *equals* its single invoke. No tolerance: the int8 bench models,
   the demo model and the float test models are bit-exact under XNNPACK; a model whose batched
   kernels round differently keeps one invoke per window rather than publish anything the
   single path would not. The second interpreter is built then, not at load, because it costs
   memory a device that never backlogs should not pay (MobileNetV2 0.35/96: +8 MB at 8
   windows, +14 MB at 32: XNNPACK's packed weights again plus the batch's activations).

How many windows per invoke: up to ``model.max_invoke_batch``, and no more than fit in
``MAX_INVOKE_S`` (8 ms) of invoke by the check's single-invoke time, so a batch never holds
predictions back for long: on the development machine tiny, keyword and MobileNetV2 0.35/96
(0.13-0.25 ms per invoke) models 32. A model of which fewer than ``MIN_BATCH`` (8) windows
fit (a single invoke of 1 ms or more: MobileNetV2 1.0/224, ~2 ms) keeps one invoke per window
(``long_invoke``): the tens of microseconds of Python per invoke that batching saves do not
matter next to its invoke, and its second interpreter would cost a build stall and memory.

``pad_from``: a partial group of at least this many windows is padded to ``size`` (the padding
rows' outputs are dropped, never published); fewer run one invoke each. Measured in the check
(the quicker of two batched invokes against the quickest single one): padding costs one
batched invoke, the alternative one single invoke per window.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np

from agent.errors import BatchUnsupported, InferenceError, ShapeMismatch
from agent.model.runtime import Array, Model

log = logging.getLogger(__name__)

MIN_BATCH = 8
"""Fewest windows per invoke worth a second interpreter (fewer fit: ``long_invoke``)."""
MAX_INVOKE_S = 0.008
"""Longest a batched invoke should take (measured at the check from single invokes): it bounds
the wait it adds to its windows' predictions. A model whose invoke takes milliseconds gains
nothing from batching (the per-invoke Python work it saves is tens of microseconds)."""


class InvokeBatch:
    """Batching for a stateless single-input model: checked at first use (``enable``)."""

    def __init__(self, model: Model, size: int) -> None:
        self.single = model
        self.size = size
        """Windows per invoke: ``model.max_invoke_batch`` until ``enable`` has chosen (fewer
        when a batch of them would take longer than ``MAX_INVOKE_S``)."""
        self.pad_from = size
        """A partial group of at least this many windows is padded to ``size``; fewer run
        one invoke each (``size`` until ``enable`` has measured it)."""
        self.model: Model | None = None
        """The interpreter whose ``run_native`` takes ``[size, ...]`` windows, once enabled."""
        self.unsupported: BatchUnsupported | None = None
        """Why the first-use check turned batching off for good (None: on, or not checked)."""
        self.pad: Array | None = None

    @property
    def usable(self) -> bool:
        """Not (yet) found unusable: windows may still be grouped for it."""
        return self.unsupported is None

    def run(self, x: Array) -> list[Array]:
        """``size`` windows in one invoke (after ``enable`` returned True)."""
        assert self.model is not None
        return self.model.run_native(x)

    def enable(self, x: Array) -> bool:
        """Build the batched interpreter and check it on ``x`` (``size`` real windows):
        True when batching is on from now on; False (logged once, ``unsupported`` set) when
        this model keeps one invoke per window."""
        if self.model is not None:
            return True
        if self.unsupported is not None:
            return False
        try:
            self.model, size, self.pad_from = _checked(self.single, self.size, x)
        except BatchUnsupported as exc:
            self.unsupported = exc
            log.info(
                "%s: one invoke per window (%s: %s)", self.single.label, exc.reason, exc.detail
            )
            return False
        self.size = size
        self.pad = np.zeros_like(x[:size])
        return True


def invoke_batch(model: Model, size: int) -> InvokeBatch:
    """What ``model`` declares allows ``size`` windows per invoke: an ``InvokeBatch`` to
    ``enable`` at first use, or ``BatchUnsupported`` naming why not (module docstring)."""
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
    first = feed.shape_signature[0] if feed.shape_signature else feed.shape[0]
    if not feed.shape or feed.shape[0] != 1 or first not in (1, -1):
        raise BatchUnsupported(
            BatchUnsupported.BATCH_DIM,
            f"{model.label}: input {feed.name!r} {list(feed.shape_signature or feed.shape)} "
            "has no batch dimension of 1 or -1",
        )
    return InvokeBatch(model, size)


def _checked(model: Model, most: int, x: Array) -> tuple[Model, int, int]:
    """The batched interpreter, its size and ``pad_from``, checked on ``x`` (``most`` real
    windows) against single invokes."""
    singles: list[list[Array]] = []
    t_one = math.inf

    def single(i: int) -> None:
        nonlocal t_one
        t0 = time.perf_counter()
        singles.append(model.run_native(x[i : i + 1]))
        t_one = min(t_one, time.perf_counter() - t0)

    try:
        for i in range(3):  # the quickest of three: a preempted one does not decide
            single(i)
        size = min(most, int(MAX_INVOKE_S / max(t_one, 1e-9)))
        if size < min(most, MIN_BATCH):
            raise BatchUnsupported(
                BatchUnsupported.LONG_INVOKE,
                f"{model.label}: one window's invoke takes {t_one * 1e3:.2f} ms: only {size} "
                f"fit in {MAX_INVOKE_S * 1e3:g} ms, and the Python work batching saves (tens of "
                "microseconds per invoke) does not matter next to it",
            )
        batched = model.batched(size)
        xb = x[:size]
        t0 = time.perf_counter()
        outs = batched.run_native(xb)
        t_batch = time.perf_counter() - t0
        for i in range(3, size):
            single(i)
        t0 = time.perf_counter()
        batched.run_native(xb)  # the first invoke of an interpreter pays for its warm-up
        t_batch = min(t_batch, time.perf_counter() - t0)
    except (InferenceError, ShapeMismatch) as exc:
        raise BatchUnsupported(BatchUnsupported.SMOKE_FAILED, str(exc)) from exc
    # the shapes that came out (a Reshape in the graph may size an output only in invoke())
    for t1, got in zip(model.outputs, outs, strict=True):
        if t1.shape[:1] != (1,) or got.shape != (size, *t1.shape[1:]):
            raise BatchUnsupported(
                BatchUnsupported.OUTPUT_SHAPE,
                f"{model.label}: output {t1.name!r} is {list(t1.shape)} for one window and "
                f"{list(got.shape)} for {size} (want {[size, *t1.shape[1:]]})",
            )
    for k, info in enumerate(model.outputs):
        for i in range(size):
            got, want = outs[k][i : i + 1], singles[i][k]
            if not np.array_equal(got, want):
                diff = np.flatnonzero(got.ravel() != want.ravel())
                j = int(diff[0]) if diff.size else 0
                raise BatchUnsupported(
                    BatchUnsupported.MISMATCH,
                    f"{model.label}: output {info.name!r} of window {i}: the batched invoke "
                    f"gave {got.ravel()[j]!r} at element {j}, a single invoke "
                    f"{want.ravel()[j]!r} ({diff.size} element(s) differ)",
                )
    pad_from = min(size, max(2, math.ceil(t_batch / max(t_one, 1e-9))))
    log.info(
        "%s: up to %d windows per invoke (checked on %d queued windows: equal to single "
        "invokes; %.1f us per window batched, %.1f us single; a partial group of >= %d "
        "windows is padded)",
        model.label,
        size,
        size,
        t_batch / size * 1e6,
        t_one * 1e6,
        pad_from,
    )
    return batched, size, pad_from
