"""Telemetry: the MetricsV1 payload, its Prometheus rendering, the reporter, and the real agent.

The Prometheus text is checked by a small parser written here from the exposition format
(0.0.4), independent of the renderer: every line is a HELP, a TYPE or a sample; every sample
belongs to a family whose TYPE came first; label values are escaped; no series repeats.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from pathlib import Path

import pytest

from agent.config import MqttSection
from agent.delivery.mqtt import MqttLink, collect_retained
from agent.metrics import KNOWN_COUNTERS, LATENCY_BUCKETS_S, OTA_COUNTERS, Metrics
from agent.observe.prometheus import render_prometheus
from agent.observe.telemetry import (
    MetricsReporter,
    RateMeter,
    build_metrics,
    cpu_temperature_c,
    process_facts,
    process_start_time,
    rss_bytes,
)
from agent.wire.metrics import MetricsV1, ProcessFacts
from tests.agentproc import AgentProcess, write_config
from tests.broker import Broker
from tests.fleet.support import agent_config
from tests.mqttclient import Collector, Received

# --------------------------------------------------------------------------- helpers

_SAMPLE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)"
    r"(?:\{(?P<labels>(?:[a-zA-Z_][a-zA-Z0-9_]*=\"(?:[^\"\\\n]|\\[\\\"n])*\",?)*)\})?"
    r" (?P<value>\S+)$"
)
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')
Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_prometheus(text: str) -> tuple[Series, dict[str, str]]:
    """Strict parse of the text format: (series -> value, family -> type)."""
    assert text.endswith("\n"), "exposition must end with a newline"
    types: dict[str, str] = {}
    helps: set[str] = set()
    series: Series = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert name not in helps, f"HELP twice for {name}"
            helps.add(name)
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in {"counter", "gauge", "summary", "histogram", "untyped"}, line
            assert name not in types, f"TYPE twice for {name}"
            types[name] = kind
            continue
        assert not line.startswith("#"), f"stray comment {line!r}"
        m = _SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        name = m["name"]
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in types or types.get(base) == "histogram", f"sample {name} before its TYPE"
        labels = tuple(sorted(_LABEL.findall(m["labels"] or "")))
        value = float(m["value"].replace("+Inf", "inf").replace("-Inf", "-inf"))
        key = (name, labels)
        assert key not in series, f"series repeated: {key}"
        series[key] = value
    return series, types


def value(series: Series, name: str, **labels: str) -> float:
    for (n, ls), v in series.items():
        if n == name and all((k, labels[k]) in ls for k in labels):
            return v
    raise KeyError(f"{name} {labels} not in {sorted(series)[:10]}...")


class FakeLink:
    connected = True
    reconnects = 3


class FakeProcess:
    def rss_bytes(self) -> int | None:
        return 41_000_000

    def cpu_temperature_c(self) -> float | None:
        return 52.5

    def facts(self, started: float) -> ProcessFacts | None:
        return ProcessFacts(
            cpu_seconds=12.5,
            virtual_memory_bytes=300_000_000,
            open_fds=17,
            max_fds=1024,
            start_time_s=started,
        )


def filled_metrics() -> Metrics:
    m = Metrics()
    m.inc("samples_in", 1000)
    m.inc("samples_rejected", 3, reason="not_finite")
    m.inc("samples_rejected", 2, reason="wrong_shape")
    m.inc("samples_dropped", 7, reason="ingest_overflow")
    m.inc("predictions_out", 60)
    m.inc("messages_acked", 58)
    m.inc("inference_errors", 1, reason="non_finite")
    m.inc("queue_dropped", 4)
    m.inc("source_failures", 1, reason="accel")
    m.inc("on_demand_predictions", 5)
    for i in range(100):
        m.observe("invoke", (i + 1) / 1e5)
    m.set("model_version", "1.2.0")
    return m


def snapshot(m: Metrics, now: float | None = None) -> MetricsV1:
    return build_metrics(
        m,
        device="pi-1",
        groups=["lab"],
        ota_channels=["canary"],
        agent_version="0.1.0",
        model_name="demo",
        model_version="1.2.0",
        link=FakeLink(),
        queue_depth=12,
        rates=RateMeter(m.started),
        process=FakeProcess(),
        now=now,
    )


# --------------------------------------------------------------------------- process facts


def test_cpu_temperature_prefers_the_cpu_zone(tmp_path: Path) -> None:
    for name, kind, milli in [
        ("thermal_zone0", "acpitz", "27800"),
        ("thermal_zone1", "x86_pkg_temp", "61250"),
        ("thermal_zone2", "iwlwifi_1", "-273000"),
    ]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "type").write_text(kind + "\n")
        (tmp_path / name / "temp").write_text(milli + "\n")
    assert cpu_temperature_c(tmp_path) == 61.2  # rounded to 0.1 °C (61.25 -> banker's 61.2)


def test_cpu_temperature_first_readable_zone_and_none(tmp_path: Path) -> None:
    assert cpu_temperature_c(tmp_path) is None  # an x86 VM: no zones
    (tmp_path / "thermal_zone0").mkdir()
    (tmp_path / "thermal_zone0" / "temp").write_text("garbage")
    assert cpu_temperature_c(tmp_path) is None
    (tmp_path / "thermal_zone1").mkdir()
    (tmp_path / "thermal_zone1" / "temp").write_text("48312\n")  # a Pi: cpu-thermal, no type read
    assert cpu_temperature_c(tmp_path) == 48.3


def test_rss_from_statm_and_fallback(tmp_path: Path) -> None:
    rss = rss_bytes()
    assert rss is not None and 10_000_000 < rss < 4_000_000_000
    peak = rss_bytes(tmp_path / "missing")  # no /proc: the peak RSS from resource
    assert peak is not None and peak >= rss * 0.5


# --------------------------------------------------------------------------- payload


def test_metrics_payload_counts_every_reason() -> None:
    m = snapshot(filled_metrics(), now=None)
    again = MetricsV1.model_validate_json(m.model_dump_json())  # the wire round trip
    assert again == m
    assert m.samples_in == 1000 and m.predictions_out == 60 and m.messages_acked == 58
    assert m.samples_rejected == {"not_finite": 3, "wrong_shape": 2}
    assert m.samples_dropped == {"ingest_overflow": 7}
    assert m.inference_errors == {"non_finite": 1}
    assert (m.queue.depth, m.queue.dropped) == (12, 4)
    assert (m.mqtt.connected, m.mqtt.reconnects) == (True, 3)
    assert m.model.version == "1.2.0" and m.groups == ["lab"] and m.ota_channels == ["canary"]
    assert m.other == {"source_failures": {"accel": 1}, "on_demand_predictions": 5}
    inv = m.latency_ms["invoke"]
    assert 0.49 <= inv.p50 <= 0.52 and inv.p50 <= inv.p95 <= inv.p99 <= 1.0
    assert m.memory_rss_bytes == 41_000_000 and m.cpu_temp_c == 52.5
    with pytest.raises(ValueError):
        MetricsV1.model_validate({**json.loads(m.model_dump_json()), "surprise": 1})


def test_rate_meter() -> None:
    r = RateMeter(started=100.0, horizon_s=10.0)
    assert r.update(110.0, 500, 20) == (50.0, 2.0)  # first: since the start
    assert r.update(112.0, 720, 30) == (60.0, 2.5)  # still against the start (12 s)
    assert r.update(121.0, 1600, 42) == (100.0, 2.0)  # against t=110, the newest >= 10 s old
    assert r.update(121.0, 1600, 42) == (100.0, 2.0)  # a scrape at once: the same figure


# --------------------------------------------------------------------------- prometheus


def test_prometheus_text_is_valid_and_agrees_with_the_payload() -> None:
    m = snapshot(filled_metrics())
    series, types = parse_prometheus(render_prometheus(m))
    p = "edge_agent_"
    assert types[p + "samples_in_total"] == "counter"
    assert types[p + "queue_depth"] == "gauge"
    assert types[p + "latency_seconds"] == "histogram"
    assert value(series, p + "samples_in_total", device="pi-1") == 1000
    assert value(series, p + "samples_rejected_total", reason="not_finite") == 3
    assert value(series, p + "samples_rejected_total", reason="wrong_shape") == 2
    assert value(series, p + "samples_dropped_total", reason="ingest_overflow") == 7
    assert value(series, p + "inference_errors_total", reason="non_finite") == 1
    assert value(series, p + "queue_depth") == 12
    assert value(series, p + "queue_dropped_total") == 4
    assert value(series, p + "mqtt_reconnects_total") == 3
    assert value(series, p + "mqtt_connected") == 1
    assert value(series, p + "model_info", model="demo", version="1.2.0") == 1
    assert value(series, p + "source_failures_total", reason="accel") == 1
    assert value(series, p + "on_demand_predictions_total") == 5
    # the histogram: 100 observations of 10..1000 us
    h = m.latency_histogram["invoke"]
    assert h.count == 100 and math.isclose(h.sum_s, sum((i + 1) / 1e5 for i in range(100)))
    assert value(series, p + "latency_seconds_bucket", stage="invoke", le="0.0001") == 10
    assert value(series, p + "latency_seconds_bucket", stage="invoke", le="0.001") == 100
    assert value(series, p + "latency_seconds_bucket", stage="invoke", le="+Inf") == 100
    assert value(series, p + "latency_seconds_count", stage="invoke") == 100
    assert math.isclose(value(series, p + "latency_seconds_sum", stage="invoke"), h.sum_s)
    assert value(series, "process_resident_memory_bytes") == 41_000_000
    assert value(series, "process_open_fds") == 17
    assert value(series, "process_cpu_seconds_total") == 12.5
    assert value(series, p + "cpu_temperature_celsius") == 52.5
    # rates are PromQL's business: no *_per_second gauges
    assert not [n for n in types if n.endswith("per_second")]
    assert all(("device", "pi-1") in labels for (_, labels) in series)


def test_prometheus_client_reads_every_family() -> None:
    """prometheus-client's own parser (the reference) reads the text; every family has the
    type its name promises and only the sample names that type allows."""
    from prometheus_client.parser import text_string_to_metric_families

    known = {**KNOWN_COUNTERS, **OTA_COUNTERS, "source_failures": ("accel", "mic")}
    text = render_prometheus(snapshot(filled_metrics()), known)
    families = list(text_string_to_metric_families(text))
    assert families
    seen = set()
    for fam in families:
        seen.add(fam.name)
        names = {s.name for s in fam.samples}
        assert fam.samples, fam.name
        assert fam.documentation, fam.name
        if fam.type == "counter":
            assert names == {fam.name + "_total"}, (fam.name, names)
        elif fam.type == "gauge":
            assert names == {fam.name}, (fam.name, names)
            assert not fam.name.endswith("_total"), fam.name
        elif fam.type == "histogram":
            assert names == {fam.name + s for s in ("_bucket", "_sum", "_count")}, names
            assert fam.name.endswith("_seconds"), "durations in seconds"
            by_stage: dict[str, list[tuple[float, float]]] = {}
            for smp in fam.samples:
                if smp.name.endswith("_bucket"):
                    le = float(smp.labels["le"])
                    by_stage.setdefault(smp.labels["stage"], []).append((le, smp.value))
            for buckets in by_stage.values():
                les = [le for le, _ in buckets]
                counts = [n for _, n in buckets]
                assert les == [*LATENCY_BUCKETS_S, math.inf]
                assert counts == sorted(counts), "buckets are cumulative"
        else:
            raise AssertionError(f"{fam.name}: unexpected type {fam.type}")
        for smp in fam.samples:
            assert smp.labels["device"] == "pi-1"
            assert math.isfinite(smp.value) or smp.labels.get("le") == "+Inf"
    # every known counter exists from the start, at 0 where it never moved
    series, _ = parse_prometheus(text)
    for name, reasons in known.items():
        assert f"edge_agent_{name}" in seen, name
        for reason in reasons:
            assert value(series, f"edge_agent_{name}_total", reason=reason) >= 0
    assert value(series, "edge_agent_samples_rejected_total", reason="bad_json") == 0
    assert value(series, "edge_agent_samples_rejected_total", reason="not_finite") == 3
    assert value(series, "edge_agent_windows_run_total") == 0
    assert value(series, "edge_agent_ota_refused_total", reason="bad_signature") == 0
    assert value(series, "edge_agent_source_failures_total", reason="mic") == 0
    assert {
        "process_cpu_seconds",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    } <= seen


def test_known_counters_cover_the_reasons_in_the_code() -> None:
    """Every literal reason a sample is rejected with is in the catalogue (else its series
    would only appear with its first event)."""
    root = Path(__file__).resolve().parents[2] / "agent"
    found = set()
    for path in (root / "ingest").rglob("*.py"):
        found |= set(re.findall(r'SampleError\(\s*"([a-z_]+)"', path.read_text()))
    assert found and found <= set(KNOWN_COUNTERS["samples_rejected"]), found


def test_process_facts_of_this_process() -> None:
    import time

    facts = process_facts(started=0.0)
    assert facts.cpu_seconds > 0 and facts.open_fds and facts.open_fds > 2
    assert facts.virtual_memory_bytes and facts.max_fds
    start = process_start_time()
    assert start is not None and start <= time.time()
    assert start > time.time() - 24 * 3600 * 365  # a real date, not ticks since boot
    assert process_start_time(Path("/nonexistent")) is None


def test_prometheus_escapes_label_values() -> None:
    metrics = Metrics()
    metrics.inc("samples_rejected", 1, reason='bad "quote" \\ and\nnewline')
    text = render_prometheus(snapshot(metrics))
    series, _ = parse_prometheus(text)
    assert (
        value(
            series, "edge_agent_samples_rejected_total", reason='bad \\"quote\\" \\\\ and\\nnewline'
        )
        == 1
    )


def test_prometheus_without_temperature_or_latency() -> None:
    m = snapshot(Metrics()).model_copy(update={"cpu_temp_c": None})
    series, types = parse_prometheus(render_prometheus(m))
    assert "edge_agent_cpu_temperature_celsius" not in types
    assert not [k for k in series if k[0].startswith("edge_agent_latency_seconds")]
    # the counters are all there, at 0
    assert value(series, "edge_agent_predictions_out_total") == 0
    assert value(series, "edge_agent_inference_errors_total", reason="non_finite") == 0


# --------------------------------------------------------------------------- reporter


def test_reporter_publishes_after_connect_and_every_interval(broker: Broker) -> None:
    metrics = filled_metrics()
    link = MqttLink(MqttSection(host=broker.host, port=broker.port), "reporter-test")
    rates = RateMeter(metrics.started)

    def collect() -> MetricsV1:
        return build_metrics(
            metrics,
            device="pi-1",
            groups=[],
            agent_version="0.1.0",
            model_name="demo",
            model_version="1.2.0",
            link=link,
            queue_depth=0,
            rates=rates,
            process=FakeProcess(),
        )

    reporter = MetricsReporter(link, "edge/pi-1/metrics", 0.3, collect)
    with Collector(broker.host, broker.port, ["edge/pi-1/metrics"]) as seen:
        reporter.start()  # before the link: the first report waits for the connection
        link.start()
        try:
            msgs = seen.wait_for(lambda ms: len(ms) >= 3, timeout=10)
        finally:
            reporter.stop()
            link.stop()
    payloads = [MetricsV1.model_validate_json(m.payload) for m in msgs]
    assert all(p.mqtt.connected for p in payloads)
    # retained: a fleet view that subscribes later still gets the latest report at once
    retained = collect_retained(MqttSection(host=broker.host, port=broker.port), None, ["edge/#"])
    assert MetricsV1.model_validate_json(retained["edge/pi-1/metrics"]).device == "pi-1"
    gaps = [b.t - a.t for a, b in itertools.pairwise(msgs)]
    assert all(0.15 < g < 1.5 for g in gaps[1:]), gaps
    with pytest.raises(ValueError):
        MetricsReporter(link, "t", 0, collect)


# --------------------------------------------------------------------------- the real agent


@pytest.mark.slow
def test_agent_publishes_valid_metrics(broker: Broker, tmp_path: Path) -> None:
    """The real agent as a subprocess: metrics read back from Mosquitto validate as MetricsV1
    and move the way the data path does."""
    cfg = agent_config(tmp_path, broker, "metrics-dev", ["lab"], metrics={"interval_s": 0.3})
    conf = write_config(tmp_path / "agent.toml", cfg)
    topic = "edge/metrics-dev/metrics"

    def grown(ms: list[Received]) -> bool:
        got = [MetricsV1.model_validate_json(m.payload) for m in ms if m.topic == topic]
        busy = [g for g in got if g.predictions_out > 0]
        return len(busy) >= 2 and busy[-1].predictions_out > busy[0].predictions_out

    with (
        Collector(broker.host, broker.port, [topic]) as seen,
        AgentProcess(conf, tmp_path / "agent.log"),
    ):
        seen.wait_for(grown, timeout=30)
    got = [MetricsV1.model_validate_json(m.payload) for m in seen.on("/metrics")]
    last = got[-1]
    assert last.device == "metrics-dev" and last.groups == ["lab"]
    assert last.model.name == "demo" and last.model.version == "1.0.0"
    assert last.mqtt.connected and last.mqtt.reconnects == 0
    assert last.samples_in >= last.predictions_out > 0
    assert last.rates.predictions_per_s > 0 and last.rates.samples_per_s > 0
    inv = last.latency_ms["invoke"]
    assert 0 < inv.p50 <= inv.p95 <= inv.p99
    assert last.memory_rss_bytes is not None and last.memory_rss_bytes > 10_000_000
    assert last.uptime_s > 0
    assert [m.samples_in for m in got] == sorted(m.samples_in for m in got)
    assert last.messages_acked <= last.predictions_out
    assert not any(m.retain for m in seen.messages)
