"""Drift scores, the drift alert and the shadow report (docs/payloads.md, docs/shadow-and-drift.md).

- ``DriftV1``: the drift scores, in ``MetricsV1.drift`` and ``GET /drift`` of the HTTP API;
- ``DriftAlertV1``: retained on ``<prefix>/<device>/drift``, published when the alert is raised
  or cleared (and after each reconnect);
- ``ShadowReportV1``: retained on ``<prefix>/<device>/shadow/<model>`` at the metrics interval
  while a shadow runs; it names the candidate version it is about.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from agent.wire.base import Wire
from agent.wire.predictions import ModelRef

OUTPUT = "output"
"""The name of the output in drift channel lists (input channels are ``ch0``, ``ch1``...)."""


def channel_name(i: int) -> str:
    """The drift score name of input channel ``i``: ``ch<i>``."""
    return f"ch{i}"


class DriftScoreV1(Wire):
    """Drift scores of one input channel or of the output."""

    name: str = Field(description="'ch<i>' for input channel i, or 'output'.")
    psi: float = Field(ge=0, description="Population stability index against the reference.")
    out_of_range: float = Field(
        ge=0, le=1, description="Share of values outside the reference range [lo, hi]."
    )
    mean: float | None = Field(None, description="Mean over the rolling window (inputs).")
    std: float | None = Field(None, ge=0, description="Std over the rolling window (inputs).")


class DriftV1(Wire):
    """The drift scores of the running model over the rolling windows."""

    v: Literal[1] = Field(1, description="Payload schema version.")
    model: ModelRef = Field(description="The model whose reference is compared against.")
    samples: int = Field(ge=0, description="Samples per channel in the rolling window now.")
    predictions: int = Field(ge=0, description="Predictions in the output's rolling window.")
    judged: bool = Field(description="The windows are full enough to raise or clear the alert.")
    score: float = Field(ge=0, description="The largest PSI over channels and output.")
    alert: bool = Field(description="The drift alert is raised.")
    threshold: float = Field(description="PSI that raises the alert.")
    clear_below: float = Field(description="PSI below which it clears.")
    channels: list[DriftScoreV1] = Field(description="Per input channel, then the output.")


class DriftAlertV1(Wire):
    """Retained on ``<prefix>/<device>/drift``: whether the drift alert is raised, and why."""

    v: Literal[1] = Field(1, description="Payload schema version.")
    device: str = Field(description="Device id.")
    ts: float = Field(description="When the alert was raised or cleared (epoch seconds).")
    model: ModelRef = Field(description="The model whose reference is compared against.")
    active: bool = Field(description="True: raised; false: cleared.")
    channels: list[str] = Field(
        description="Channels over the threshold when raised ('ch<i>', 'output'); empty when "
        "cleared."
    )
    psi: dict[str, float] = Field(description="Every channel's PSI at that moment.")
    threshold: float = Field(description="PSI that raises the alert.")
    clear_below: float = Field(description="PSI below which it clears.")


class LatencyPairMs(Wire):
    """Median and p99 invoke latency (ms) in a shadow report."""

    p50: float = Field(ge=0, description="Median invoke latency, ms.")
    p99: float = Field(ge=0, description="99th percentile, ms.")


class OutputDiffV1(Wire):
    """How far the candidate's output tensor is from the active model's."""

    name: str = Field(description="Output tensor name.")
    mean_abs_diff: float = Field(ge=0, description="Mean |candidate - active| over all values.")
    max_abs_diff: float = Field(ge=0, description="Largest |candidate - active|.")


class DisagreementV1(Wire):
    """One window where the shadow candidate and the active model disagreed."""

    stream: str = Field(description="Stream the window came from.")
    ts: float = Field(description="Timestamp of the window's last sample.")
    active: int | None = Field(description="Active model's top-1 class index (classification).")
    candidate: int | None = Field(description="Candidate's top-1 class index.")
    active_outputs: list[float] = Field(description="Active model's first output (flattened).")
    candidate_outputs: list[float] = Field(description="Candidate's first output (flattened).")
    window: list[float] | None = Field(
        None, description="The window's normalised values (flattened), when under the byte cap."
    )


class EventAgreementV1(Wire):
    """How often the candidate's detection events match the active model's."""

    active: int = Field(ge=0, description="Detection events the active model raised.")
    candidate: int = Field(ge=0, description="Detection events the candidate raised.")
    matched: int = Field(
        ge=0, description="Pairs of events with the same label whose sample spans overlap."
    )
    agreement: float | None = Field(
        None, ge=0, le=1, description="matched / max(active, candidate); null: no events yet."
    )


class ShadowReportV1(Wire):
    """Retained on ``<prefix>/<device>/shadow/<model>`` while a candidate is shadowed."""

    v: Literal[1] = Field(1, description="Payload schema version.")
    device: str = Field(description="Device id.")
    ts: float = Field(description="When this report was taken (epoch seconds).")
    active: ModelRef = Field(description="The model serving predictions.")
    candidate: ModelRef = Field(description="The shadowed model.")
    candidate_sha256: str = Field(description="sha256 of the candidate's model file.")
    since: float = Field(description="When the shadow started (epoch seconds).")
    windows_compared: int = Field(ge=0, description="Windows both models ran on.")
    windows_skipped: int = Field(
        ge=0, description="Windows the shadow skipped because it was behind."
    )
    top1_agreements: int | None = Field(
        None, ge=0, description="Windows with the same top-1 class (classification)."
    )
    top1_agreement: float | None = Field(
        None, ge=0, le=1, description="top1_agreements / windows_compared (classification)."
    )
    outputs: list[OutputDiffV1] = Field(description="Per output tensor, in order.")
    latency_ms: dict[str, LatencyPairMs] = Field(
        description="'active' and 'candidate' invoke latency over recent windows."
    )
    errors: dict[str, int] = Field(
        default_factory=dict, description="Candidate failures, per reason."
    )
    disagreements: list[DisagreementV1] = Field(
        default_factory=list, description="A bounded sample of windows where top-1 differs."
    )
    events: EventAgreementV1 | None = Field(
        None, description="Detection (postprocess.type = 'detection'): the events each raised."
    )
