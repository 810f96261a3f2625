"""Drift scores and shadow agreement in the metrics payload and the Prometheus exposition."""

from __future__ import annotations

from agent.observe.prometheus import render_prometheus
from agent.wire.fieldcheck import DriftScoreV1, DriftV1
from agent.wire.metrics import MetricsV1
from agent.wire.predictions import ModelRef
from tests.observe.test_telemetry import filled_metrics, parse_prometheus, snapshot


def _with_drift() -> MetricsV1:
    drift = DriftV1(
        model=ModelRef(name="m", version="1.0.0"),
        samples=4096,
        predictions=1024,
        judged=True,
        score=0.41,
        alert=True,
        threshold=0.25,
        clear_below=0.1,
        channels=[
            DriftScoreV1(name="ch0", psi=0.01, out_of_range=0.0, mean=0.0, std=1.0),
            DriftScoreV1(name="ch1", psi=0.41, out_of_range=0.12, mean=1.5, std=1.0),
            DriftScoreV1(name="output", psi=0.05, out_of_range=0.0),
        ],
    )
    m = snapshot(filled_metrics())
    return m.model_copy(update={"drift": drift, "shadow_agreement": 0.985})


def test_drift_and_shadow_in_prometheus() -> None:
    m = _with_drift()
    series, types = parse_prometheus(render_prometheus(m))
    assert types["edge_agent_drift_psi"] == "gauge"
    assert series[("edge_agent_drift_psi", (("channel", "ch1"), ("device", "pi-1")))] == 0.41
    assert (
        series[("edge_agent_drift_out_of_range", (("channel", "ch1"), ("device", "pi-1")))] == 0.12
    )
    assert series[("edge_agent_drift_alert", (("device", "pi-1"),))] == 1
    assert series[("edge_agent_drift_score", (("device", "pi-1"),))] == 0.41
    assert series[("edge_agent_shadow_agreement", (("device", "pi-1"),))] == 0.985


def test_metrics_payload_round_trips_with_and_without_drift() -> None:
    m = _with_drift()
    assert MetricsV1.model_validate_json(m.model_dump_json()) == m
    plain = snapshot(filled_metrics())
    assert plain.drift is None and plain.shadow_agreement is None
    series, _ = parse_prometheus(render_prometheus(plain))
    assert not any(name.startswith("edge_agent_drift") for name, _ in series)
