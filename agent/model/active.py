"""The model the agent serves: a loaded interpreter plus the release it came from."""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.model.runtime import Model
from agent.release.manifest import Manifest


@dataclass
class ActiveModel:
    """A loaded model plus what the pipeline needs to run it."""

    model: Model
    name: str
    version: str
    labels: list[str] = field(default_factory=list)
    sha256: str = ""
    manifest: Manifest | None = None
    """The signed manifest when the model came from a package: it decides the pipeline
    (``agent.model.compat.resolve``)."""
