"""What a model package decides, and whether it fits the pipeline: one check for every path.

The agent at start-up (``agent.app``), OTA (``agent.ota``: offers, installed versions) and the
converters (``edge-convert package``) all call these functions, so a package the device would
refuse is refused everywhere with the same words.

``resolve(cfg, manifest)`` applies *the manifest decides* (docs/manifest.md, "Who decides"):
the package's name, version, window/hop/channels, normalisation and output interpretation
replace the config's defaults; a key the config sets explicitly (``model_fields_set``) to
another value is a ``PackageConflict`` naming the key, the config's value and the package's.
The operator's choices (thresholds, top-k, smoothing, publish-on-change, output tensor,
runtime) stay the config's.

``check_compatible(manifest, cfg)`` judges a manifest against a configuration as it is (the
running pipeline for OTA: a live agent does not re-window) and raises ``IncompatibleModel``:

- ``agent_too_old``: the manifest's ``min_agent_version`` is above this agent's version;
- ``incompatible_input``: the input the window feeds is missing or has another shape;
- ``incompatible_output``: the configured ``[postprocess]`` cannot read the outputs (class
  count vs labels, single-value score, ...), or the package's labels differ from the config's;
- ``incompatible_postprocess``: the package says its output is read another way
  (classification / regression / anomaly / raw) than the configured one;
- ``incompatible_preprocess``: the package asks for windowing/normalisation other than the
  configured one.

``check_model_input`` is the one rule for "a window fits this input" (the pipeline uses it).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import agent
from agent.config import (
    AnomalyPost,
    ClassificationPost,
    Config,
    DetectionPost,
    PostprocessConfig,
    RawPost,
    RegressionPost,
)
from agent.errors import EdgeAgentError, IncompatibleModel, PackageConflict, ShapeMismatch
from agent.model.postprocess import build_postprocessor
from agent.model.runtime import TensorLike

if TYPE_CHECKING:  # the manifest models are imported with a package (check_model_input needs none)
    from agent.release.manifest import Manifest, TensorSpec

log = logging.getLogger(__name__)

OPERATOR_KEYS = (
    "postprocess.threshold",
    "postprocess.top_k",
    "postprocess.smoothing",
    "postprocess.publish_on_change",
    "postprocess.output",
    "postprocess.score",
    "postprocess.names",
    "postprocess.thresholds",
    "postprocess.average_windows",
    "postprocess.ignore",
    "postprocess.refractory_windows",
    "postprocess.heartbeat_windows",
)
"""Keys the config keeps deciding when the model comes from a package."""


# --------------------------------------------------------------------------- input fit


def _fmt(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + (",)" if len(shape) == 1 else ")")


def check_model_input(input: TensorLike, window_length: int, channels: int) -> tuple[int, ...]:
    """Check the model input takes one window; return the shape to reshape a window to.

    Accepted: ``(1, length, channels)`` and every layout with the same memory order, i.e.
    whose dimensions other than 1 are ``(length, channels)`` or ``(length * channels,)``:
    ``(length, channels)``, ``(1, length, channels, 1)``, ``(1, length, 1, channels)``,
    ``(1, length * channels)``. A dynamic batch dimension (-1) is fed as 1.
    """
    shape = tuple(int(d) for d in input.shape)
    want = (1, window_length, channels)
    target = shape
    if shape and shape[0] <= 0:
        target = (1, *shape[1:])
    core = [d for d in target if d != 1]
    fits = all(d > 0 for d in target) and (
        core == [d for d in (window_length, channels) if d != 1]
        or core == [d for d in (window_length * channels,) if d != 1]
    )
    if fits:
        if target != want:
            log.info(
                "model input %r has shape %s: feeding each %dx%d window reshaped to %s",
                input.name,
                _fmt(shape),
                window_length,
                channels,
                _fmt(target),
            )
        return target
    raise ShapeMismatch(_mismatch_message(input.name, shape, window_length, channels))


def _mismatch_message(name: str, shape: tuple[int, ...], length: int, channels: int) -> str:
    want = (1, length, channels)
    also = ", ".join(
        _fmt(s) for s in ((length, channels), (1, length, channels, 1), (1, length * channels))
    )
    head = (
        f"model input {name!r} has shape {_fmt(shape)}, but the pipeline feeds windows of "
        f"window.length = {length} samples x {channels} channel(s) (shape {_fmt(want)}; "
        f"also accepted: {also})."
    )
    dims = [d for d in shape[1:] if d != 1] if shape and shape[0] <= 1 else list(shape)
    if any(d <= 0 for d in shape[1:]):
        fix = "The model has a dynamic dimension other than the batch: export it with a fixed size."
    elif len(shape) >= 2 and shape[0] > 1:
        fix = (
            f"The model has a fixed batch of {shape[0]}; windows are fed one at a time: "
            f"re-export it with batch 1 (input shape {_fmt(want)})."
        )
    elif dims == [channels, length]:
        fix = (
            "The model looks channels-first (channels, length): windows are channels-last; "
            f"re-export the model with input shape {_fmt(want)}."
        )
    elif len(dims) == 2:
        fix = (
            f"To use this model set window.length = {dims[0]} and channels = {dims[1]} in "
            f"every [[sources]] table (with window.hop <= window.length), or use a model that "
            f"takes {_fmt(want)}."
        )
    elif len(dims) == 1:
        size = dims[0]
        fix = (
            f"A flat input of {size} values needs window.length x channels = {size} "
            f"(now {length} x {channels} = {length * channels}): change window.length or "
            f"the sources' channels."
        )
        if size % channels == 0:
            fix += f" With {channels} channel(s): window.length = {size // channels}."
    else:
        n = math.prod(d for d in shape if d > 0)
        fix = (
            f"The model takes {n} values per invoke in a layout the window cannot be reshaped "
            f"to; change window.length / the sources' channels, or re-export the model with "
            f"input shape {_fmt(want)}."
        )
    return f"{head} {fix}"


# --------------------------------------------------------------------------- the manifest decides


def _close(a: Sequence[float] | None, b: Sequence[float] | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return len(a) == len(b) and all(
        math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-9) for x, y in zip(a, b, strict=True)
    )


def _same(a: Any, b: Any) -> bool:
    numbers = (list, tuple)
    if isinstance(a, numbers) and isinstance(b, numbers):
        if all(isinstance(v, int | float) for v in [*a, *b]):
            return _close(a, b)
        return list(a) == list(b)
    if isinstance(a, numbers) or isinstance(b, numbers):
        return False  # a list against None
    return bool(a == b)


def package_name(manifest: Manifest) -> str:
    """``"<name> <version>"`` of a package, for messages."""
    return f"{manifest.name} {manifest.version}"


def _postprocess_for(manifest: Manifest) -> PostprocessConfig | None:
    """The ``[postprocess]`` table of the package's type (operator keys kept), or a problem."""
    spec = manifest.postprocess
    if spec.type == "classification":
        return ClassificationPost()
    if spec.type == "regression":
        return RegressionPost()
    if spec.type == "raw":
        return RawPost()
    if spec.type == "detection":
        return DetectionPost()
    if spec.threshold is None:
        return None
    return AnomalyPost(threshold=spec.threshold)


def resolve(cfg: Config, manifest: Manifest) -> Config:
    """The configuration the package's model runs with (see the module doc).

    Raises ``PackageConflict`` (every conflicting key at once) when the config explicitly sets
    something the package decides to another value.
    """
    conflicts: list[tuple[str, object, object, str]] = []

    def decide(key: str, section: Any, field: str, have: Any, want: Any, reason: str) -> None:
        if field in section.model_fields_set and not _same(have, want):
            conflicts.append((key, have, want, reason))

    model = cfg.model
    decide("model.name", model, "name", model.name, manifest.name, "wrong_model")
    if not cfg.ota.enabled:  # with OTA the running version moves on; the config's is a label
        decide("model.version", model, "version", model.version, manifest.version, "wrong_model")
    update: dict[str, Any] = {
        "model": model.model_copy(update={"name": manifest.name, "version": manifest.version})
    }

    post = cfg.postprocess
    decide(
        "postprocess.type", post, "type", post.type, manifest.postprocess.type,
        "incompatible_postprocess",
    )  # fmt: skip
    if post.type != manifest.postprocess.type and "type" not in post.model_fields_set:
        new_post = _postprocess_for(manifest)
        if new_post is None:
            no = "an anomaly score without a threshold: set postprocess.threshold"
            raise PackageConflict(
                package_name(manifest),
                [("postprocess.threshold", "not set", no, "incompatible_postprocess")],
            )
        update["postprocess"] = post = new_post
    elif (
        isinstance(post, AnomalyPost)
        and "threshold" not in post.model_fields_set
        and manifest.postprocess.threshold is not None
    ):
        update["postprocess"] = post = post.model_copy(
            update={"threshold": manifest.postprocess.threshold}
        )
    if isinstance(post, ClassificationPost | DetectionPost) and manifest.labels and post.labels:
        decide(
            "postprocess.labels", post, "labels", list(post.labels), list(manifest.labels),
            "incompatible_output",
        )  # fmt: skip

    spec = manifest.preprocess
    if spec is not None:
        win = cfg.window
        decide("window.length", win, "length", win.length, spec.window, "incompatible_preprocess")
        decide("window.hop", win, "hop", win.hop, spec.hop, "incompatible_preprocess")
        update["window"] = spec.window_section()
        if spec.channels is not None:
            sources = []
            for i, src in enumerate(cfg.sources):
                decide(
                    f"sources[{i}].channels", src, "channels", src.channels, spec.channels,
                    "incompatible_preprocess",
                )  # fmt: skip
                sources.append(src.model_copy(update={"channels": spec.channels}))
            update["sources"] = sources
        pre = cfg.preprocess
        want = spec.preprocess_section()
        for key in ("normalize", "mean", "std", "min", "max"):
            decide(
                f"preprocess.{key}", pre, key, getattr(pre, key), getattr(want, key),
                "incompatible_preprocess",
            )  # fmt: skip
        update["preprocess"] = want
    if conflicts:
        raise PackageConflict(package_name(manifest), conflicts)
    return cfg.model_copy(update=update)


# --------------------------------------------------------------------------- fits the pipeline


@dataclass(frozen=True)
class _Tensor:
    """A manifest tensor in the shape the pipeline stages read (``TensorLike``)."""

    name: str
    shape: tuple[int, ...]


def _tensors(specs: Sequence[TensorSpec]) -> list[_Tensor]:
    return [_Tensor(t.name, tuple(t.shape)) for t in specs]


def check_agent_version(manifest: Manifest, agent_version: str) -> None:
    """Raise ``IncompatibleModel`` (``agent_too_old``) when this agent is older than needed."""
    from agent.release.manifest import Version

    need = Version.parse(manifest.min_agent_version)
    try:
        have = Version.parse(agent_version)
    except ValueError:
        return  # a development build without a release number: do not block it
    if have < need:
        raise IncompatibleModel(
            "agent_too_old",
            f"{package_name(manifest)} needs edge-agent >= {need}, this is {have}",
        )


def check_preprocess(manifest: Manifest, cfg: Config) -> None:
    """Raise ``IncompatibleModel`` (``incompatible_preprocess``) when the package's window,
    channels or normalisation differ from the config's."""
    spec = manifest.preprocess
    if spec is None:
        return
    problems = []
    if (spec.window, spec.hop) != (cfg.window.length, cfg.window.hop):
        problems.append(
            f"window {spec.window}/hop {spec.hop} (configured {cfg.window.length}/{cfg.window.hop})"
        )
    if spec.channels is not None and spec.channels != cfg.channels:
        problems.append(f"{spec.channels} channels (configured {cfg.channels})")
    pre = cfg.preprocess
    if spec.normalize != pre.normalize:
        problems.append(f"normalize {spec.normalize!r} (configured {pre.normalize!r})")
    for key in ("mean", "std", "min", "max"):
        if not _close(getattr(spec, key), getattr(pre, key)):
            problems.append(f"{key} {getattr(spec, key)} (configured {getattr(pre, key)})")
    if problems:
        raise IncompatibleModel(
            "incompatible_preprocess", f"{package_name(manifest)} asks for " + "; ".join(problems)
        )


def check_input(manifest: Manifest, cfg: Config) -> None:
    """The streaming pipeline feeds one window to a single-input model (as ``build_stages``)."""
    inputs = _tensors(manifest.inputs)
    where = package_name(manifest)
    if len(inputs) != 1:
        raise IncompatibleModel(
            "incompatible_input",
            f"{where} has {len(inputs)} inputs {[t.name for t in inputs]}: the pipeline feeds "
            "one window to a single-input model",
        )
    inp = inputs[0]
    if cfg.model.input is not None and cfg.model.input != inp.name:
        raise IncompatibleModel(
            "incompatible_input",
            f"{where}: model.input = {cfg.model.input!r}, the model's input is {inp.name!r}",
        )
    try:
        check_model_input(inp, cfg.window.length, cfg.channels)
    except EdgeAgentError as exc:
        raise IncompatibleModel("incompatible_input", f"{where}: {exc}") from exc


def check_output(manifest: Manifest, cfg: Config) -> None:
    """Raise ``IncompatibleModel`` when the configured postprocessing cannot read the outputs."""
    where = package_name(manifest)
    if manifest.postprocess.type != cfg.postprocess.type:
        raise IncompatibleModel(
            "incompatible_postprocess",
            f"{where} is read as {manifest.postprocess.type!r}, the pipeline is configured "
            f"for {cfg.postprocess.type!r}",
        )
    post = cfg.postprocess
    if (
        isinstance(post, ClassificationPost | DetectionPost)
        and post.labels
        and manifest.labels
        and list(post.labels) != list(manifest.labels)
    ):
        raise IncompatibleModel(
            "incompatible_output",
            f"{where} has labels {manifest.labels}, postprocess.labels are {post.labels}",
        )
    try:
        build_postprocessor(
            post,
            _tensors(manifest.outputs),
            list(manifest.labels) or None,
            input_size=cfg.window.length * cfg.channels,
        )
    except (EdgeAgentError, ValueError) as exc:
        raise IncompatibleModel("incompatible_output", f"{where}: {exc}") from exc


def check_compatible(
    manifest: Manifest, cfg: Config, agent_version: str = agent.__version__
) -> None:
    """Raise ``IncompatibleModel`` (reason in the module doc) unless ``manifest`` fits ``cfg``."""
    check_agent_version(manifest, agent_version)
    check_preprocess(manifest, cfg)
    check_input(manifest, cfg)
    check_output(manifest, cfg)


def resolve_and_check(
    cfg: Config, manifest: Manifest, agent_version: str = agent.__version__
) -> Config:
    """``resolve`` then ``check_compatible``: the configuration a package runs with, checked."""
    eff = resolve(cfg, manifest)
    check_compatible(manifest, eff, agent_version)
    return eff


def check_package(manifest: Manifest) -> Config:
    """What a device with no settings of its own checks of a package (``IncompatibleModel``):
    labels vs outputs, pre/postprocessing, and when the manifest gives the window, that the
    window x channels fits the input. The converters refuse to sign what fails this.

    Returns the configuration such a device would run the package with.
    """
    base = Config()
    post = manifest.postprocess
    if post.type == "anomaly" and post.threshold is None:  # the operator sets it on the device
        base = base.model_copy(update={"postprocess": AnomalyPost(threshold=0.0)})
    spec = manifest.preprocess
    if spec is None:  # the device keeps its own windowing: the input is checked there
        try:
            eff = resolve(base, manifest)
        except PackageConflict as exc:
            raise IncompatibleModel(exc.reason, str(exc)) from exc
        check_agent_version(manifest, agent.__version__)
        check_output(manifest, eff)
        return eff
    channels = spec.channels
    if channels is None:
        stats = spec.mean or spec.min
        size = math.prod(d for d in manifest.inputs[0].shape[1:] if d > 0)
        channels = len(stats) if stats else max(1, size // spec.window)
    base = base.model_copy(
        update={"sources": [s.model_copy(update={"channels": channels}) for s in base.sources]}
    )
    try:
        return resolve_and_check(base, manifest)
    except PackageConflict as exc:  # cannot happen from defaults; kept typed all the same
        raise IncompatibleModel(exc.reason, str(exc)) from exc
