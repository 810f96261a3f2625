"""The smoke test: does the new model, loaded from its verified bytes, do what its manifest says?

``smoke_test`` loads the bytes (never a path that could change after the hash check) into a
fresh interpreter with the configured runtime settings, and fails with ``UpdateError``:

- ``load_failed``        the runtime refuses the bytes;
- ``manifest_mismatch``  the model's tensors are not the ones the manifest declared (and the
                         compatibility check judged);
- ``wrong_shape``        a golden sample's output has another shape than expected;
- ``non_finite``         an output holds NaN or Inf;
- ``golden_mismatch``    an output differs from the expected one beyond ``atol + rtol*|x|``;
- ``too_slow``           its median latency is ``SLOWDOWN_FACTOR`` x the running model's
                         (plus ``SLACK_S``): far above, not a little slower.

The loaded, warmed-up model is returned: the pipeline switches to exactly this interpreter.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.config import ModelSection
from agent.errors import EdgeAgentError, InferenceError, ModelError, UpdateError
from agent.model.runtime import Model, TensorInfo, load_model
from agent.release.manifest import Manifest, TensorSpec

log = logging.getLogger(__name__)

LATENCY_RUNS = 20
SLOWDOWN_FACTOR = 10.0
SLACK_S = 0.005


@dataclass(frozen=True)
class SmokeResult:
    """A candidate that passed the smoke test: the loaded model and its median latencies (s)."""

    model: Model
    latency_s: float
    running_latency_s: float | None


def zeros_for(model: Model) -> list[npt.NDArray[np.float32]]:
    """A valid input for ``model``: zeros of each input's shape."""
    return [np.zeros(t.shape, np.float32) for t in model.inputs]


def median_latency(model: Model, inputs: Sequence[npt.NDArray[Any]], runs: int) -> float:
    """Median seconds of ``model.run(inputs)`` over ``runs`` calls (after one warm-up)."""
    model.run(list(inputs))
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        model.run(list(inputs))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _same_tensors(kind: str, got: Sequence[TensorInfo], want: Sequence[TensorSpec]) -> list[str]:
    if len(got) != len(want):
        return [f"{len(got)} {kind}s, the manifest declares {len(want)}"]
    problems = []
    for g, w in zip(got, want, strict=True):
        if g.name != w.name or list(g.shape) != list(w.shape) or g.dtype != w.dtype:
            problems.append(
                f"{kind} {g.name!r} {list(g.shape)} {g.dtype}, the manifest declares "
                f"{w.name!r} {w.shape} {w.dtype}"
            )
    return problems


def _check_golden(model: Model, manifest: Manifest) -> None:
    where = f"{manifest.name} {manifest.version}"
    for sample in manifest.golden:
        inputs = [enc.to_numpy().astype(np.float32) for enc in sample.inputs]
        try:
            outputs = [np.asarray(o) for o in model.run(inputs)]
        except (InferenceError, ModelError) as exc:
            raise UpdateError(
                "golden_mismatch", f"{where}: golden sample {sample.name!r} cannot run: {exc}"
            ) from exc
        for i, (out, spec) in enumerate(zip(outputs, manifest.outputs, strict=True)):
            if not np.all(np.isfinite(out)):
                raise UpdateError(
                    "non_finite",
                    f"{where}: output {spec.name!r} of golden sample {sample.name!r} holds "
                    "NaN or Inf",
                )
            want = sample.outputs[i].to_numpy()
            if out.shape != want.shape or list(out.shape) != list(spec.shape):
                raise UpdateError(
                    "wrong_shape",
                    f"{where}: output {spec.name!r} has shape {list(out.shape)}, expected "
                    f"{list(want.shape)} (manifest {spec.shape})",
                )
        problems = sample.mismatches(outputs)
        if problems:
            raise UpdateError(
                "golden_mismatch",
                f"{where}: golden sample {sample.name!r}: " + "; ".join(problems),
            )


def smoke_test(
    content: bytes,
    manifest: Manifest,
    settings: ModelSection,
    running: Model | None = None,
) -> SmokeResult:
    """Load ``content`` fresh and check it (reasons in the module doc)."""
    where = f"{manifest.name} {manifest.version}"
    try:
        model = load_model(
            content,
            runtime=settings.runtime,
            num_threads=settings.num_threads,
            reference_kernels=settings.reference_kernels,
            signature=settings.signature,
            label=where,
        )
    except EdgeAgentError as exc:
        raise UpdateError("load_failed", f"{where}: {exc}") from exc
    problems = _same_tensors("input", model.inputs, manifest.inputs)
    problems += _same_tensors("output", model.outputs, manifest.outputs)
    if problems:
        raise UpdateError("manifest_mismatch", f"{where}: " + "; ".join(problems))
    _check_golden(model, manifest)
    golden0 = [enc.to_numpy().astype(np.float32) for enc in manifest.golden[0].inputs]
    latency = median_latency(model, golden0, LATENCY_RUNS)
    running_latency = None
    if running is not None and not running.stateful:
        try:
            running_latency = median_latency(running, zeros_for(running), LATENCY_RUNS)
        except EdgeAgentError as exc:
            log.warning("cannot time the running model: %s", exc)
    if running_latency is not None and latency > SLOWDOWN_FACTOR * running_latency + SLACK_S:
        raise UpdateError(
            "too_slow",
            f"{where}: median invoke {latency * 1000:.3f} ms, the running model takes "
            f"{running_latency * 1000:.3f} ms (limit x{SLOWDOWN_FACTOR:g} + "
            f"{SLACK_S * 1000:g} ms)",
        )
    if model.stateful:
        model.reset_state()
    log.info(
        "smoke test of %s passed: %d golden sample(s), median invoke %.3f ms (running: %s)",
        where,
        len(manifest.golden),
        latency * 1000,
        f"{running_latency * 1000:.3f} ms" if running_latency is not None else "n/a",
    )
    return SmokeResult(model, latency, running_latency)
