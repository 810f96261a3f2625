"""The one base class of every versioned payload the agent and its tools put on the wire."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Wire(BaseModel):
    """A payload: unknown fields are refused, so a schema change is never silently ignored."""

    model_config = ConfigDict(extra="forbid")
