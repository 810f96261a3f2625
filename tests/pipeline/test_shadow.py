"""A shadow through the real pipeline: the report's agreement is the exact count of windows on
which the candidate's top-1 matches the active model's (computed here by running both models
directly), the active model's predictions are the same as without a shadow, and the fleet's
promotion gate passes or refuses on that report."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from agent.config import Config, parse_config
from agent.delivery.publisher import PredictionRecord
from agent.fleet.shadowgate import shadow_gate
from agent.fleet.view import DeviceState, ShadowSummary
from agent.ingest.preprocess import Encoder, Preprocessor
from agent.ingest.sources import SourceContext
from agent.ingest.window import Windows
from agent.metrics import Metrics
from agent.model.active import ActiveModel
from agent.model.runtime import Model, load_model
from agent.pipeline.shadow import ShadowRunner
from agent.pipeline.threads import Pipeline
from agent.wire.fieldcheck import ShadowReportV1
from agent.wire.topics import Topics
from tests import modelzoo as zoo

LENGTH, HOP = 32, 16


class Recorder:
    def __init__(self) -> None:
        self.records: list[PredictionRecord] = []
        self.lock = threading.Lock()

    def submit_many(self, records: list[PredictionRecord], *, inline: bool = False) -> None:
        with self.lock:
            self.records += records


def _config(tmp_path: Path, values: np.ndarray) -> Config:
    path = tmp_path / "replay.npy"
    np.save(path, values)
    return parse_config(
        {
            "sources": [
                {
                    "type": "replay",
                    "name": "s",
                    "path": str(path),
                    "channels": 3,
                    "rate": "fixed",
                    "rate_hz": 1600.0,
                    "block_size": HOP,
                }
            ],
            "window": {"length": LENGTH, "hop": HOP},
            "postprocess": {"type": "classification"},
            "shadow": {"max_queue": 100_000},  # this test counts every window: none skipped
        }
    )


def _run(cfg: Config, active: Model, candidate: Model | None) -> tuple[Recorder, Pipeline]:
    metrics = Metrics()
    rec = Recorder()
    pipe = Pipeline(
        cfg,
        ActiveModel(active, "m", "1"),
        rec,  # type: ignore[arg-type]
        metrics,
        Topics("edge", "dev"),
        SourceContext(metrics),
    )
    if candidate is not None:
        pipe.set_shadow(ActiveModel(candidate, "m", "2", sha256="ab" * 32))
    pipe.start()
    assert pipe.finished.wait(120), "the replay did not finish"
    if pipe.shadow is not None:
        assert pipe.shadow.idle.wait(60)
    return rec, pipe


def _other_classifier() -> bytes:
    """The tiny classifier's architecture with other (seeded) weights: a different model."""
    tf = zoo._tf()
    zoo._seed(7)
    keras = tf.keras
    inp = keras.Input((zoo.WINDOW, zoo.CHANNELS), batch_size=1, name="window")
    h = keras.layers.Conv1D(4, 5, activation="relu")(inp)
    h = keras.layers.GlobalAveragePooling1D()(h)
    out = keras.layers.Dense(2, activation="softmax", name="scores")(h)
    return zoo._keras_convert(keras.Model(inp, out), "float32", [])


def test_shadow_agreement_is_exact_and_active_predictions_unchanged(tmp_path: Path) -> None:
    active = load_model(zoo.tiny_classifier("int8").content)
    candidate = load_model(_other_classifier())
    rng = np.random.default_rng(11)
    values = rng.normal(0, 1.5, (HOP * 300 + LENGTH, 3)).astype(np.float32)
    # the active model's outputs are the ones the pipeline hands to the shadow: compare the
    # candidate's top-1 on the same (int8-encoded, decoded) windows with the active's top-1
    cfg = _config(tmp_path, values)
    pre = Preprocessor(cfg.preprocess, 3)
    n = (len(values) - LENGTH) // HOP + 1
    windows = [pre(values[i * HOP : i * HOP + LENGTH].copy())[None] for i in range(n)]
    feed = active.feed
    q = [np.clip(np.rint(w / feed.scale) + feed.zero_point, -128, 127) for w in windows]
    deq = [((x - feed.zero_point) * feed.scale).astype(np.float32) for x in q]
    a_top = [int(np.argmax(active.run([w])[0])) for w in windows]
    c_top = [int(np.argmax(candidate.run([w])[0])) for w in deq]
    agree = sum(a == c for a, c in zip(a_top, c_top, strict=True))
    assert n - agree > 0, "the candidate must differ on some windows for this test to mean much"

    alone, _ = _run(cfg, active, None)
    shadowed, pipe = _run(_config(tmp_path, values), active, candidate)
    assert pipe.shadow is not None
    report: ShadowReportV1 = pipe.shadow.report("dev", pipe.active)
    assert report.windows_compared + report.windows_skipped == n
    assert report.windows_skipped == 0
    assert report.top1_agreements == agree, (report.top1_agreements, agree, n)
    assert report.top1_agreement == agree / n
    assert report.candidate.version == "2" and report.errors == {}
    assert len(report.disagreements) == min(5, n - agree)
    assert report.outputs[0].max_abs_diff > 0
    assert set(report.latency_ms) == {"active", "candidate"}
    # the active model's predictions: the same with and without a shadow
    assert [r.outputs for r in shadowed.records] == [r.outputs for r in alone.records]
    assert {r.model_version for r in shadowed.records} == {"1"}

    summary = ShadowSummary(version="2", windows=n, agreement=agree / n, errors=0)
    devices = [
        DeviceState("pass", model="m", version="1", shadow=summary),
        DeviceState("few", model="m", version="1", shadow=summary),
        DeviceState("none", model="m", version="1"),
    ]
    gate = shadow_gate(devices[:1], "m", "2", min_agreement=agree / n, min_windows=n)
    assert gate.passed == ["pass"] and gate.failed == {}
    gate = shadow_gate(devices, "m", "2", min_agreement=agree / n + 1e-9, min_windows=n)
    assert gate.passed == [] and set(gate.failed) == {"pass", "few", "none"}
    assert "agreement" in gate.failed["pass"] and "no shadow report" in gate.failed["none"]
    gate = shadow_gate(devices, "m", "2", min_agreement=0.0, min_windows=n + 1)
    assert gate.passed == [] and "windows compared" in gate.failed["few"]


def _windows(n: int, channels: int = 3) -> Windows:
    data = np.ones((n, 1, channels), np.float32)
    return Windows(data, np.arange(n, dtype=np.float64), 0.0, 0)


def _stream_cfg(max_queue: int = 8) -> Config:
    return parse_config(
        {
            "window": {"length": 1, "hop": 1},
            "postprocess": {"type": "raw"},
            "shadow": {"max_queue": max_queue},
        }
    )


def test_a_stateful_candidate_keeps_its_own_state_per_stream() -> None:
    cfg = _stream_cfg()
    content = zoo.streaming_model().content
    active = load_model(content)
    candidate = load_model(content)
    runner = ShadowRunner(cfg, ActiveModel(candidate, "m", "2"), dict)
    enc = Encoder(Preprocessor(cfg.preprocess, 3), active.feed)
    outs = [active.run_native(np.ones((1, 3), np.float32)) for _ in range(3)]
    runner.start()
    runner.offer(enc, _windows(3), "a", list(outs))
    runner.offer(enc, _windows(2), "b", list(outs[:2]))
    runner.stop()
    assert runner.compared == 5 and runner.errors == {}
    counts = {}
    for stream in ("a", "b"):
        res = runner._model(stream).run_native(np.ones((1, 3), np.float32))
        counts[stream] = float(
            np.asarray(res[[t.name for t in candidate.outputs].index("count")]).reshape(-1)[0]
        )
    assert counts == {"a": 4.0, "b": 3.0}  # each stream's clone counted only its own frames
    first = candidate.run_native(np.ones((1, 3), np.float32))  # the loaded one: never run
    assert (
        float(np.asarray(first[[t.name for t in candidate.outputs].index("count")]).reshape(-1)[0])
        == 1.0
    )


def test_a_full_shadow_queue_skips_and_counts_without_blocking() -> None:
    cfg = _stream_cfg(max_queue=1)
    content = zoo.streaming_model().content
    runner = ShadowRunner(cfg, ActiveModel(load_model(content), "m", "2"), dict)
    enc = Encoder(Preprocessor(cfg.preprocess, 3), load_model(content).feed)
    outs = [[np.zeros((1, 1), np.float32)]] * 4
    runner.offer(enc, _windows(4), "a", list(outs))  # queued (the thread is not started)
    runner.offer(enc, _windows(4), "a", list(outs))  # full: skipped
    runner.offer(enc, _windows(4), "a", [None, *outs[:3]])  # full: 3 ran on the active
    assert runner.skipped == 7
    report = runner.report("dev", ActiveModel(load_model(content), "m", "1"))
    assert report.windows_skipped == 7 and report.windows_compared == 0


def test_detection_events_are_counted_and_matched_by_overlapping_spans() -> None:
    from agent.pipeline.shadow import EventMatcher

    cfg = parse_config(
        {
            "window": {"length": 32, "hop": 16},
            "postprocess": {
                "type": "detection",
                "labels": ["bg", "knock"],
                "ignore": ["bg"],
                "average_windows": 1,
            },
        }
    )
    model = load_model(zoo.tiny_classifier("float32").content)
    matcher = EventMatcher(cfg, ActiveModel(model, "m", "2"))
    off, on = np.array([[0.9, 0.1]], np.float32), np.array([[0.1, 0.9]], np.float32)
    active_on, candidate_on = {3, 10}, {3, 4, 20}  # knock rises at 3 (both), 10 / 20 (one each)
    for k in range(30):
        a = [on if k in active_on else off]
        c = [on if k in candidate_on else off]
        matcher.window(a, c, "s", k * 16)
    report = matcher.report()
    assert (report.active, report.candidate, report.matched) == (2, 2, 1)
    assert report.agreement == 0.5


def _classify_cfg() -> Config:
    return parse_config(
        {
            "window": {"length": zoo.WINDOW, "hop": zoo.WINDOW},
            "postprocess": {"type": "classification"},
            "shadow": {"max_queue": 1000},
        }
    )


def _shadowed(
    runner: ShadowRunner, enc: Encoder, rng: np.random.Generator, groups: int, n: int = 5
) -> None:
    runner.start()
    for g in range(groups):
        data = rng.normal(0, 1, (n, zoo.WINDOW, zoo.CHANNELS)).astype(np.float32)
        windows = Windows(data, np.arange(n, dtype=np.float64) + g * n, 0.0, g * n)
        outs = [[rng.dirichlet([1.0, 1.0]).astype(np.float32).reshape(1, 2)] for _ in range(n)]
        runner.offer(enc, windows, "s", list(outs))
    assert runner.idle.wait(60)


def test_the_counts_of_the_same_candidate_survive_a_new_runner(tmp_path: Path) -> None:
    """A restart (a new runner for the same model, version and sha256) goes on counting from
    the saved counts; another build of the same version, or another version, starts at 0."""
    cfg = _classify_cfg()
    content = zoo.tiny_classifier("float32").content
    enc = Encoder(Preprocessor(cfg.preprocess, zoo.CHANNELS), load_model(content).feed)
    active = ActiveModel(load_model(content), "m", "1")
    file = tmp_path / "ota" / "shadow.json"
    rng = np.random.default_rng(5)

    def runner(version: str = "2", sha: str = "ab" * 32) -> ShadowRunner:
        cand = ActiveModel(load_model(content), "m", version, sha256=sha)
        return ShadowRunner(cfg, cand, dict, counts_file=file, clock=lambda: 1000.0 + len(v))

    v: list[int] = []
    first = runner()
    _shadowed(first, enc, rng, groups=4)
    first.stop()  # saves
    before = first.report("dev", active)
    assert before.windows_compared == 20 and 0 < (before.top1_agreements or 0) < 20
    assert file.exists() and not list(file.parent.glob(".*tmp*"))

    v.append(1)  # a later clock: the restored `since` is the first runner's
    second = runner()
    resumed = second.report("dev", active)
    assert resumed.since == before.since
    assert resumed.model_dump(exclude={"ts", "latency_ms"}) == before.model_dump(
        exclude={"ts", "latency_ms"}
    )
    assert resumed.latency_ms["candidate"] == before.latency_ms["candidate"]
    _shadowed(second, enc, rng, groups=2)
    second.save()  # what the metrics interval does
    after = second.report("dev", active)
    assert after.windows_compared == 30
    assert (after.top1_agreements or 0) >= (before.top1_agreements or 0)
    second.stop(save=False)

    for other in (runner(sha="cd" * 32), runner(version="3")):
        r = other.report("dev", active)
        assert (r.windows_compared, r.windows_skipped, r.top1_agreements) == (0, 0, 0)
        assert r.since != before.since and r.disagreements == []
        other.stop(save=False)
    # unchanged by the runners that did not save: the same candidate still goes on
    assert runner().report("dev", active).windows_compared == 30


def test_unreadable_saved_counts_start_at_zero(tmp_path: Path) -> None:
    cfg = _classify_cfg()
    content = zoo.tiny_classifier("float32").content
    file = tmp_path / "shadow.json"
    for damage in (b"", b"{not json", b'{"v": 2}', b"[]"):
        file.write_bytes(damage)
        cand = ActiveModel(load_model(content), "m", "2", sha256="ab" * 32)
        runner = ShadowRunner(cfg, cand, dict, counts_file=file)
        assert runner.compared == 0 and runner.skipped == 0
