"""Verification: does the converted model still do what the float model did?

Both the float32 reference and the converted candidate run on the agent's own runtime
(``agent.model.runtime``), sample by sample, on a validation set. Per output we report top-1
agreement, accuracy and its drop (when labels are given), max/mean absolute error, and per
variant its size and median invoke latency. ``max_accuracy_drop`` / ``min_agreement`` turn the
report into a gate: ``VerificationFailed`` carries the report and nothing gets packaged.

Labels apply to the first output with more than one value (the class scores); for it the
report also keeps both variants' confusion matrices (up to ``MAX_CONFUSION_CLASSES`` classes).
Every output gets a histogram of |candidate - reference| (``HISTOGRAM_BINS`` bins), which the
HTML report (``agent.release.report``) draws.

``compare_with_source`` then runs the *source* model in its own framework (TensorFlow for
Keras/SavedModel, onnxruntime for ONNX) on the same data in the source's layout and compares
every variant with it (``SourceComparison``): a conversion that changed the input layout, or
an int8 build calibrated on wrongly laid-out data, fails here even when the two .tflite
variants agree with each other.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import numpy.typing as npt

from agent.errors import ConversionError
from agent.model.runtime import Model
from agent.release.manifest import (
    MAX_CONFUSION_CLASSES,
    Confusion,
    Histogram,
    InputLayout,
    OutputMetrics,
    SourceComparison,
    VariantMetrics,
    VerificationReport,
)
from converters.dataset import Dataset, InputShape
from converters.progress import Progress
from converters.source import SourceRunner, clean_name, run_source, to_model_layout

log = logging.getLogger(__name__)

_RUNTIME_DISTS = {
    "litert": ("ai-edge-litert",),
    "tflite-runtime": ("tflite-runtime",),
    "tensorflow": ("tensorflow-cpu", "tensorflow"),
}


HISTOGRAM_BINS = 20


class VerificationFailed(ConversionError):
    """The converted model missed a threshold; ``report`` says by how much."""

    def __init__(self, report: VerificationReport) -> None:
        self.report = report
        super().__init__("verification failed: " + "; ".join(report.failures))


@dataclass(frozen=True)
class Thresholds:
    """Gates on the candidate: None means not checked."""

    max_accuracy_drop: float | None = None
    min_agreement: float | None = None


def runtime_description(model: Model) -> str:
    """``"litert 2.3.0"``: the runtime the agent's loader picked, with its version."""
    for dist in _RUNTIME_DISTS.get(model.runtime_name, ()):
        try:
            return f"{model.runtime_name} {version(dist)}"
        except PackageNotFoundError:
            continue
    return model.runtime_name


clean_tensor_name = clean_name


def model_inputs(model: Model) -> list[InputShape]:
    """The runtime model's inputs as data must match them (batch dimension dropped)."""
    return [InputShape(clean_tensor_name(t.name), tuple(t.shape[1:])) for t in model.inputs]


@dataclass(frozen=True)
class RunResult:
    """One model's outputs over a dataset and the latency of each call (s)."""

    outputs: list[npt.NDArray[np.float32]]  # one (N, ...) array per output
    latencies_s: list[float]


def run_dataset(model: Model, dataset: Dataset, label: str) -> RunResult:
    """Run every sample (batch of the model's batch size), timing each invoke."""
    batch = max(1, model.inputs[0].shape[0] if model.inputs[0].shape else 1)
    n = len(dataset) // batch * batch
    if n == 0:
        raise ConversionError(
            f"{dataset.source}: {len(dataset)} sample(s), the model needs batches of {batch}"
        )
    per_output: list[list[npt.NDArray[np.float32]]] = [[] for _ in model.outputs]
    latencies: list[float] = []
    model.run([x[:batch] for x in dataset.inputs])  # warm-up, not timed
    with Progress(label, total=n // batch) as progress:
        for start in range(0, n, batch):
            feed = [x[start : start + batch] for x in dataset.inputs]
            t0 = time.perf_counter()
            outs = model.run(feed)
            latencies.append(time.perf_counter() - t0)
            for acc, out in zip(per_output, outs, strict=True):
                acc.append(np.asarray(out, dtype=np.float32))
            progress.advance()
    return RunResult([np.concatenate(a, axis=0) for a in per_output], latencies)


def _top1(out: npt.NDArray[np.float32]) -> npt.NDArray[np.int64] | None:
    flat = out.reshape(out.shape[0], -1)
    if flat.shape[1] < 2:
        return None
    return np.asarray(flat.argmax(axis=1), dtype=np.int64)


def compare(
    reference: Model,
    candidate: Model,
    dataset: Dataset,
    *,
    reference_mode: str,
    candidate_mode: str,
    thresholds: Thresholds = Thresholds(),
) -> VerificationReport:
    """Run both models on ``dataset`` and build the report (with ``passed`` and ``failures``)."""
    if len(reference.outputs) != len(candidate.outputs):
        raise ConversionError(
            f"reference has {len(reference.outputs)} outputs, candidate {len(candidate.outputs)}"
        )
    if thresholds.max_accuracy_drop is not None and dataset.labels is None:
        raise ConversionError(
            f"max_accuracy_drop needs labels, and {dataset.source} has none "
            "(add 'y' to the .npz or a 'label' column to the CSV)"
        )
    ref = run_dataset(reference, dataset, f"verifying: {reference_mode} reference")
    cand = run_dataset(candidate, dataset, f"verifying: {candidate_mode} candidate")
    n = ref.outputs[0].shape[0]
    labels = dataset.labels[:n] if dataset.labels is not None else None
    label_output = next((i for i, o in enumerate(ref.outputs) if _top1(o) is not None), None)
    outputs: list[OutputMetrics] = []
    for i, (r, c, info) in enumerate(
        zip(ref.outputs, cand.outputs, candidate.outputs, strict=True)
    ):
        if r.shape != c.shape:
            raise ConversionError(f"output {info.name}: reference {r.shape}, candidate {c.shape}")
        err = np.abs(r.astype(np.float64) - c.astype(np.float64))
        r1, c1 = _top1(r), _top1(c)
        metrics: dict[str, float | None] = {"top1_agreement": None}
        confusion = None
        if r1 is not None and c1 is not None:
            metrics["top1_agreement"] = float(np.mean(r1 == c1))
            if labels is not None and i == label_output:
                ref_acc = float(np.mean(r1 == labels))
                acc = float(np.mean(c1 == labels))
                metrics |= {
                    "reference_accuracy": ref_acc,
                    "accuracy": acc,
                    "accuracy_drop": ref_acc - acc,
                }
                confusion = confusion_matrices(labels, r1, c1, r.reshape(n, -1).shape[1])
        outputs.append(
            OutputMetrics(
                name=info.name,
                max_abs_error=float(err.max()) if err.size else 0.0,
                mean_abs_error=float(err.mean()) if err.size else 0.0,
                confusion=confusion,
                error_histogram=error_histogram(err),
                **metrics,
            )
        )
    variants = [
        VariantMetrics(
            name=name,
            mode=mode,
            size=model.size,
            latency_ms_p50=float(np.median(res.latencies_s)) * 1000.0,
            runtime=runtime_description(model),
        )
        for name, mode, model, res in (
            ("reference", reference_mode, reference, ref),
            ("candidate", candidate_mode, candidate, cand),
        )
    ]
    failures = _failures(outputs, thresholds)
    return VerificationReport(
        samples=n,
        dataset=Path(dataset.source).name,  # no build-host paths in manifests
        labelled=labels is not None,
        variants=variants,
        outputs=outputs,
        max_accuracy_drop=thresholds.max_accuracy_drop,
        min_agreement=thresholds.min_agreement,
        passed=not failures,
        failures=failures,
    )


def confusion_matrices(
    labels: npt.NDArray[np.int64],
    reference: npt.NDArray[np.int64],
    candidate: npt.NDArray[np.int64],
    classes: int,
) -> Confusion | None:
    """Both variants' ``[true][predicted]`` counts; None above ``MAX_CONFUSION_CLASSES``
    classes or when a label is outside the output's classes."""
    if classes > MAX_CONFUSION_CLASSES or labels.size == 0:
        return None
    if int(labels.min()) < 0 or int(labels.max()) >= classes:
        log.warning("labels outside 0..%d: no confusion matrix", classes - 1)
        return None

    def counts(pred: npt.NDArray[np.int64]) -> list[list[int]]:
        m = np.zeros((classes, classes), dtype=np.int64)
        np.add.at(m, (labels.astype(np.int64), pred), 1)
        return [[int(v) for v in row] for row in m]

    return Confusion(classes=classes, reference=counts(reference), candidate=counts(candidate))


def error_histogram(err: npt.NDArray[np.float64], bins: int = HISTOGRAM_BINS) -> Histogram:
    """|candidate - reference| in ``bins`` equal bins from 0 to its maximum."""
    top = float(err.max()) if err.size else 0.0
    counts, edges = np.histogram(err.ravel(), bins=bins, range=(0.0, top if top > 0 else 1.0))
    return Histogram(edges=[float(e) for e in edges], counts=[int(c) for c in counts])


def _failures(outputs: Sequence[OutputMetrics], t: Thresholds) -> list[str]:
    failures: list[str] = []
    if t.max_accuracy_drop is not None:
        drops = [o for o in outputs if o.accuracy_drop is not None]
        if not drops:
            failures.append("max_accuracy_drop set, but no output has class scores to compare")
        for o in drops:
            assert o.accuracy_drop is not None
            if o.accuracy_drop > t.max_accuracy_drop:
                failures.append(
                    f"output {o.name}: accuracy dropped by {o.accuracy_drop:.4f} "
                    f"({o.reference_accuracy:.4f} -> {o.accuracy:.4f}), more than "
                    f"max_accuracy_drop {t.max_accuracy_drop:g}"
                )
    if t.min_agreement is not None:
        agreeing = [o for o in outputs if o.top1_agreement is not None]
        if not agreeing:
            failures.append("min_agreement set, but no output has class scores to compare")
        for o in agreeing:
            assert o.top1_agreement is not None
            if o.top1_agreement < t.min_agreement:
                failures.append(
                    f"output {o.name}: top-1 agreement {o.top1_agreement:.4f} is below "
                    f"min_agreement {t.min_agreement:g}"
                )
    return failures


def _fmt(v: float | None, spec: str = ".4f") -> str:
    return "-" if v is None else format(v, spec)


def format_report(report: VerificationReport) -> str:
    """The report as a plain-text table for the terminal."""
    lines = [
        f"verification on {report.dataset}: {report.samples} samples"
        f"{', labelled' if report.labelled else ', no labels'}",
        "",
        f"{'variant':<10} {'mode':<8} {'size (bytes)':>12} {'p50 invoke (ms)':>16}  runtime",
    ]
    for v in report.variants:
        lines.append(
            f"{v.name:<10} {v.mode:<8} {v.size:>12,} {v.latency_ms_p50:>16.4f}  {v.runtime}"
        )
    lines += [
        "",
        f"{'output':<32} {'agree':>7} {'ref acc':>8} {'acc':>7} {'drop':>7} "
        f"{'max|err|':>9} {'mean|err|':>9}",
    ]
    for o in report.outputs:
        lines.append(
            f"{o.name[:32]:<32} {_fmt(o.top1_agreement):>7} {_fmt(o.reference_accuracy):>8} "
            f"{_fmt(o.accuracy):>7} {_fmt(o.accuracy_drop):>7} {o.max_abs_error:>9.4g} "
            f"{o.mean_abs_error:>9.4g}"
        )
    if report.source:
        lines += [
            "",
            f"against the source ({report.source[0].framework}):",
            f"{'variant':<10} {'mode':<8} {'output':<24} {'max|err|':>9} {'of range':>9} "
            f"{'allowed':>8} {'agree':>7}",
        ]
        for c in report.source:
            lines.append(
                f"{c.variant:<10} {c.mode:<8} {c.output[:24]:<24} {c.max_abs_error:>9.4g} "
                f"{c.relative_error:>9.2%} {c.max_relative_error:>8.1%} "
                f"{_fmt(c.top1_agreement):>7}{'' if c.passed else '  FAIL'}"
            )
    lines.append("")
    gates = []
    if report.max_accuracy_drop is not None:
        gates.append(f"max_accuracy_drop={report.max_accuracy_drop:g}")
    if report.min_agreement is not None:
        gates.append(f"min_agreement={report.min_agreement:g}")
    if report.source:
        gates.append("error against the source within the allowed share of its range")
    verdict = "PASSED" if report.passed else "FAILED"
    lines.append(f"{verdict} ({', '.join(gates) if gates else 'no thresholds set'})")
    lines += [f"  - {f}" for f in report.failures]
    return "\n".join(lines)


# --------------------------------------------------------------------------- against the source

MAX_SOURCE_ERROR = {"float32": 1e-3, "float16": 1e-2, "dynamic": 0.1, "int8": 0.25}
"""Per conversion mode: the largest |variant - source| allowed, as a share of the range of the
source's output values. Layout or calibration mistakes give errors of the order of the whole
range (scores of 1.0 where the source gives 0); int8 rounding stays far below a quarter of it."""


def compare_with_source(
    runner: SourceRunner,
    source_data: Dataset,
    layouts: Sequence[InputLayout],
    variants: Sequence[tuple[str, str, Model]],
    max_relative_error: float | None = None,
) -> tuple[list[SourceComparison], list[str]]:
    """Every variant against the source model run by its own framework (see the module doc).

    ``source_data`` is in the source's layout; each variant gets it through ``layouts``.
    """
    want = run_source(runner, source_data)
    comparisons: list[SourceComparison] = []
    failures: list[str] = []
    for name, mode, model in variants:
        data = to_model_layout(source_data, layouts, [t.shape for t in model.inputs])
        got = run_dataset(model, data, f"verifying: {mode} {name} against the source").outputs
        names = [clean_name(t.name) for t in model.outputs]
        if set(names) <= set(runner.output_names):
            order = [runner.output_names.index(n) for n in names]
        else:
            order = list(range(len(got)))
        for info, raw, j in zip(model.outputs, got, order, strict=True):
            s = want[j][: raw.shape[0]]
            if raw.size != s.size:
                raise ConversionError(
                    f"output {info.name}: the converted model gives {raw.shape}, the source "
                    f"{want[j].shape} ({runner.framework})"
                )
            g = raw.reshape(s.shape)
            err = float(np.max(np.abs(g.astype(np.float64) - s))) if s.size else 0.0
            spread = float(np.max(s) - np.min(s)) if s.size else 0.0
            scale = spread or float(np.max(np.abs(s))) or 1.0
            rel = err / scale
            s1, g1 = _top1(s), _top1(g)
            gate = (
                max_relative_error
                if max_relative_error is not None
                else MAX_SOURCE_ERROR.get(mode, MAX_SOURCE_ERROR["int8"])
            )
            comparisons.append(
                SourceComparison(
                    variant=name,
                    mode=mode,
                    framework=runner.framework,
                    output=info.name,
                    max_abs_error=err,
                    relative_error=rel,
                    top1_agreement=float(np.mean(s1 == g1))
                    if s1 is not None and g1 is not None
                    else None,
                    max_relative_error=gate,
                    passed=rel <= gate,
                )
            )
            if rel > gate:
                failures.append(
                    f"{name} ({mode}) output {info.name} differs from the source model run by "
                    f"{runner.framework}: max |error| {err:.4g} is {rel:.1%} of the source's "
                    f"output range (allowed {gate:.1%}): a wrong conversion, input layout or "
                    "calibration"
                )
    return comparisons, failures
