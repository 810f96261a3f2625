"""Whether a model version fits the configured pipeline, judged from its signed manifest.

Checked before a single byte is downloaded (the manifest declares the tensors) and once more
on the loaded model (``agent.ota.smoke`` compares the real tensors with the manifest, and
``Pipeline.swap_model`` validates the stages). Refusal reasons:

- ``agent_too_old``: the manifest's ``min_agent_version`` is above this agent's version;
- ``incompatible_input``: the input the window feeds is missing or has another shape;
- ``incompatible_output``: the configured ``[postprocess]`` cannot read the outputs (class
  count vs labels, single-value score, ...), or the package's labels differ from the config's;
- ``incompatible_postprocess``: the package says its output is read another way
  (classification / regression / anomaly / raw) than the configured one;
- ``incompatible_preprocess``: the package asks for windowing/normalisation other than the
  configured one (the agent does not change its preprocessing on an update).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import agent
from agent.config import ClassificationPost, Config, DetectionPost
from agent.errors import EdgeAgentError, UpdateError
from agent.ingest.preprocess import check_model_input
from agent.model.postprocess import build_postprocessor
from agent.release.manifest import Manifest, TensorSpec, Version


@dataclass(frozen=True)
class _Tensor:
    """A manifest tensor in the shape the pipeline stages read (``preprocess.TensorSpec``)."""

    name: str
    shape: tuple[int, ...]


def _tensors(specs: Sequence[TensorSpec]) -> list[_Tensor]:
    return [_Tensor(t.name, tuple(t.shape)) for t in specs]


def _close(a: Sequence[float] | None, b: Sequence[float] | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return len(a) == len(b) and all(
        math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-9) for x, y in zip(a, b, strict=True)
    )


def check_agent_version(manifest: Manifest, agent_version: str) -> None:
    need = Version.parse(manifest.min_agent_version)
    try:
        have = Version.parse(agent_version)
    except ValueError:
        return  # a development build without a release number: do not block it
    if have < need:
        raise UpdateError(
            "agent_too_old",
            f"{manifest.name} {manifest.version} needs edge-agent >= {need}, this is {have}",
        )


def check_preprocess(manifest: Manifest, cfg: Config) -> None:
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
        raise UpdateError(
            "incompatible_preprocess",
            f"{manifest.name} {manifest.version} asks for " + "; ".join(problems),
        )


def check_input(manifest: Manifest, cfg: Config) -> None:
    """The streaming pipeline feeds one window to a single-input model (as ``build_stages``)."""
    inputs = _tensors(manifest.inputs)
    where = f"{manifest.name} {manifest.version}"
    if len(inputs) != 1:
        raise UpdateError(
            "incompatible_input",
            f"{where} has {len(inputs)} inputs {[t.name for t in inputs]}: the pipeline feeds "
            "one window to a single-input model",
        )
    inp = inputs[0]
    if cfg.model.input is not None and cfg.model.input != inp.name:
        raise UpdateError(
            "incompatible_input",
            f"{where}: model.input = {cfg.model.input!r}, the model's input is {inp.name!r}",
        )
    try:
        check_model_input(inp, cfg.window.length, cfg.channels)
    except EdgeAgentError as exc:
        raise UpdateError("incompatible_input", f"{where}: {exc}") from exc


def check_output(manifest: Manifest, cfg: Config) -> None:
    where = f"{manifest.name} {manifest.version}"
    if manifest.postprocess.type != cfg.postprocess.type:
        raise UpdateError(
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
        raise UpdateError(
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
        raise UpdateError("incompatible_output", f"{where}: {exc}") from exc


def check_compatible(
    manifest: Manifest, cfg: Config, agent_version: str = agent.__version__
) -> None:
    """Raise ``UpdateError`` (reason in the module doc) unless ``manifest`` fits ``cfg``."""
    check_agent_version(manifest, agent_version)
    check_preprocess(manifest, cfg)
    check_input(manifest, cfg)
    check_output(manifest, cfg)
