"""Wire payloads: versioned pydantic models of everything the agent publishes.

These models are the documentation (docs/payloads.md) and what tests and the fleet tool parse
with. The hot path builds the same JSON from plain dicts (``prediction_dict``) to save the cost
of a model instance per prediction; tests validate that output against these models.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from agent.wire.base import Wire

PREDICTION_SCHEMA = 1


class ModelRef(Wire):
    """The model that made a prediction."""

    name: str = Field(description="Model name.")
    version: str = Field(description="Model version that produced this prediction.")


class PredictionV1(Wire):
    """One prediction, published on ``<prefix>/<device>/prediction/<model>``."""

    v: Literal[1] = Field(1, description="Payload schema version.")
    seq: int = Field(
        ge=0,
        description="Per-device sequence number: +1 for every prediction, never reused, never "
        "going backwards (a high-water mark outside the spool survives its loss). Subscribers "
        "de-duplicate on it and spot gaps.",
    )
    boot: int = Field(
        0,
        ge=0,
        description="The agent's boot counter: +1 at every start, kept outside the spool. A "
        "resent message keeps its boot and seq, so (boot, seq) tells a restart from a duplicate. "
        "0 (absent) from agents before it existed.",
    )
    device: str = Field(description="Device id.")
    model: ModelRef
    stream: str = Field(description="Source stream the window came from.")
    ts: float = Field(description="Timestamp (epoch seconds) of the window's last sample.")
    sample: int = Field(
        ge=0,
        description="Index of the window's first sample in its stream (window k of a stream "
        "starts at sample k * window.hop): places the prediction in a recording.",
    )
    outputs: dict[str, Any] = Field(description="Postprocessed outputs (docs/payloads.md).")
    latency_ms: float = Field(description="Inference latency (preprocess + invoke), ms.")
    clock_synced: bool = Field(
        True,
        description="false when the prediction was made before the system clock was "
        "synchronised (systemd-timesyncd): its ts may be wrong. Absent (true) otherwise.",
    )


class PredictionBatchV1(Wire):
    """Several predictions in one message (``[mqtt.batch]``)."""

    v: Literal[1] = 1
    device: str
    batch: list[PredictionV1] = Field(description="Several predictions, in sequence order.")


def prediction_dict(
    seq: int,
    device: str,
    model_name: str,
    model_version: str,
    stream: str,
    ts: float,
    outputs: dict[str, Any],
    latency_ms: float,
    sample: int = 0,
    boot: int = 0,
) -> dict[str, Any]:
    """The JSON object of ``PredictionV1``, built without a model instance."""
    return {
        "v": PREDICTION_SCHEMA,
        "seq": seq,
        "boot": boot,
        "device": device,
        "model": {"name": model_name, "version": model_version},
        "stream": stream,
        "ts": ts,
        "sample": sample,
        "outputs": outputs,
        "latency_ms": latency_ms,
    }
