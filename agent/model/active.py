"""The model the agent serves: a loaded interpreter plus the release it came from."""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.model.runtime import Model
from agent.release.reference import Reference


@dataclass
class ActiveModel:
    """A loaded model plus what the pipeline needs to run it."""

    model: Model
    name: str
    version: str
    labels: list[str] = field(default_factory=list)
    sha256: str = ""
    reference: Reference | None = None
    """The package's reference statistics (drift monitoring), when it carries them."""
