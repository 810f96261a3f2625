"""The model the agent serves: a loaded interpreter plus the release it came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agent.model.runtime import Model

if TYPE_CHECKING:  # a bare .tflite has neither: the release models are imported with a package
    from agent.release.manifest import Manifest
    from agent.release.reference import Reference


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
    reference: Reference | None = None
    """The reference statistics for drift monitoring: the manifest's unless given."""

    def __post_init__(self) -> None:
        if self.reference is None and self.manifest is not None:
            self.reference = self.manifest.reference
