"""The periodic metrics message on ``<prefix>/<device>/metrics`` (docs/payloads.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from agent.wire.base import Wire
from agent.wire.fieldcheck import DriftV1
from agent.wire.predictions import ModelRef

METRICS_SCHEMA = 1


class LatencyMs(Wire):
    """Latency percentiles (ms) in ``MetricsV1``."""

    p50: float = Field(ge=0, description="Median over the most recent observations, ms.")
    p95: float = Field(ge=0, description="95th percentile, ms.")
    p99: float = Field(ge=0, description="99th percentile, ms.")


class LatencyHistogram(Wire):
    """Every observation since the start, in buckets (Prometheus' histogram)."""

    le: list[float] = Field(description="Bucket upper bounds, seconds (``+Inf`` implied).")
    cumulative: list[int] = Field(description="Observations <= each bound.")
    sum_s: float = Field(ge=0, description="Sum of all observations, seconds.")
    count: int = Field(ge=0, description="Number of observations.")


class ProcessFacts(Wire):
    """The agent process, as Prometheus' ``process_*`` metrics describe one."""

    cpu_seconds: float = Field(ge=0, description="User + system CPU time.")
    virtual_memory_bytes: int | None = Field(None, ge=0, description="Virtual memory size.")
    open_fds: int | None = Field(None, ge=0, description="Open file descriptors.")
    max_fds: int | None = Field(None, ge=0, description="The soft limit on open files.")
    start_time_s: float = Field(description="When the process started (epoch seconds).")


class QueueStats(Wire):
    """The store-and-forward queue in ``MetricsV1``."""

    depth: int = Field(ge=0, description="Messages waiting in the store-and-forward queue.")
    dropped: int = Field(ge=0, description="Messages the queue cap dropped (oldest first).")


class MqttStats(Wire):
    """The MQTT connection in ``MetricsV1``."""

    connected: bool = Field(description="Connected to the broker now.")
    reconnects: int = Field(ge=0, description="Reconnect attempts since start.")


class Rates(Wire):
    """Sample and prediction rates in ``MetricsV1``."""

    samples_per_s: float = Field(ge=0, description="Samples in per second since the last report.")
    predictions_per_s: float = Field(
        ge=0, description="Predictions out per second since the last report."
    )


class MetricsV1(Wire):
    """The periodic metrics message on ``<prefix>/<device>/metrics``."""

    v: Literal[1] = Field(1, description="Payload schema version.")
    device: str = Field(description="Device id.")
    groups: list[str] = Field(default_factory=list, description="The device's groups.")
    ota_channels: list[str] = Field(
        default_factory=list, description="OTA channels the device follows (empty: OTA off)."
    )
    ts: float = Field(description="When this snapshot was taken (epoch seconds).")
    agent_version: str = Field(description="edge-agent version.")
    uptime_s: float = Field(ge=0, description="Seconds since the agent started.")
    model: ModelRef = Field(description="The model running now.")
    samples_in: int = Field(ge=0, description="Samples read from all sources.")
    samples_rejected: dict[str, int] = Field(
        default_factory=dict, description="Malformed samples, per reason."
    )
    samples_dropped: dict[str, int] = Field(
        default_factory=dict, description="Valid samples not processed, per reason."
    )
    predictions_out: int = Field(ge=0, description="Predictions handed to the queue.")
    messages_acked: int = Field(ge=0, description="Messages the broker acknowledged.")
    inference_errors: dict[str, int] = Field(
        default_factory=dict, description="Failed windows, per reason (non_finite, error)."
    )
    queue: QueueStats = Field(description="Store-and-forward queue.")
    mqtt: MqttStats = Field(description="Broker connection.")
    latency_ms: dict[str, LatencyMs] = Field(
        default_factory=dict,
        description="'invoke': the model call; 'pipeline': sample in to broker ack.",
    )
    latency_histogram: dict[str, LatencyHistogram] = Field(
        default_factory=dict,
        description="The same stages as latency_ms, every observation since the start.",
    )
    rates: Rates = Field(description="Throughput since the previous snapshot.")
    memory_rss_bytes: int | None = Field(None, ge=0, description="Resident memory (bytes).")
    cpu_temp_c: float | None = Field(None, description="CPU temperature, if the board has one.")
    drift: DriftV1 | None = Field(
        None, description="Drift scores (null: the model's package has no reference)."
    )
    shadow_agreement: float | None = Field(
        None, description="Top-1 agreement of the shadowed candidate so far (null: none)."
    )
    process: ProcessFacts | None = Field(None, description="CPU time, memory, file descriptors.")
    other: dict[str, int | dict[str, int]] = Field(
        default_factory=dict,
        description="Every other counter (source_failures, predictions_dropped, ...), "
        "per reason where it has one.",
    )
