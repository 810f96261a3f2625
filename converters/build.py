"""The build pipeline: trained model -> converted -> verified -> packaged and signed.

``convert_and_verify`` stops after verification (``edge-convert convert``); ``build_package``
goes on to the signed package (``edge-convert package`` and watch mode). A failed gate raises
``VerificationFailed`` with the report, and nothing is packaged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import ConversionError
from agent.model.runtime import Model, load_model
from agent.release.manifest import InputLayout, VerificationReport
from agent.release.package import Package
from agent.release.signing import SigningKey, load_private_key
from converters.convert import SourceModel, convert_source, load_source
from converters.dataset import Dataset, RawData, fit_to_inputs, load_dataset, read_data
from converters.packaging import PackageSpec, infer_mode, package_model
from converters.settings import BuildSettings
from converters.source import (
    SourceRunner,
    infer_layout,
    match_inputs,
    source_runner,
    to_model_layout,
)
from converters.verify import (
    Thresholds,
    VerificationFailed,
    compare,
    compare_with_source,
    model_inputs,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Converted:
    """A converted model with its verification."""

    mode: str
    model: bytes
    reference: bytes
    runtime_model: Model
    validation: Dataset | None
    report: VerificationReport | None
    source_kind: str
    source_name: str | None
    source_sha256: str | None
    layout: list[InputLayout] | None = None
    """How the source's input layout maps to the .tflite's (None: a .tflite source)."""


def convert_and_verify(source: Path | Any, settings: BuildSettings) -> Converted:
    """Convert ``source`` in ``settings.mode`` and verify it against the float32 reference and
    against the source model run by its own framework (data in the source's layout).

    Raises ``VerificationFailed`` (report attached) when a threshold is missed.
    """
    thresholds = Thresholds(settings.max_accuracy_drop, settings.min_agreement)
    raw_validation = _read_validation(settings, thresholds)  # fail fast, before converting
    with load_source(source, onnx2tf_args=settings.onnx2tf_args) as src:
        runner = source_runner(src.kind, src.path, src.saved_model_dir)
        reference, candidate, mode = _convert(src, settings, runner)
        kind = src.kind
        name = src.path.name if src.path is not None else None
        sha = src.sha256
        ref_model = load_model(reference, runtime=settings.runtime)
        cand_model = ref_model
        if candidate is not reference:
            cand_model = load_model(candidate, runtime=settings.runtime)
        layout = match_inputs(runner, cand_model.inputs) if runner is not None else None
        validation = None
        report = None
        if raw_validation is None:
            log.warning("no validation data: %s model is packaged unverified", mode)
        else:
            if runner is None or layout is None:
                validation = fit_to_inputs(
                    raw_validation, model_inputs(cand_model), settings.labels
                )
            else:  # the user's data is laid out as the source model takes it
                src_inputs = [s.as_input_shape() for s in runner.inputs]
                src_data = fit_to_inputs(raw_validation, src_inputs, settings.labels)
                src_data = src_data.take(settings.validation_samples)
                validation = to_model_layout(src_data, layout, [t.shape for t in cand_model.inputs])
            validation = validation.take(settings.validation_samples)
            report = compare(
                ref_model,
                cand_model,
                validation,
                reference_mode="float32" if kind != "tflite" else mode,
                candidate_mode=mode,
                thresholds=thresholds,
            )
            if runner is not None and layout is not None:
                variants = [("reference", "float32", ref_model)]
                if cand_model is not ref_model:
                    variants.append(("candidate", mode, cand_model))
                ordered = _source_order(runner, layout)
                comparisons, failures = compare_with_source(
                    runner, src_data.take(len(validation)), ordered, variants
                )
                report = report.model_copy(
                    update={
                        "source": comparisons,
                        "failures": [*report.failures, *failures],
                        "passed": report.passed and not failures,
                    }
                )
            if not report.passed:
                raise VerificationFailed(report)
    return Converted(
        mode, candidate, reference, cand_model, validation, report, kind, name, sha, layout
    )


def _source_order(runner: SourceRunner, layout: list[InputLayout]) -> list[InputLayout]:
    """``layout`` (in the model's input order) in the source's input order, as the data is."""
    by_source = {lay.source_name: lay for lay in layout}
    return [by_source[s.name] for s in runner.inputs]


def _convert(
    src: SourceModel, settings: BuildSettings, runner: SourceRunner | None = None
) -> tuple[bytes, bytes, str]:
    """(reference, candidate, mode) bytes; the same object twice when nothing differs.

    The calibration data is laid out as the source takes it (``runner``'s inputs) and mapped
    to the SavedModel's layout (onnx2tf moves channels last)."""
    if src.tflite is not None:
        model = load_model(src.tflite, runtime=settings.runtime)
        return src.tflite, src.tflite, infer_mode(model)
    calibration = None
    if settings.mode == "int8":
        if settings.calibration is None:
            raise ConversionError("mode int8 needs a calibration (representative) dataset")
        targets = src.inputs()
        if runner is not None and src.kind == "onnx":
            src_cal = load_dataset(
                settings.calibration, [s.as_input_shape() for s in runner.inputs], settings.labels
            ).take(settings.calibration_samples)
            shapes = [(1, *(d or 1 for d in t.shape)) for t in targets]
            layouts = [
                infer_layout(s, t.name, shape)
                for s, t, shape in zip(runner.inputs, targets, shapes, strict=True)
            ]
            calibration = to_model_layout(src_cal, layouts, shapes)
        else:
            calibration = load_dataset(settings.calibration, targets, settings.labels).take(
                settings.calibration_samples
            )
    reference = convert_source(src, "float32")
    if settings.mode == "float32":
        return reference, reference, "float32"
    candidate = convert_source(src, settings.mode, calibration, io_type=settings.io_type)
    return reference, candidate, settings.mode


def _read_validation(settings: BuildSettings, thresholds: Thresholds) -> RawData | None:
    path = settings.validation or settings.calibration
    if path is None:
        if thresholds != Thresholds():
            raise ConversionError(
                "max_accuracy_drop / min_agreement need validation data: give a validation "
                "or calibration file"
            )
        return None
    raw = read_data(path)
    if thresholds.max_accuracy_drop is not None and raw.labels is None:
        raise ConversionError(
            f"max_accuracy_drop needs labels, and {raw.source} has none "
            "(add 'y' to the .npz or a 'label' column to the CSV)"
        )
    return raw


@dataclass(frozen=True)
class Built:
    """A built package and the conversion it came from."""

    package: Package
    converted: Converted


def build_package(
    source: Path | Any,
    settings: BuildSettings,
    *,
    version: str | None = None,
    key: SigningKey | None = None,
) -> Built:
    """Convert, verify, package and sign (with ``key`` or ``settings.private_key``)."""
    version = version or settings.version
    if version is None:
        raise ConversionError("a package needs a version (--version 1.2.3)")
    if key is None and settings.private_key is not None:
        key = load_private_key(settings.private_key)  # before the slow steps: fail fast
    converted = convert_and_verify(source, settings)
    spec = PackageSpec(
        name=settings.name,
        version=version,
        mode=converted.mode,
        labels=settings.labels,
        description=settings.description,
        preprocess=settings.preprocess,
        postprocess=settings.postprocess,
        min_agent_version=settings.min_agent_version,
        source=converted.source_name,
        source_sha256=converted.source_sha256,
        layout=converted.layout,
    )
    pkg = package_model(
        spec,
        converted.model,
        data=converted.validation,
        verification=converted.report,
        key=key,
        golden_count=settings.golden_samples,
        model=converted.runtime_model,
    )
    return Built(pkg, converted)
