"""One validation, as a property: for generated configs, ``check-config``'s checks passing
means start-up (``Agent.build``) does not fail on config or model grounds, and when they fail,
start-up fails with the same problems (issue 11)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from agent.app.preflight import PreflightError, check
from agent.app.service import Agent
from agent.config import load_config
from agent.errors import EdgeAgentError
from agent.release.manifest import PreprocessSpec
from tests.agentproc import write_config
from tests.packaged import write_demo_package
from tests.tlsfiles import make_ca


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("preflight")
    out = {
        "pkg_standard": write_demo_package(d),
        "pkg_plain": write_demo_package(
            d, "2.0.0", name="plain", preprocess=PreprocessSpec(window=32, hop=8)
        ),
        "ca": make_ca(d / "tls")["ca_file"],
    }
    for c in (1, 3, 4):
        np.save(d / f"rec{c}.npy", np.zeros((64, c), np.float32))
        out[f"rec{c}"] = d / f"rec{c}.npy"
    return out


def _config(
    draw: Callable[[st.SearchStrategy[Any]], Any], files: dict[str, Path], state: Path
) -> dict[str, Any]:
    cfg: dict[str, Any] = {"agent": {"state_dir": str(state)}, "mqtt": {"port": 1}}
    model = draw(st.sampled_from(["builtin:demo", "pkg_standard", "pkg_plain", "missing"]))
    cfg["model"] = {
        "path": model if model == "builtin:demo" else str(files.get(model, state / "none.tflite"))
    }
    if draw(st.booleans()):
        cfg["model"]["name"] = draw(st.sampled_from(["demo", "vibration", "plain"]))
    channels = draw(st.sampled_from([None, 1, 3, 4]))
    source: dict[str, Any] = {"type": "synthetic", "name": "s", "max_samples": 10}
    if draw(st.booleans()):
        c = draw(st.sampled_from([1, 3, 4]))
        source = {"type": "replay", "name": "s", "path": str(files[f"rec{c}"]), "rate": "fast"}
    if channels is not None:
        source["channels"] = channels
    cfg["sources"] = [source]
    if draw(st.booleans()):
        length = draw(st.sampled_from([16, 32, 64]))
        cfg["window"] = {"length": length, "hop": draw(st.sampled_from([8, 16]))}
    norm = draw(st.sampled_from([None, "none", "standard"]))
    if norm is not None:
        n = channels or 3
        cfg["preprocess"] = {"normalize": norm}
        if norm == "standard":
            mean = draw(st.sampled_from([[1.0, 2.0, 3.0][:n] + [0.0] * (n - 3), [0.0] * n]))
            cfg["preprocess"] |= {"mean": mean[:n], "std": [2.0, 4.0, 8.0][:n] + [1.0] * (n - 3)}
    post = draw(st.sampled_from([None, "labels2", "labels3", "raw"]))
    if post == "labels2":
        cfg["postprocess"] = {"type": "classification", "labels": ["normal", "anomaly"]}
    elif post == "labels3":
        cfg["postprocess"] = {"type": "classification", "labels": ["a", "b", "c"]}
    elif post == "raw":
        cfg["postprocess"] = {"type": "raw"}
    tls = draw(st.sampled_from([None, "present", "missing"]))
    if tls is not None:
        ca = files["ca"] if tls == "present" else state / "no-ca.pem"
        cfg["mqtt"]["tls"] = {"enabled": True, "ca_file": str(ca)}
    return cfg


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_check_config_ok_means_start_up_builds(
    data: st.DataObject, files: dict[str, Path], tmp_path: Path
) -> None:
    state = tmp_path / f"state-{data.draw(st.integers(0, 10**9))}"
    raw = _config(data.draw, files, state)
    try:
        cfg = load_config(write_config(state.with_suffix(".toml"), raw), environ={})
    except EdgeAgentError:
        event("schema refused")
        return  # the schema refused it: neither command gets further
    _, _, problems = check(cfg)
    agent = Agent(cfg)
    event("check-config refused" if problems else "check-config OK")
    if problems:
        with pytest.raises(PreflightError) as err:
            agent.build(cfg)
        assert [(p.key, p.reason) for p in err.value.problems] == [
            (p.key, p.reason) for p in problems
        ]
        return
    r = agent.build(cfg)  # must not raise
    r.spool.close()
