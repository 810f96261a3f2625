"""Which model the agent runs at start-up, and loading it into an ``ActiveModel``.

``model.path`` may be ``builtin:demo`` (the demo model shipped inside the package), a bare
``.tflite`` file (name and version from config), or a signed ``.eapkg`` package (name, version
and labels from its manifest; the signature is checked when OTA trusted keys are configured).
"""

from __future__ import annotations

import hashlib
import logging
from importlib import resources
from pathlib import Path

from agent.config import BUILTIN_DEMO_MODEL, NO_MODEL, Config
from agent.errors import EdgeAgentError, ModelError
from agent.model.active import ActiveModel
from agent.model.runtime import load_model

log = logging.getLogger(__name__)

DEMO_LABELS = ["normal", "anomaly"]


def demo_model_bytes() -> bytes:
    """The bytes of the shipped demo model (``builtin:demo``)."""
    return resources.files("agent.model").joinpath("demo/model.tflite").read_bytes()


def read_model_source(path: str) -> bytes:
    """The model bytes ``model.path`` names; raises ``ModelError`` when there are none."""
    if path == BUILTIN_DEMO_MODEL:
        return demo_model_bytes()
    if path == NO_MODEL:
        raise ModelError(f"model.path = {NO_MODEL!r}: no model is configured (it comes over OTA)")
    if path.startswith("builtin:"):
        raise ModelError(f"unknown builtin model {path!r} (only {BUILTIN_DEMO_MODEL!r})")
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read model file {path}: {exc.strerror or exc}") from exc


def load_active_model(cfg: Config, content: bytes | None = None) -> ActiveModel:
    """Load the configured ``model.path`` (or ``content``) into a fresh interpreter.

    This knows nothing of OTA: with OTA enabled the service asks ``agent.ota.startup_model``
    first, and an installed version wins over ``model.path``.
    """
    path = cfg.model.path
    data = content if content is not None else read_model_source(path)
    name, version, labels = cfg.model.name, cfg.model.version, list(cfg.postprocess_labels())
    manifest = None
    if path.endswith(".eapkg") and content is None:
        from agent.release.package import check_artifact, read_package, verify_package
        from agent.release.signing import load_trusted_keys

        try:
            pkg = read_package(data)
            keys = load_trusted_keys(cfg.ota.trusted_keys)
            if keys or (pkg.signature is not None and not cfg.ota.allow_unsigned):
                verify_package(pkg, keys, allow_unsigned=cfg.ota.allow_unsigned)
            else:  # nothing to check a signature against: the model must still match its hash
                check_artifact(pkg.manifest, pkg.model)
        except EdgeAgentError as exc:
            raise ModelError(f"model package {path}: {exc}") from exc
        data = pkg.model
        name, version = pkg.manifest.name, pkg.manifest.version
        labels = list(pkg.manifest.labels) or labels
        manifest = pkg.manifest
    elif path == BUILTIN_DEMO_MODEL and not labels:
        labels = DEMO_LABELS
    window = (cfg.window.length, cfg.channels)
    spec = manifest.preprocess if manifest is not None else None
    if spec is not None:  # the package decides the window (agent.model.compat.resolve)
        window = (spec.window, spec.channels or cfg.channels)
    model = load_model(
        data,
        runtime=cfg.model.runtime,
        num_threads=cfg.model.num_threads,
        reference_kernels=cfg.model.reference_kernels,
        signature=cfg.model.signature,
        window=window,
    )
    return ActiveModel(
        model=model,
        name=name,
        version=version,
        labels=labels,
        sha256=hashlib.sha256(data).hexdigest(),
        manifest=manifest,
    )
