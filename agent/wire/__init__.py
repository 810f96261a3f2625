"""Every versioned payload on the wire (one base class, ``Wire``) and the topics they go to.

The hot path builds prediction JSON from plain dicts (``prediction_dict``); tests validate
that output against these models. docs/payloads.md documents each one.
"""

from agent.wire.base import Wire
from agent.wire.detection import (
    DetectionEventV1,
    DetectionHeartbeatV1,
    DetectionHit,
    DetectionOutputs,
)
from agent.wire.fieldcheck import (
    DriftAlertV1,
    DriftScoreV1,
    DriftV1,
    ShadowReportV1,
)
from agent.wire.metrics import METRICS_SCHEMA, LatencyMs, MetricsV1, MqttStats, QueueStats, Rates
from agent.wire.ota import DownloadProgress, OtaStateV1, Phase, Refusal
from agent.wire.predictions import (
    PREDICTION_SCHEMA,
    ModelRef,
    PredictionBatchV1,
    PredictionV1,
    prediction_dict,
)
from agent.wire.topics import Topics

__all__ = [
    "METRICS_SCHEMA",
    "PREDICTION_SCHEMA",
    "DetectionEventV1",
    "DetectionHeartbeatV1",
    "DetectionHit",
    "DetectionOutputs",
    "DownloadProgress",
    "DriftAlertV1",
    "DriftScoreV1",
    "DriftV1",
    "LatencyMs",
    "MetricsV1",
    "ModelRef",
    "MqttStats",
    "OtaStateV1",
    "Phase",
    "PredictionBatchV1",
    "PredictionV1",
    "QueueStats",
    "Rates",
    "Refusal",
    "ShadowReportV1",
    "Topics",
    "Wire",
    "prediction_dict",
]
