"""The model package manifest and the OTA announcement: one schema for both sides.

The build host (``converters/``) writes these models and the device (``agent/``) reads them;
both import this module, so the two can never drift apart. docs/manifest.md describes every
field. The rules that matter for security:

* ``Manifest`` is serialised with ``canonical_json`` and those exact bytes are signed. The
  manifest carries the artifact's sha256 and size, so one signature covers the model too.
* An ``Announcement`` carries the manifest **as a string**: a device checks the signature over
  ``announcement.manifest_bytes`` first and only then parses it (``parse_manifest``).
* ``version`` is semver 2.0 (``Version``); it must increase within a channel.

Every model forbids unknown fields and carries a ``schema_version``: a reader that meets a newer
schema refuses it loudly instead of half-understanding it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from datetime import UTC, datetime
from functools import total_ordering
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
    model_validator,
)

from agent.config import PreprocessSection, WindowSection, check_topic_id
from agent.errors import PackageError
from agent.release.reference import Reference

MANIFEST_SCHEMA_VERSION = 1
ANNOUNCEMENT_SCHEMA_VERSION = 1
MODEL_FILENAME = "model.tflite"

# --------------------------------------------------------------------------- canonical JSON


def canonical_json(obj: BaseModel | Any) -> bytes:
    """The one byte form of a manifest: sorted keys, no spaces, UTF-8, no NaN/Infinity.

    These are the bytes that are hashed and signed; ``json.loads`` of them gives back the same
    data. Pydantic models are dumped in JSON mode first (datetimes become ISO 8601 strings).
    """
    data = obj.model_dump(mode="json") if isinstance(obj, BaseModel) else obj
    return json.dumps(
        data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


# --------------------------------------------------------------------------- semver

_SEMVER_RE = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)(?:\.(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*))*))?"
    r"(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$"
)


@total_ordering
class Version:
    """A semantic version (semver 2.0) with its precedence rules.

    ``1.0.0-alpha < 1.0.0-alpha.1 < 1.0.0-beta < 1.0.0 < 1.0.1``; build metadata (``+abc``) is
    kept but ignored when comparing, so ``1.0.0+a == 1.0.0+b`` in precedence.
    """

    __slots__ = ("build", "major", "minor", "patch", "prerelease")

    def __init__(
        self,
        major: int,
        minor: int,
        patch: int,
        prerelease: tuple[str, ...] = (),
        build: tuple[str, ...] = (),
    ) -> None:
        self.major = major
        self.minor = minor
        self.patch = patch
        self.prerelease = prerelease
        self.build = build

    @classmethod
    def parse(cls, text: str) -> Version:
        """Parse ``MAJOR.MINOR.PATCH[-PRERELEASE][+BUILD]``; ValueError when it is not semver."""
        m = _SEMVER_RE.match(text)
        if m is None:
            raise ValueError(
                f"{text!r} is not a semantic version (MAJOR.MINOR.PATCH[-pre][+build])"
            )
        pre = tuple(m.group(4).split(".")) if m.group(4) else ()
        build = tuple(m.group(5).split(".")) if m.group(5) else ()
        return cls(int(m.group(1)), int(m.group(2)), int(m.group(3)), pre, build)

    def _key(self) -> tuple[Any, ...]:
        # A release sorts after all of its pre-releases; numeric identifiers sort before
        # alphanumeric ones and compare as numbers.
        pre: tuple[Any, ...] = tuple(
            (0, int(p), "") if p.isdigit() else (1, 0, p) for p in self.prerelease
        )
        return (self.major, self.minor, self.patch, 0 if self.prerelease else 1, pre)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key() == other._key()

    def __lt__(self, other: Version) -> bool:
        return self._key() < other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        if self.prerelease:
            text += "-" + ".".join(self.prerelease)
        if self.build:
            text += "+" + ".".join(self.build)
        return text

    def __repr__(self) -> str:
        return f"Version({str(self)!r})"

    def next_patch(self) -> Version:
        """The next patch release: ``1.2.3 -> 1.2.4``, ``1.2.3-rc.1 -> 1.2.3``."""
        if self.prerelease:
            return Version(self.major, self.minor, self.patch)
        return Version(self.major, self.minor, self.patch + 1)


def _check_semver(value: str) -> str:
    Version.parse(value)
    return value


def _check_id(value: str) -> str:
    return check_topic_id(value, "name")


SemverStr = Annotated[str, AfterValidator(_check_semver)]
"""A string that must parse as ``Version``; kept as text so the JSON stays as written."""

TopicId = Annotated[str, AfterValidator(_check_id)]
"""A name that becomes a topic part or a path part: letters, digits, ``_ . -``."""

_SHA256_RE = r"^[0-9a-f]{64}$"


class _Schema(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Additive(_Schema):
    """A schema that grew optional fields after schema_version 1 shipped: they are left out of
    the JSON while None, so a manifest that does not use them is byte-for-byte what an older
    agent (which forbids unknown fields) reads."""

    _added: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _drop_unset_additions(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for key in self._added:
            if data.get(key, ...) is None:
                del data[key]
        return data


# --------------------------------------------------------------------------- arrays

ArrayDType = Literal["float32", "float64", "int8", "uint8", "int16", "int32", "int64"]


class EncodedArray(_Schema):
    """A NumPy array in JSON: dtype, shape and the little-endian bytes in base64."""

    dtype: ArrayDType = Field(description="Element type (NumPy name).")
    shape: list[Annotated[int, Field(ge=0)]] = Field(description="Array shape.")
    data: str = Field(description="Base64 of the C-order little-endian element bytes.")

    @model_validator(mode="after")
    def _length(self) -> EncodedArray:
        want = math.prod(self.shape) * np.dtype(self.dtype).itemsize
        try:
            got = len(base64.b64decode(self.data, validate=True))
        except ValueError as exc:
            raise ValueError(f"data is not valid base64: {exc}") from None
        if got != want:
            raise ValueError(
                f"data holds {got} bytes, shape {self.shape} of {self.dtype} needs {want}"
            )
        return self

    @classmethod
    def from_numpy(cls, array: npt.ArrayLike) -> EncodedArray:
        arr = np.asarray(array)
        if arr.dtype.name not in ArrayDType.__args__:  # type: ignore[attr-defined]
            raise ValueError(f"cannot encode arrays of dtype {arr.dtype}")
        le = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
        return cls(
            dtype=arr.dtype.name,  # type: ignore[arg-type]
            shape=list(arr.shape),
            data=base64.b64encode(le.tobytes()).decode("ascii"),
        )

    def to_numpy(self) -> npt.NDArray[Any]:
        dt = np.dtype(self.dtype).newbyteorder("<")
        flat = np.frombuffer(base64.b64decode(self.data), dtype=dt)
        return flat.astype(np.dtype(self.dtype)).reshape(self.shape)


# --------------------------------------------------------------------------- tensors


class Quantization(_Schema):
    """Affine quantisation of one tensor: ``real = scale * (q - zero_point)``."""

    scale: float = Field(gt=0, description="Step size of one quantised unit.")
    zero_point: int = Field(description="Quantised value that represents 0.0.")


class TensorSpec(_Schema):
    """One input or output tensor of the model, as the TFLite interpreter reports it."""

    name: str = Field(description="Tensor name in the flatbuffer.")
    shape: list[int] = Field(description="Shape, batch dimension included (usually 1).")
    dtype: str = Field(description="Element type on the wire: float32, int8, uint8, ...")
    quantization: Quantization | None = Field(
        default=None, description="Scale and zero point when the tensor is quantised, else null."
    )


# --------------------------------------------------------------------------- pre/post


class PreprocessSpec(_Schema):
    """What the agent must do to raw samples before the model sees them.

    The same meaning as the agent's ``[window]`` and ``[preprocess]`` config tables; a package
    that carries this overrides the local settings so model and preprocessing change together.
    """

    window: int = Field(ge=1, description="Samples per window.")
    hop: int = Field(ge=1, description="Samples between window starts.")
    channels: int | None = Field(
        default=None, ge=1, description="Values per sample the model expects."
    )
    normalize: Literal["none", "standard", "minmax"] = Field(
        default="none", description="'standard': (x-mean)/std; 'minmax': (x-min)/(max-min)."
    )
    mean: list[float] | None = Field(default=None, description="Per-channel mean (standard).")
    std: list[float] | None = Field(default=None, description="Per-channel std, > 0 (standard).")
    min: list[float] | None = Field(default=None, description="Per-channel minimum (minmax).")
    max: list[float] | None = Field(default=None, description="Per-channel maximum (minmax).")

    @model_validator(mode="after")
    def _rules(self) -> PreprocessSpec:
        self.window_section()  # same rules as the config tables: one place decides
        self.preprocess_section()
        if self.channels is not None:
            for key in ("mean", "std", "min", "max"):
                vals = getattr(self, key)
                if vals is not None and len(vals) != self.channels:
                    raise ValueError(f"{key} has {len(vals)} values for {self.channels} channels")
        return self

    def window_section(self) -> WindowSection:
        """As the agent's ``[window]`` table."""
        return WindowSection(length=self.window, hop=self.hop)

    def preprocess_section(self) -> PreprocessSection:
        """As the agent's ``[preprocess]`` table."""
        return PreprocessSection(
            normalize=self.normalize, mean=self.mean, std=self.std, min=self.min, max=self.max
        )


class PostprocessSpec(_Schema):
    """How the agent reads the model's output (the ``type`` of its ``[postprocess]`` table)."""

    type: Literal["classification", "regression", "anomaly", "raw", "detection"] = Field(
        default="classification", description="Output interpretation."
    )
    threshold: float | None = Field(
        default=None, description="Anomaly score threshold (type 'anomaly'); ignored otherwise."
    )


# --------------------------------------------------------------------------- verification


class VariantMetrics(_Schema):
    """Size and speed of one model variant (the float reference or the converted model)."""

    name: str = Field(description="'reference' or 'candidate'.")
    mode: str = Field(description="Conversion mode of this variant.")
    size: int = Field(ge=0, description="Model size in bytes.")
    latency_ms_p50: float = Field(ge=0, description="Median invoke latency, milliseconds.")
    runtime: str = Field(description="Runtime that measured it.")


MAX_CONFUSION_CLASSES = 32
"""Confusion matrices are kept for classifiers with at most this many classes (size)."""


class Confusion(_Schema):
    """Confusion matrices of a labelled classifier output: ``[true][predicted]`` counts."""

    classes: int = Field(ge=2, le=MAX_CONFUSION_CLASSES, description="Number of classes.")
    reference: list[list[Annotated[int, Field(ge=0)]]] = Field(
        description="The reference model's counts, rows = true class, columns = predicted."
    )
    candidate: list[list[Annotated[int, Field(ge=0)]]] = Field(
        description="The converted model's counts, same layout."
    )

    @model_validator(mode="after")
    def _square(self) -> Confusion:
        for name, m in (("reference", self.reference), ("candidate", self.candidate)):
            if len(m) != self.classes or any(len(row) != self.classes for row in m):
                raise ValueError(f"{name} must be {self.classes}x{self.classes}")
        return self


class Histogram(_Schema):
    """Counts of |candidate - reference| over every value of one output, in equal bins."""

    edges: list[float] = Field(min_length=2, description="Bin edges (len(counts) + 1).")
    counts: list[Annotated[int, Field(ge=0)]] = Field(description="Values per bin.")

    @model_validator(mode="after")
    def _lengths(self) -> Histogram:
        if len(self.edges) != len(self.counts) + 1:
            raise ValueError(f"{len(self.edges)} edges for {len(self.counts)} bins")
        return self


class OutputMetrics(_Schema):
    """How closely the converted model follows the reference on one output tensor."""

    name: str = Field(description="Output tensor name (of the converted model).")
    top1_agreement: float | None = Field(
        default=None,
        description="Share of samples with the same argmax (null for 1-value outputs).",
    )
    reference_accuracy: float | None = Field(default=None, description="Reference top-1 accuracy.")
    accuracy: float | None = Field(default=None, description="Converted model top-1 accuracy.")
    accuracy_drop: float | None = Field(default=None, description="reference_accuracy - accuracy.")
    max_abs_error: float = Field(ge=0, description="Largest |candidate - reference|.")
    mean_abs_error: float = Field(ge=0, description="Mean |candidate - reference|.")
    confusion: Confusion | None = Field(
        default=None,
        description="Both variants' confusion matrices (labelled class scores with at most "
        f"{MAX_CONFUSION_CLASSES} classes; null otherwise).",
    )
    error_histogram: Histogram | None = Field(
        default=None, description="Distribution of |candidate - reference| on this output."
    )


class SourceComparison(_Schema):
    """One converted variant against the *source* model run by its own framework (Keras /
    TensorFlow for Keras and SavedModel sources, onnxruntime for ONNX), on the validation data
    in the source's layout."""

    variant: str = Field(description="'reference' (float32 .tflite) or 'candidate'.")
    mode: str = Field(description="Conversion mode of the variant.")
    framework: str = Field(description="What ran the source, with its version.")
    output: str = Field(description="Output tensor name (of the converted model).")
    max_abs_error: float = Field(ge=0, description="Largest |variant - source|.")
    relative_error: float = Field(
        ge=0, description="max_abs_error over the range of the source's output values."
    )
    top1_agreement: float | None = Field(
        default=None, description="Share of samples with the source's argmax (class scores)."
    )
    max_relative_error: float = Field(ge=0, description="The gate applied to relative_error.")
    passed: bool = Field(description="relative_error <= max_relative_error.")


class VerificationReport(_Additive):
    """Result of running the reference and the converted model on a validation set."""

    _added: ClassVar[frozenset[str]] = frozenset({"source"})

    schema_version: Literal[1] = Field(default=1, description="Version of this report's schema.")
    samples: int = Field(ge=0, description="Validation samples run through both models.")
    dataset: str = Field(description="Where the validation samples came from.")
    labelled: bool = Field(description="Whether labels were given (accuracy is computed).")
    variants: list[VariantMetrics] = Field(description="Reference and candidate size/speed.")
    outputs: list[OutputMetrics] = Field(description="Per-output agreement and error.")
    max_accuracy_drop: float | None = Field(default=None, description="Threshold applied, if any.")
    min_agreement: float | None = Field(default=None, description="Threshold applied, if any.")
    passed: bool = Field(description="True when every threshold held.")
    failures: list[str] = Field(default_factory=list, description="Why it did not pass.")
    source: list[SourceComparison] | None = Field(
        default=None,
        description="Every variant against the source model run by its own framework (null: "
        "the source was a .tflite, or this report predates source verification).",
    )


# --------------------------------------------------------------------------- manifest


class GoldenSample(_Schema):
    """An input and the output the model must give for it: the device's smoke test.

    Inputs are float32 values as the model's input takes them (after preprocessing, before
    quantisation); outputs are dequantised float32. One array per tensor, in the manifest's
    ``inputs`` / ``outputs`` order.
    """

    name: str = Field(description="Label of this sample, e.g. 'validation[3]'.")
    inputs: list[EncodedArray] = Field(min_length=1, description="One array per input tensor.")
    outputs: list[EncodedArray] = Field(min_length=1, description="One array per output tensor.")
    atol: float = Field(ge=0, description="Absolute tolerance of each output value.")
    rtol: float = Field(default=0.0, ge=0, description="Relative tolerance of each output value.")

    def mismatches(self, outputs: list[npt.NDArray[Any]]) -> list[str]:
        """What differs between ``outputs`` (from the runtime) and the expected outputs."""
        problems: list[str] = []
        if len(outputs) != len(self.outputs):
            return [f"{len(outputs)} outputs, expected {len(self.outputs)}"]
        for i, (got, enc) in enumerate(zip(outputs, self.outputs, strict=True)):
            want = enc.to_numpy().astype(np.float64)
            have = np.asarray(got, dtype=np.float64)
            if have.shape != want.shape:
                problems.append(f"output {i}: shape {have.shape}, expected {want.shape}")
                continue
            err = np.abs(have - want)
            allowed = self.atol + self.rtol * np.abs(want)
            if not np.all(err <= allowed):
                problems.append(
                    f"output {i}: max |error| {float(err.max()):.6g} > tolerance "
                    f"(atol {self.atol:g}, rtol {self.rtol:g})"
                )
        return problems


class InputLayout(_Schema):
    """How data laid out as the source model takes it becomes the .tflite input.

    Converters change layouts (onnx2tf turns ``[1, 16, 96]`` into ``[1, 96, 16]``): a sample
    ``x`` in the source's layout is fed as ``x.transpose(permutation)`` (batch axis included),
    then reshaped to the .tflite input's shape. ``edge-agent predict`` applies it to input
    files; the converter verified the model through it.
    """

    input: str = Field(description="The .tflite input tensor (``TensorSpec.name``).")
    source_name: str = Field(description="The source model's input name.")
    source_shape: list[int] = Field(description="The source input's shape (-1: dynamic).")
    permutation: list[int] | None = Field(
        default=None, description="Axes of the source array in .tflite order; null: as is."
    )

    @model_validator(mode="after")
    def _perm(self) -> InputLayout:
        if self.permutation is not None and sorted(self.permutation) != list(
            range(len(self.source_shape))
        ):
            raise ValueError(
                f"permutation {self.permutation} is not a permutation of the "
                f"{len(self.source_shape)} axes of {self.source_shape}"
            )
        return self

    def to_model(self, x: npt.NDArray[Any], model_shape: list[int]) -> npt.NDArray[Any]:
        """``x`` (one sample, or a batch along axis 0) in the source's layout -> .tflite's."""
        arr = np.asarray(x)
        if arr.ndim == len(self.source_shape) - 1:
            arr = arr[None]
        if arr.ndim != len(self.source_shape):
            raise ValueError(
                f"input {self.source_name!r}: data of shape {arr.shape} is not laid out as the "
                f"source model takes it {self.source_shape}"
            )
        if self.permutation is not None:
            arr = arr.transpose(self.permutation)
        return np.ascontiguousarray(arr).reshape((-1, *model_shape[1:]))


class Artifact(_Schema):
    """The model file the manifest vouches for."""

    filename: Literal["model.tflite"] = Field(
        default="model.tflite", description="Name in the package."
    )
    format: Literal["tflite"] = Field(default="tflite", description="Model file format.")
    sha256: str = Field(pattern=_SHA256_RE, description="Lowercase hex sha256 of the file.")
    size: int = Field(gt=0, description="File size in bytes (a download stops here).")


class BuildInfo(_Schema):
    """Which tools made the package."""

    converter: str = Field(description="edge-agent version of the converter.")
    tensorflow: str | None = Field(
        default=None, description="TensorFlow version that converted it."
    )
    runtime: str = Field(description="Runtime (and version) that verified it.")
    source: str | None = Field(
        default=None, description="File name of the trained model converted."
    )
    source_sha256: str | None = Field(default=None, pattern=_SHA256_RE, description="sha256 of it.")


class Manifest(_Additive):
    """Everything a device needs to know about one model version, signed as a whole."""

    _added: ClassVar[frozenset[str]] = frozenset({"layout", "reference"})

    schema_version: Literal[1] = Field(default=1, description="Version of this manifest's schema.")
    name: TopicId = Field(description="Model name: the OTA topic part and store directory.")
    version: SemverStr = Field(description="Semantic version; must increase within a channel.")
    created: datetime = Field(description="When the package was built (UTC).")
    description: str = Field(default="", description="Free text for humans.")
    mode: Literal["float32", "float16", "dynamic", "int8", "unknown"] = Field(
        description="Conversion mode: float32, float16, dynamic (int8 weights), int8 (full)."
    )
    artifact: Artifact = Field(description="The model file: sha256 and size.")
    inputs: list[TensorSpec] = Field(min_length=1, description="Input tensors, in order.")
    outputs: list[TensorSpec] = Field(min_length=1, description="Output tensors, in order.")
    labels: list[str] = Field(default_factory=list, description="Class names, in output order.")
    preprocess: PreprocessSpec | None = Field(
        default=None,
        description="Windowing and normalisation the agent must apply (null: keep local).",
    )
    postprocess: PostprocessSpec = Field(
        default_factory=PostprocessSpec, description="How the output is read."
    )
    layout: list[InputLayout] | None = Field(
        default=None,
        description="Per input: how the source model's layout maps to the .tflite input "
        "(null: the package predates it, or the layouts are the same).",
    )
    min_agent_version: SemverStr = Field(description="Oldest agent that may load this package.")
    build: BuildInfo = Field(description="Converter, TensorFlow and runtime versions.")
    verification: VerificationReport | None = Field(
        default=None,
        description="The converter's verification report (null for package-only builds).",
    )
    golden: list[GoldenSample] = Field(min_length=1, description="Smoke-test samples.")
    reference: Reference | None = Field(
        default=None,
        description="Reference statistics of the calibration/validation data (drift "
        "monitoring; null: none computed). Omitted from the JSON when null.",
    )

    @model_validator(mode="after")
    def _utc(self) -> Manifest:
        if self.created.tzinfo is None or self.created.utcoffset() != UTC.utcoffset(None):
            raise ValueError("created must be a UTC time (ending in 'Z')")
        for g in self.golden:
            if len(g.inputs) != len(self.inputs) or len(g.outputs) != len(self.outputs):
                raise ValueError(
                    f"golden sample {g.name!r} has {len(g.inputs)} inputs/{len(g.outputs)} "
                    f"outputs, the model {len(self.inputs)}/{len(self.outputs)}"
                )
        return self

    @property
    def semver(self) -> Version:
        return Version.parse(self.version)

    def to_bytes(self) -> bytes:
        """The canonical bytes that are signed and stored as ``manifest.json``."""
        return canonical_json(self)


def parse_manifest(data: bytes) -> Manifest:
    """Parse manifest bytes; ``PackageError('bad_manifest')`` names every problem."""
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise PackageError("bad_manifest", f"manifest.json is not JSON: {exc}") from None
    if isinstance(obj, dict) and obj.get("schema_version") not in (None, MANIFEST_SCHEMA_VERSION):
        raise PackageError(
            "bad_manifest",
            f"manifest schema_version {obj.get('schema_version')!r} is not supported "
            f"(this agent reads {MANIFEST_SCHEMA_VERSION})",
        )
    try:
        return Manifest.model_validate(obj)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
        raise PackageError("bad_manifest", problems) from None


def utc_now() -> datetime:
    """Now, in UTC, to the second (manifests do not need more)."""
    return datetime.now(UTC).replace(microsecond=0)


# --------------------------------------------------------------------------- announcement


class Targets(_Additive):
    """Which devices an announcement is for."""

    groups: list[TopicId] = Field(
        default_factory=list, description="Device groups (agent.groups); empty means all devices."
    )
    percent: float = Field(
        default=100.0,
        ge=0,
        le=100,
        description="Rollout share: a device takes the version when rollout_position(device "
        "id, model, version) < percent.",
    )

    devices: list[TopicId] | None = Field(
        default=None,
        description="Device ids; null means any device (of the groups). `edge-fleet promote "
        "--min-agreement` names the devices whose shadow reports passed.",
    )
    shadow: bool | None = Field(
        default=None,
        description="true: install as a shadow: verify and smoke-test, then run beside the "
        "active model on the same windows without publishing its predictions "
        "(docs/shadow-and-drift.md); null: install as usual.",
    )

    _added: ClassVar[frozenset[str]] = frozenset({"devices", "shadow"})

    def includes(self, device_id: str, groups: list[str], model: str, version: str) -> bool:
        """Whether a device (with its groups) is targeted by this announcement."""
        if self.groups and not set(self.groups) & set(groups):
            return False
        if self.devices and device_id not in self.devices:
            return False
        return rollout_position(device_id, model, version) < self.percent


def rollout_position(device_id: str, model: str, version: str) -> float:
    """Where a device falls in a rollout, in [0, 100): stable per (device, model, version).

    Raising ``percent`` for the same version only adds devices, never swaps them.
    """
    digest = hashlib.sha256(f"{device_id}/{model}/{version}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100.0


class Announcement(_Schema):
    """The retained message on ``<prefix>/ota/<channel>/<model>`` that offers a version."""

    schema_version: Literal[1] = Field(default=1, description="Version of this message's schema.")
    channel: TopicId = Field(description="Channel name, e.g. stable, canary.")
    manifest: str = Field(
        description="The canonical manifest JSON as a string: verify the signature over "
        "exactly these (UTF-8) bytes, then parse."
    )
    signature: str | None = Field(
        default=None, description="Base64 Ed25519 signature, null if unsigned."
    )
    key_id: str | None = Field(
        default=None, description="Id of the signing key (16 hex characters)."
    )
    url: str = Field(description="Where model.tflite is served (exactly artifact.size bytes).")
    package_url: str | None = Field(default=None, description="Where the whole .eapkg is served.")
    targets: Targets = Field(default_factory=Targets, description="Who should take it.")
    published_at: datetime = Field(description="When it was announced (UTC).")

    @property
    def manifest_bytes(self) -> bytes:
        return self.manifest.encode("utf-8")

    def to_bytes(self) -> bytes:
        return canonical_json(self)
