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
from agent.release.manifest import VerificationReport
from agent.release.package import Package
from agent.release.signing import SigningKey, load_private_key
from converters.convert import SourceModel, convert_source, load_source
from converters.dataset import Dataset, RawData, fit_to_inputs, load_dataset, read_data
from converters.packaging import PackageSpec, infer_mode, package_model
from converters.settings import BuildSettings
from converters.verify import Thresholds, VerificationFailed, compare, model_inputs

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


def convert_and_verify(source: Path | Any, settings: BuildSettings) -> Converted:
    """Convert ``source`` in ``settings.mode`` and verify it against the float32 reference.

    Raises ``VerificationFailed`` (report attached) when a threshold is missed.
    """
    thresholds = Thresholds(settings.max_accuracy_drop, settings.min_agreement)
    raw_validation = _read_validation(settings, thresholds)  # fail fast, before converting
    with load_source(source) as src:
        reference, candidate, mode = _convert(src, settings)
        kind = src.kind
        name = src.path.name if src.path is not None else None
        sha = src.sha256
    ref_model = load_model(reference, runtime=settings.runtime)
    cand_model = ref_model
    if candidate is not reference:
        cand_model = load_model(candidate, runtime=settings.runtime)
    validation = None
    report = None
    if raw_validation is None:
        log.warning("no validation data: %s model is packaged unverified", mode)
    else:
        validation = fit_to_inputs(raw_validation, model_inputs(cand_model), settings.labels)
        validation = validation.take(settings.validation_samples)
        report = compare(
            ref_model,
            cand_model,
            validation,
            reference_mode="float32" if kind != "tflite" else mode,
            candidate_mode=mode,
            thresholds=thresholds,
        )
        if not report.passed:
            raise VerificationFailed(report)
    return Converted(mode, candidate, reference, cand_model, validation, report, kind, name, sha)


def _convert(src: SourceModel, settings: BuildSettings) -> tuple[bytes, bytes, str]:
    """(reference, candidate, mode) bytes; the same object twice when nothing differs."""
    if src.tflite is not None:
        model = load_model(src.tflite, runtime=settings.runtime)
        return src.tflite, src.tflite, infer_mode(model)
    calibration = None
    if settings.mode == "int8":
        if settings.calibration is None:
            raise ConversionError("mode int8 needs a calibration (representative) dataset")
        calibration = load_dataset(settings.calibration, src.inputs(), settings.labels).take(
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
