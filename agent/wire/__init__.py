"""Every versioned payload on the wire (one base class, ``Wire``) and the topics they go to.

The hot path builds prediction JSON from plain dicts (``prediction_dict``); tests validate
that output against these models. docs/payloads.md documents each one.

The names below are imported from their modules on first use (PEP 562), and every ``Wire``
model builds its validator when it is first used (``defer_build``): a device that never sends
an OTA state or a drift alert never pays for those models (start-up time and RSS).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.wire.base import Wire
    from agent.wire.detection import (
        DetectionEventV1,
        DetectionHeartbeatV1,
        DetectionHit,
        DetectionOutputs,
    )
    from agent.wire.fieldcheck import DriftAlertV1, DriftScoreV1, DriftV1, ShadowReportV1
    from agent.wire.metrics import (
        METRICS_SCHEMA,
        LatencyMs,
        MetricsV1,
        MqttStats,
        QueueStats,
        Rates,
    )
    from agent.wire.ota import DownloadProgress, OtaStateV1, Phase, Refusal
    from agent.wire.predictions import (
        PREDICTION_SCHEMA,
        ModelRef,
        PredictionBatchV1,
        PredictionV1,
        prediction_dict,
    )
    from agent.wire.topics import Topics

_MODULES = {
    "base": ("Wire",),
    "detection": ("DetectionEventV1", "DetectionHeartbeatV1", "DetectionHit", "DetectionOutputs"),
    "fieldcheck": ("DriftAlertV1", "DriftScoreV1", "DriftV1", "ShadowReportV1"),
    "metrics": ("METRICS_SCHEMA", "LatencyMs", "MetricsV1", "MqttStats", "QueueStats", "Rates"),
    "ota": ("DownloadProgress", "OtaStateV1", "Phase", "Refusal"),
    "predictions": (
        "PREDICTION_SCHEMA",
        "ModelRef",
        "PredictionBatchV1",
        "PredictionV1",
        "prediction_dict",
    ),
    "topics": ("Topics",),
}
_WHERE = {name: module for module, names in _MODULES.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


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
