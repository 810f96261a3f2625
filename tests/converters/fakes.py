"""Hand-made manifests and packages for tests that need no TensorFlow."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import numpy as np

from agent.release.manifest import (
    Artifact,
    BuildInfo,
    EncodedArray,
    GoldenSample,
    Manifest,
    TensorSpec,
)


def fake_manifest(model: bytes, **overrides: Any) -> Manifest:
    fields: dict[str, Any] = {
        "name": "fake",
        "version": "1.0.0",
        "created": datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
        "mode": "float32",
        "artifact": Artifact(sha256=hashlib.sha256(model).hexdigest(), size=len(model)),
        "inputs": [TensorSpec(name="window", shape=[1, 4], dtype="float32")],
        "outputs": [TensorSpec(name="output_0", shape=[1, 2], dtype="float32")],
        "labels": ["a", "b"],
        "min_agent_version": "0.1.0",
        "build": BuildInfo(converter="edge-agent test", runtime="none"),
        "golden": [
            GoldenSample(
                name="g0",
                inputs=[EncodedArray.from_numpy(np.zeros((1, 4), np.float32))],
                outputs=[EncodedArray.from_numpy(np.array([[0.5, 0.5]], np.float32))],
                atol=1e-4,
            )
        ],
    }
    fields.update(overrides)
    return Manifest(**fields)
