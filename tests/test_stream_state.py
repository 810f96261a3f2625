"""Per-stream stages in-process: the registry's cap, the memory refusal, what build_stages
picks for stateless and stateful models, config rules of the new options."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest

from agent.config import Config
from agent.config import parse_config as _parse
from agent.errors import ConfigError, SampleError, ShapeMismatch
from agent.ingest.sources import SourceContext
from agent.metrics import Metrics
from agent.model.active import ActiveModel
from agent.model.postprocess import build_postprocessor
from agent.model.runtime import load_model
from agent.pipeline.streams import PerStream, check_state_memory, stream_models
from agent.pipeline.threads import Pipeline, build_stages
from agent.wire.topics import Topics
from tests.modelzoo import CHANNELS, run_frames, streaming_model, tiny_classifier
from tests.test_pipeline import Recorder


def parse_config(text: str) -> Config:
    return _parse(tomllib.loads(text))


def test_per_stream_makes_one_per_stream_on_first_appearance_up_to_the_cap() -> None:
    made: list[str] = []

    def make(stream: str) -> list[str]:
        made.append(stream)
        return [stream]

    reg = PerStream(make, cap=2)
    a = reg.get("a")
    assert reg.get("a") is a and made == ["a"]
    reg.get("b")
    with pytest.raises(SampleError) as err:
        reg.get("c")
    assert err.value.reason == "too_many_streams" and "window.max_streams" in str(err.value)
    reg.drop("a")
    assert reg.get("c") == ["c"] and "a" not in reg and len(reg) == 2


def test_stateful_model_gets_interpreters_per_stream_that_do_not_share_state() -> None:
    model = load_model(streaming_model().content, reference_kernels=True)
    reg = stream_models(model, cap=3, limit_mb=64)
    assert reg is not None
    x = np.ones((1, CHANNELS), np.float32)
    for _ in range(3):
        reg.get("a").run_native(x)
    (count_b, _) = reg.get("b").run_native(x)
    assert float(count_b.item()) == 1.0  # b starts fresh: a's three frames are not in it
    assert stream_models(load_model(tiny_classifier("int8").content), 3, 64) is None


def test_memory_limit_is_checked_against_the_stream_cap() -> None:
    model = load_model(streaming_model().content)
    each = check_state_memory(model, 4, 64)
    assert each > model.size
    with pytest.raises(ShapeMismatch, match=r"Lower window.max_streams to at most \d+"):
        check_state_memory(model, 1000, each * 10 / (1024 * 1024))


def _cfg(tmp: Path, **over: str) -> Config:
    zoo = streaming_model()
    text = f"""
[model]
path = "{zoo.path}"
reference_kernels = true
[window]
length = 1
hop = 1
max_streams = {over.get("max_streams", "2")}
[[sources]]
type = "replay"
name = "a"
path = "{tmp / "a.npy"}"
channels = {CHANNELS}
[postprocess]
type = "raw"
"""
    return parse_config(text)


def test_build_stages_gives_stateful_models_a_registry_capped_by_max_streams(
    tmp_path: Path,
) -> None:
    cfg = _cfg(tmp_path)
    active = ActiveModel(load_model(streaming_model().content), "ema", "1")
    st = build_stages(cfg, active, Topics("edge", "d"))
    assert st.models is not None and st.models.cap == 2 and st.hop == 1


def test_config_rules_of_the_new_options(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="exit_when_done"):
        parse_config(
            f'[[sources]]\ntype = "replay"\npath = "{tmp_path}/x.npy"\nloop = true\n'
            "exit_when_done = true\n"
        )
    with pytest.raises(ConfigError, match="thresholds"):
        parse_config('[postprocess]\ntype = "detection"\nthresholds = {yes = 1.5}\n')
    with pytest.raises(ConfigError, match="precision"):
        parse_config('[postprocess]\ntype = "raw"\nprecision = "exact"\n')
    ok = parse_config('[postprocess]\ntype = "raw"\nprecision = "lossless"\n')
    assert ok.postprocess.precision == "lossless"


class _Out:
    name = "scores"
    shape = (1, 2)


def test_lossless_precision_publishes_the_float32_value_exactly() -> None:
    cfg = parse_config('[postprocess]\ntype = "classification"\nprecision = "lossless"\n')
    post = build_postprocessor(cfg.postprocess, [_Out()])
    v = np.float32(200 / 255)  # a uint8 output's dequantized value
    out = post([np.asarray([[v, 1 - v]], np.float32)], np.zeros(1), "s")
    assert out is not None and out["score"] == float(v) and np.float32(out["score"]) == v
    six = build_postprocessor(parse_config("").postprocess, [_Out()])
    out6 = six([np.asarray([[v, 1 - v]], np.float32)], np.zeros(1), "s")
    assert out6 is not None and out6["score"] == 0.784314 != float(v)


def test_telling_stateless_from_stateful_does_not_import_the_flatbuffer_schema() -> None:
    """The check runs at every start (build_stages): it reads the interpreter's own node list,
    not the flatbuffer schema module (~4 MB of RSS the streaming pipeline never needs)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from agent.model.runtime import load_model\n"
        "from agent.model.loading import demo_model_bytes\n"
        "m = load_model(demo_model_bytes())\n"
        "assert m.stateful is False\n"
        "print(any('schema_py_generated' in k for k in sys.modules))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False"


def test_a_stream_beyond_the_cap_is_dropped_and_counted_never_mixed(tmp_path: Path) -> None:
    """Two replay streams into a stateful model with window.max_streams = 1: the first stream
    to appear keeps its exact results, the other's windows are counted as dropped."""
    zoo = streaming_model()
    rng = np.random.default_rng(8)
    values = {s: rng.normal(0, 1, (30, CHANNELS)).astype(np.float32) for s in "ab"}
    sources = []
    for name, v in values.items():
        np.save(tmp_path / f"{name}.npy", v)
        sources.append(
            {
                "type": "replay",
                "name": name,
                "path": str(tmp_path / f"{name}.npy"),
                "channels": CHANNELS,
                "rate": "fast",
            }
        )
    cfg = _parse(
        {
            "model": {"reference_kernels": True},
            "sources": sources,
            "window": {"length": 1, "hop": 1, "max_streams": 1},
            "postprocess": {"type": "raw", "precision": "lossless"},
        }
    )
    metrics, rec = Metrics(), Recorder()
    model = load_model(zoo.content, reference_kernels=True)
    pipe = Pipeline(
        cfg,
        ActiveModel(model, "ema", "1"),
        rec,  # type: ignore[arg-type]
        metrics,
        Topics("edge", "d"),
        SourceContext(metrics),
    )
    pipe.start()
    assert pipe.finished.wait(60)
    kept = {r.stream for r in rec.records}
    assert len(kept) == 1
    (stream,) = kept
    other = "b" if stream == "a" else "a"
    assert metrics.counters_by_reason("windows_dropped") == {"too_many_streams": 30}
    want = run_frames(zoo.content, [{"x": row[None]} for row in values[stream]])
    got = [r for r in rec.records if r.stream == stream]
    assert [r.sample for r in got] == list(range(30))
    for r, w in zip(got, want, strict=True):
        assert np.asarray(r.outputs["tensors"]["ema"], np.float32).tobytes() == w["ema"].tobytes()
    assert not [r for r in rec.records if r.stream == other]
