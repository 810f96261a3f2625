"""The hot path's prediction JSON is byte for byte ``json.dumps(prediction_dict(...))`` and
validates as ``PredictionV1``, the window's first sample included."""

from __future__ import annotations

import json

import pytest

from agent.delivery.publisher import PayloadEncoder, PredictionRecord
from agent.wire.predictions import PredictionV1, prediction_dict


@pytest.mark.parametrize("sample", [0, 16, 2**40])
def test_encoder_matches_prediction_dict_with_sample(sample: int) -> None:
    outputs = {"label": "yes", "score": 0.99609375, "top": [{"label": "yes", "score": 0.99609375}]}
    rec = PredictionRecord("t", "kws", "1.0", "mic", 1.7e9 + 0.125, outputs, 0.0421, 0.0, sample)
    got = PayloadEncoder("dev-1")(7, rec)
    want = prediction_dict(7, "dev-1", "kws", "1.0", "mic", 1.7e9 + 0.125, outputs, 0.0421, sample)
    assert got == json.dumps(want, separators=(",", ":"), allow_nan=False).encode()
    p = PredictionV1.model_validate_json(got)
    assert p.sample == sample and p.stream == "mic" and p.outputs["score"] == 0.99609375
