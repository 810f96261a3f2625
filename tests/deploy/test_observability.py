"""deploy/grafana and deploy/prometheus: the dashboard and the alert rules load, are well
formed, and use only metrics the agent exports (a renamed metric breaks this test, not a
dashboard in the field)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from agent.metrics import KNOWN_COUNTERS, ON_DEMAND_COUNTERS, OTA_COUNTERS, Metrics
from agent.observe.prometheus import render_prometheus
from tests.observe.test_telemetry import filled_metrics, parse_prometheus, snapshot

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "edge-agent.json"
RULES = DEPLOY / "prometheus" / "edge-agent-alerts.yml"

PROMETHEUS_OWN = {"up"}  # made by Prometheus itself for every scrape target
PENDING = {
    # drift monitoring (issue #16) exports these; the drift panel and alert are ready for it
    "edge_agent_drift_alert",
    "edge_agent_drift_score",
}
_FUNCTIONS_AND_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "bool", "offset", "inf", "nan",
}  # fmt: skip
_DURATION = re.compile(r"^\d+[smhdwy]$")


def exported_series() -> set[str]:
    """Every sample name the agent renders with every feature on (OTA, HTTP API, a CPU
    temperature, both latency stages)."""
    m: Metrics = filled_metrics()
    m.observe("pipeline", 0.002)
    known = {**KNOWN_COUNTERS, **OTA_COUNTERS, **ON_DEMAND_COUNTERS}
    known["source_failures"] = known["source_restarts"] = ("accel",)
    series, _ = parse_prometheus(render_prometheus(snapshot(m), known))
    return {name for name, _ in series}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (label matchers, ranges, groupings, strings
    and function names taken out)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = re.sub(r"\b\d+(\.\d+)?([eE][-+]?\d+)?\b", " ", e)  # numbers, 1e-9 included
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    names = set()
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", e):
        token = m.group(0)
        after = e[m.end() :].lstrip()
        if after.startswith("(") or token.lower() in _FUNCTIONS_AND_KEYWORDS:
            continue
        names.add(token)
    return names


def test_metric_name_extraction() -> None:
    assert metric_names(
        'histogram_quantile(0.95, sum by (device, le) (rate(a_bucket{stage="x"}[5m]))) > 1'
    ) == {"a_bucket"}
    assert metric_names("x > 100 and deriv(y[10m]) > 0") == {"x", "y"}
    assert metric_names("sum(rate(c_total[1m])) / clamp_min(d, 1e-9)") == {"c_total", "d"}
    assert metric_names('time() - s{device=~"$device"}') == {"s"}


def _dashboard() -> dict[str, Any]:
    out: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return out


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [r for g in doc["groups"] for r in g["rules"]]


def test_dashboard_is_well_formed() -> None:
    d = _dashboard()
    assert d["uid"] and d["title"] and isinstance(d["schemaVersion"], int)
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert "edge_agent_info" in variables["device"]["query"]["query"]
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    cells = set()
    for p in d["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps another panel"
                cells.add((x, y))
        assert p["datasource"]["uid"] == "${datasource}"
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)) and all(t["expr"].strip() for t in p["targets"])


def test_alert_rules_are_well_formed() -> None:
    rules = _rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    for r in rules:
        assert set(r) <= {"alert", "expr", "for", "labels", "annotations"}, r["alert"]
        assert r["labels"]["severity"] in {"critical", "warning", "info"}, r["alert"]
        assert r["annotations"]["summary"], r["alert"]
        if "for" in r:
            assert _DURATION.match(r["for"]), r["alert"]
        assert r["expr"].count("(") == r["expr"].count(")"), r["alert"]
    # what the issue asks the rules to cover
    covered = " ".join(r["expr"] for r in rules)
    for what in ("up{", "queue_depth", "dropped_total", "ota_failed", "ota_rollbacks", "drift"):
        assert what in covered, what


def test_dashboard_and_rules_use_only_exported_metrics() -> None:
    exported = exported_series()
    assert "edge_agent_latency_seconds_bucket" in exported and "process_open_fds" in exported
    used: dict[str, set[str]] = {}
    for p in _dashboard()["panels"]:
        for t in p["targets"]:
            for name in metric_names(t["expr"]):
                used.setdefault(name, set()).add(f"panel {p['title']!r}")
    for r in _rules():
        for name in metric_names(r["expr"]):
            used.setdefault(name, set()).add(f"alert {r['alert']}")
    unknown = {n: w for n, w in used.items() if n not in exported | PROMETHEUS_OWN | PENDING}
    assert not unknown, f"metrics the agent does not export: {unknown}"
    # PENDING is for metrics another issue adds: once they are exported, drop them from it
    assert not PENDING & exported, f"exported now, remove from PENDING: {PENDING & exported}"
    assert set(used) >= PENDING
