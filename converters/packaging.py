"""From converted bytes to a signed package: tensor specs, golden samples, the manifest.

Golden samples are computed on the agent's runtime (``agent.model.runtime``) with its default
kernels and again with the reference kernels; the tolerance covers the difference seen between
the two (XNNPACK and the reference kernels differ by a few LSB on int8) with a safety factor,
so the smoke test passes on any correct device and fails on a wrong model.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

import agent
from agent.errors import ConversionError, IncompatibleModel
from agent.model.compat import check_package
from agent.model.runtime import Model, TensorInfo, load_model
from agent.release.manifest import (
    Artifact,
    BuildInfo,
    EncodedArray,
    GoldenSample,
    InputLayout,
    Manifest,
    PostprocessSpec,
    PreprocessSpec,
    Quantization,
    TensorSpec,
    VerificationReport,
    utc_now,
)
from agent.release.package import Package, make_package
from agent.release.reference import Reference, compute_reference
from agent.release.signing import SigningKey
from converters.convert import tensorflow_version
from converters.dataset import Dataset
from converters.verify import runtime_description

log = logging.getLogger(__name__)

FLOAT_ATOL = 1e-4
SAFETY = 4.0


def tensor_spec(info: TensorInfo) -> TensorSpec:
    """The manifest's ``TensorSpec`` of a model tensor."""
    quant = Quantization(scale=info.scale, zero_point=info.zero_point) if info.quantized else None
    return TensorSpec(name=info.name, shape=list(info.shape), dtype=info.dtype, quantization=quant)


def infer_mode(model: Model) -> str:
    """Best guess of how a ready-made .tflite was converted (for package-only builds)."""
    if all(t.quantized for t in model.inputs):
        return "int8"
    return "unknown"


def _synthetic_inputs(model: Model, count: int) -> list[list[npt.NDArray[np.float32]]]:
    """Deterministic inputs when no data was given: values in each input's representable range."""
    rng = np.random.default_rng(0)
    samples = []
    for _ in range(count):
        feed = []
        for t in model.inputs:
            if t.quantized:
                info = np.iinfo(np.dtype(t.dtype))
                q = rng.integers(info.min, info.max, size=t.shape, endpoint=True)
                feed.append(((q - t.zero_point) * t.scale).astype(np.float32))
            else:
                feed.append(rng.standard_normal(t.shape).astype(np.float32))
        samples.append(feed)
    return samples


def golden_samples(
    content: bytes, model: Model, data: Dataset | None, count: int = 3
) -> list[GoldenSample]:
    """``count`` samples (from ``data``, else synthetic) with expected outputs and tolerances."""
    batch = max(1, model.inputs[0].shape[0] if model.inputs[0].shape else 1)
    if data is not None and len(data) >= batch:
        n = min(count, len(data) // batch)
        feeds = [[x[i * batch : (i + 1) * batch] for x in data.inputs] for i in range(n)]
        source = Path(data.source).name  # no build-host paths in manifests
        names = [f"{source}[{i * batch}]" for i in range(n)]
    else:
        feeds = _synthetic_inputs(model, count)
        names = [f"synthetic[{i}]" for i in range(count)]
    reference = load_model(content, reference_kernels=True)
    base_atol = max(
        [2.0 * t.scale if t.quantized else FLOAT_ATOL for t in model.outputs] + [FLOAT_ATOL]
    )
    out: list[GoldenSample] = []
    for name, feed in zip(names, feeds, strict=True):
        expected = [np.asarray(o, dtype=np.float32) for o in model.run(feed)]
        other = [np.asarray(o, dtype=np.float32) for o in reference.run(feed)]
        seen = max(
            float(np.max(np.abs(a - b))) if a.size else 0.0
            for a, b in zip(expected, other, strict=True)
        )
        out.append(
            GoldenSample(
                name=name,
                inputs=[EncodedArray.from_numpy(np.asarray(x, np.float32)) for x in feed],
                outputs=[EncodedArray.from_numpy(e) for e in expected],
                atol=max(base_atol, SAFETY * seen),
                rtol=1e-4,
            )
        )
    return out


REFERENCE_WINDOWS = 4096
"""At most this many samples of the data go into the reference statistics (the first ones)."""
REFERENCE_VALUES = 4_000_000
"""...and at most about this many input values (an image model takes fewer samples)."""


def reference_statistics(model: Model, data: Dataset, spec: PackageSpec) -> Reference | None:
    """The drift reference of ``data`` (model-input space) and the model's output on it;
    None for a multi-input model (the streaming pipeline feeds one input)."""
    if len(data.inputs) != 1 or len(model.inputs) != 1:
        return None
    per_sample = max(1, int(data.inputs[0][0].size))
    data = data.take(max(1, min(REFERENCE_WINDOWS, REFERENCE_VALUES // per_sample)))
    x = data.inputs[0]
    channels = spec.preprocess.channels if spec.preprocess and spec.preprocess.channels else None
    channels = channels or int(x.shape[-1]) if x.ndim >= 2 else 1
    if x[0].size % channels:
        return None
    kind: Literal["classes", "scores"] | None = {
        "classification": "classes",
        "regression": "scores",
        "anomaly": "scores",
    }.get(spec.postprocess.type)  # type: ignore[assignment]
    outputs = None
    if kind is not None:
        outputs = np.stack(
            [np.asarray(model.run([x[i : i + 1]])[0], np.float32) for i in range(len(data))]
        )
    return compute_reference(
        x, channels, outputs=outputs, output_kind=kind, source=Path(data.source).name
    )


@dataclass(frozen=True)
class PackageSpec:
    """What the data scientist says about the model (the rest is measured)."""

    name: str
    version: str
    mode: str
    labels: Sequence[str] = ()
    description: str = ""
    preprocess: PreprocessSpec | None = None
    postprocess: PostprocessSpec = field(default_factory=PostprocessSpec)
    min_agent_version: str = agent.__version__
    source: str | None = None
    source_sha256: str | None = None
    layout: Sequence[InputLayout] | None = None
    """How the source's input layout maps to the .tflite's; recorded when it is not the same."""


def _changed(layout: Sequence[InputLayout] | None, model: Model) -> list[InputLayout] | None:
    """``layout`` when some input is not fed as is (a transpose or another shape), else None:
    a package without a layout change stays readable by agents that predate the field."""
    if not layout:
        return None
    shapes = {t.name: list(t.shape[1:]) for t in model.inputs}
    if all(
        lay.permutation is None and lay.source_shape[1:] == shapes.get(lay.input) for lay in layout
    ):
        return None
    return list(layout)


def build_manifest(
    spec: PackageSpec,
    content: bytes,
    model: Model,
    golden: list[GoldenSample],
    verification: VerificationReport | None,
    reference: Reference | None = None,
) -> Manifest:
    """The manifest of a package: artifact hash, tensors, pre/postprocessing, build info."""
    return Manifest(
        name=spec.name,
        version=spec.version,
        created=utc_now(),
        description=spec.description,
        mode=spec.mode,  # type: ignore[arg-type]  # validated by pydantic
        artifact=Artifact(sha256=hashlib.sha256(content).hexdigest(), size=len(content)),
        inputs=[tensor_spec(t) for t in model.inputs],
        outputs=[tensor_spec(t) for t in model.outputs],
        labels=list(spec.labels),
        preprocess=spec.preprocess,
        postprocess=spec.postprocess,
        layout=_changed(spec.layout, model),
        min_agent_version=spec.min_agent_version,
        build=BuildInfo(
            converter=f"edge-agent {agent.__version__}",
            tensorflow=tensorflow_version(),
            runtime=runtime_description(model),
            source=spec.source,
            source_sha256=spec.source_sha256,
        ),
        verification=verification,
        golden=golden,
        reference=reference,
    )


def package_model(
    spec: PackageSpec,
    content: bytes,
    *,
    data: Dataset | None = None,
    verification: VerificationReport | None = None,
    key: SigningKey | None = None,
    golden_count: int = 3,
    model: Model | None = None,
) -> Package:
    """Measure, describe, sign: the package for ``content`` (.tflite bytes)."""
    model = model if model is not None else load_model(content)
    golden = golden_samples(content, model, data, golden_count)
    reference = reference_statistics(model, data, spec) if data is not None else None
    manifest = build_manifest(spec, content, model, golden, verification, reference)
    try:  # the device's own check: never sign what a device would refuse
        check_package(manifest)
    except IncompatibleModel as exc:
        raise ConversionError(
            f"{spec.name} {spec.version}: a device would refuse this package ({exc.reason}): "
            f"{exc.detail}"
        ) from exc
    pkg = make_package(manifest, content, key)
    log.info(
        "packaged %s %s (%s, %d bytes, %d golden samples, %s)",
        spec.name,
        spec.version,
        spec.mode,
        len(content),
        len(golden),
        f"signed by {key.key_id}" if key else "unsigned",
    )
    return pkg
