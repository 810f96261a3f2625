"""Whether a model version fits the pipeline: ``agent.model.compat``, in OTA's words.

The one compatibility check lives in ``agent.model.compat`` (start-up, OTA and the converters
share it); here its ``IncompatibleModel`` / ``PackageConflict`` become ``UpdateError`` with
the same ``reason`` (``agent_too_old``, ``incompatible_input``, ``incompatible_output``,
``incompatible_postprocess``, ``incompatible_preprocess``, ``wrong_model``), reported over MQTT.

An offer is judged against the running pipeline's configuration as it is (``check_compatible``:
a live agent does not re-window); an installed version at start is first resolved against the
operator's config (``resolve_installed``: the manifest decides, as for ``model.path``).
"""

from __future__ import annotations

import agent
from agent.config import Config
from agent.errors import IncompatibleModel, PackageConflict, UpdateError
from agent.model import compat as shared
from agent.release.manifest import Manifest


def check_compatible(
    manifest: Manifest, cfg: Config, agent_version: str = agent.__version__
) -> None:
    """Raise ``UpdateError`` unless ``manifest`` fits the pipeline configured by ``cfg``.

    A device awaiting its first model (``model.path = "none"``) has no pipeline yet: the
    package decides, as for a package named by ``model.path``."""
    if cfg.awaiting_model:
        resolve_installed(cfg, manifest)
        return
    try:
        shared.check_compatible(manifest, cfg, agent_version)
    except IncompatibleModel as exc:
        raise UpdateError(exc.reason, exc.detail) from exc


def resolve_installed(cfg: Config, manifest: Manifest) -> Config:
    """The configuration an installed version runs with (``UpdateError`` when it cannot)."""
    try:
        return shared.resolve_and_check(cfg, manifest)
    except PackageConflict as exc:
        detail = "; ".join(f"{key}: {why}" for key, why in exc.problems)
        raise UpdateError(exc.reason, detail) from exc
    except IncompatibleModel as exc:
        raise UpdateError(exc.reason, exc.detail) from exc
