"""The one base class of every versioned payload the agent and its tools put on the wire."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Wire(BaseModel):
    """A payload: unknown fields are refused, so a schema change is never silently ignored.

    Validators are built on first use (``defer_build``): the agent imports the payload modules
    it may need, and builds only the models it really sends or reads."""

    model_config = ConfigDict(extra="forbid", defer_build=True)
