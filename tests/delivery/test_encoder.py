"""``PayloadEncoder`` builds prediction JSON without a dict: byte for byte what
``json.dumps(prediction_dict(...), separators=(",", ":"), allow_nan=False)`` gives."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.delivery.publisher import PayloadEncoder, PredictionRecord
from agent.wire.predictions import PredictionBatchV1, PredictionV1, prediction_dict

finite = st.floats(allow_nan=False, allow_infinity=False)
text = st.text(max_size=20)
json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | finite | text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12,
)


def _reference(seq: int, device: str, rec: PredictionRecord) -> bytes:
    d = prediction_dict(
        seq,
        device,
        rec.model_name,
        rec.model_version,
        rec.stream,
        rec.ts,
        rec.outputs,
        rec.latency_ms,
    )
    return json.dumps(d, separators=(",", ":"), allow_nan=False).encode()


@given(
    seq=st.integers(0, 2**62),
    device=text,
    name=text,
    version=text,
    stream=text,
    ts=finite,
    outputs=st.dictionaries(text, json_value, max_size=5),
    latency=finite | st.integers(0, 10**6),
)
def test_encoder_matches_json_dumps(
    seq: int,
    device: str,
    name: str,
    version: str,
    stream: str,
    ts: float,
    outputs: dict[str, Any],
    latency: float,
) -> None:
    rec = PredictionRecord("t", name, version, stream, ts, outputs, latency, 0.0)
    enc = PayloadEncoder(device)
    got = enc(seq, rec)
    assert got == _reference(seq, device, rec)
    assert enc(seq, rec) == got  # the cached head gives the same bytes again


def test_encoded_payloads_validate_and_batch() -> None:
    enc = PayloadEncoder("dev")
    recs = [
        PredictionRecord("t", "m", "1.0", "s", 1.5 + i, {"label": "a"}, 0.25, 0.0) for i in range(3)
    ]
    single = [enc(i, r) for i, r in enumerate(recs)]
    for i, p in enumerate(single):
        assert PredictionV1.model_validate_json(p).seq == i
    batch = PredictionBatchV1.model_validate_json(enc.batch(single))
    assert [p.seq for p in batch.batch] == [0, 1, 2]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_numbers_raise_like_json_dumps(bad: float) -> None:
    rec = PredictionRecord("t", "m", "1", "s", bad, {}, 0.1, 0.0)
    with pytest.raises(ValueError):
        PayloadEncoder("d")(0, rec)
