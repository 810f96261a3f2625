"""The ``outputs`` of a ``[postprocess] type = "detection"`` prediction (docs/payloads.md).

``agent.model.detection`` builds these as plain dicts on the hot path; tests validate them
against these models. A detection prediction's ``outputs`` is either an event or a heartbeat
(``type`` tells which).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from agent.wire.base import Wire


class DetectionHit(Wire):
    """One label that rose over its threshold."""

    label: str = Field(description="The label that rose (its mean went above its threshold).")
    mean: float = Field(description="Its mean score over the averaged windows (what crossed).")
    peak: float = Field(description="Its highest single-window score among those windows.")
    threshold: float = Field(description="Its threshold; the rule is mean > threshold.")


class DetectionEventV1(DetectionHit):
    """A detection prediction's ``outputs`` when a label rose: the event."""

    type: Literal["event"] = "event"
    start_sample: int = Field(
        ge=0, description="First sample of the oldest averaged window (stream sample index)."
    )
    end_sample: int = Field(
        ge=1, description="One past the last sample of the newest averaged window."
    )
    windows: int = Field(ge=1, description="Windows averaged (postprocess.average_windows).")
    others: list[DetectionHit] = Field(
        default_factory=list,
        description="Other labels that rose in the same window, strongest first (usually none).",
    )


class DetectionHeartbeatV1(Wire):
    """A detection prediction's ``outputs`` when nothing rose: the current means."""

    type: Literal["heartbeat"] = "heartbeat"
    means: dict[str, float] = Field(description="Current mean score per watched label.")
    start_sample: int = Field(ge=0, description="As in an event: the averaged windows' span.")
    end_sample: int = Field(ge=1, description="One past the span's last sample.")


DetectionOutputs = Annotated[DetectionEventV1 | DetectionHeartbeatV1, Field(discriminator="type")]
"""A detection prediction's ``outputs``: an event or a heartbeat."""
