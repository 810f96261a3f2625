"""Shadow mode end to end: the real agent process, a real Mosquitto, a real HTTP server.

A candidate announced with ``targets.shadow`` is downloaded, verified, smoke-tested and run
beside the active model; the samples sent afterwards give a retained shadow report whose top-1
agreement is exactly the count computed here with NumPy for the two models; the predictions the
device publishes are the active model's, unchanged; ``edge-fleet promote --min-agreement``
refuses above that agreement and promotes at it, and the device then activates the candidate
from its store.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.fleet.cli import main as fleet_main
from agent.release.manifest import PostprocessSpec, Targets
from agent.wire.fieldcheck import ShadowReportV1
from converters.packaging import PackageSpec, package_model
from tests.agentproc import AgentProcess, write_config
from tests.broker import Broker
from tests.mqttclient import Collector, Received, publish
from tests.ota import models, pkgs
from tests.ota.conftest import Keys
from tests.ota.httpserver import FileServer
from tests.ota.test_ota_e2e import OTA_TOPIC, is_committed, predictions, states, wait_state

pytestmark = pytest.mark.slow

WINDOW = 32
WINDOWS = 120
SHADOW_TOPIC = "edge/dev-1/shadow/m"


def _config(tmp: Path, broker: Broker, keys: Keys) -> Path:
    model = tmp / "m-1.0.0.tflite"
    model.write_bytes(models.dense(1))
    cfg: dict[str, Any] = {
        "agent": {"device_id": "dev-1", "state_dir": str(tmp / "state"), "log_level": "info"},
        "model": {"path": str(model), "name": "m", "version": "1.0.0"},
        "window": {"length": WINDOW, "hop": WINDOW},
        "postprocess": {"type": "classification", "labels": ["a", "b"]},
        "sources": [{"type": "mqtt", "name": "remote", "topic": "sensors/dev-1", "channels": 3}],
        "mqtt": {"host": broker.host, "port": broker.port, "reconnect_min_s": 0.1},
        "metrics": {"interval_s": 0.5},
        "shadow": {"max_queue": 10_000},  # this test counts every window: none skipped
        "ota": {
            "enabled": True,
            "channels": ["shadow", "stable"],
            "trusted_keys": [str(keys.release_pub)],
            "health_window_s": 1.0,
        },
    }
    return write_config(tmp / "agent.toml", cfg)


def _reports(msgs: list[Received]) -> list[ShadowReportV1]:
    return [ShadowReportV1.model_validate_json(m.payload) for m in msgs if m.topic == SHADOW_TOPIC]


def test_shadow_reports_exact_agreement_and_promote_follows_it(
    tmp_path: Path,
    broker: Broker,
    keys: Keys,
    http: FileServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rng = np.random.default_rng(21)
    windows = rng.normal(0, 1, (WINDOWS, WINDOW, 3)).astype(np.float32)
    top_active = models.dense_reference(1, windows).argmax(axis=1)
    top_candidate = models.dense_reference(3, windows).argmax(axis=1)
    agree = int((top_active == top_candidate).sum())
    assert 0 < agree < WINDOWS, "the two models must differ on some windows, not all"

    spec = PackageSpec(
        name="m",
        version="2.0.0",
        mode="float32",
        labels=["a", "b"],
        postprocess=PostprocessSpec(type="classification"),
    )
    pkg = package_model(spec, models.dense(3), key=keys.release)
    url = http.add("m-2.0.0.tflite", pkg.model)
    conf = _config(tmp_path, broker, keys)
    broker_args = ["--host", broker.host, "--port", str(broker.port)]
    with (
        Collector(broker.host, broker.port, ["edge/dev-1/#"]) as col,
        AgentProcess(conf, tmp_path / "agent.log") as agent,
    ):
        col.wait_for(lambda m: any(r.topic == OTA_TOPIC for r in m), 30)
        ann = pkgs.announcement(pkg, url, channel="shadow", targets=Targets(shadow=True))
        publish(broker.host, broker.port, "edge/ota/shadow/m", ann, retain=True)
        wait_state(col, 0, lambda s: (s.state, s.version) == ("shadow", "2.0.0"))
        for w in windows:  # one window per message
            publish(broker.host, broker.port, "sensors/dev-1", json.dumps(w.tolist()))
        msgs = col.wait_for(lambda m: any(r.windows_compared == WINDOWS for r in _reports(m)), 60)
        report = next(r for r in _reports(msgs) if r.windows_compared == WINDOWS)
        assert report.candidate.version == "2.0.0" and report.active.version == "1.0.0"
        assert report.windows_skipped == 0 and report.errors == {}
        assert report.top1_agreements == agree, (report.top1_agreements, agree)
        assert report.top1_agreement == agree / WINDOWS

        # the retained announcement delivered again (as on every reconnect): the shadow goes on
        publish(broker.host, broker.port, "edge/ota/shadow/m", ann, retain=True)
        deadline = time.monotonic() + 30
        while "runs as a shadow already" not in agent.output():
            assert time.monotonic() < deadline and agent.alive(), agent.output()[-3000:]
            time.sleep(0.05)  # another process's log: nothing to await
        mark = len(col.messages)
        msgs = col.wait_for(lambda m: len(_reports(m[mark:])) >= 2, 30)
        assert [r.windows_compared for r in _reports(msgs[mark:])][-1] == WINDOWS

        # the device's predictions are the active model's own, every one
        preds = predictions(msgs)
        assert len(preds) == WINDOWS
        assert {p["model"]["version"] for p in preds} == {"1.0.0"}
        assert [p["outputs"]["top"][0]["label"] for p in preds] == [
            ["a", "b"][i] for i in top_active
        ]

        # promotion gated on the report: refused above its agreement, done at it
        gate = ["--model", "m", "--from", "shadow", "--to", "stable", "--wait", "3"]
        refused = fleet_main(
            [
                "promote",
                *broker_args,
                *gate,
                "--min-agreement",
                str(agree / WINDOWS + 0.001),
                "--min-windows",
                str(WINDOWS),
            ]
        )
        assert refused == 2
        assert f"dev-1: not promoted: agreement {agree / WINDOWS:.4f} <" in capsys.readouterr().err
        mark = len(col.messages)
        promoted = fleet_main(
            [
                "promote",
                *broker_args,
                *gate,
                "--min-agreement",
                str(agree / WINDOWS - 1e-9),
                "--min-windows",
                str(WINDOWS),
            ]
        )
        assert promoted == 0
        said = capsys.readouterr().out
        assert "promoted m 2.0.0: shadow -> stable by device id: dev-1 (1)" in said, said
        assert "devices that join later, are not promoted" in said
        wait_state(col, mark, is_committed("2.0.0"))
        code, _ = agent.terminate()
        assert code == 0, agent.output()
    # activated from the store: downloaded once, for the shadow
    downloads = [r for r in http.requests if r[0] == "/m-2.0.0.tflite"]
    assert len(downloads) == 1, http.requests
    assert [s.state for s in states(col.messages) if s.version == "2.0.0"][-1] == "active"


def _shadow_pkg(version: str, seed: int, keys: Keys) -> Any:
    spec = PackageSpec(
        name="m",
        version=version,
        mode="float32",
        labels=["a", "b"],
        postprocess=PostprocessSpec(type="classification"),
    )
    return package_model(spec, models.dense(seed), key=keys.release)


def test_shadow_counts_go_on_after_a_restart_and_start_at_zero_for_another_candidate(
    tmp_path: Path, broker: Broker, keys: Keys, http: FileServer
) -> None:
    """The agent is killed (SIGKILL: only what the metrics interval saved survives) in the
    middle of a shadow; started again, the same candidate's report goes on from its counts
    (and its ``since``); another candidate's report starts at zero."""
    rng = np.random.default_rng(3)
    windows = rng.normal(0, 1, (80, WINDOW, 3)).astype(np.float32)
    pkg2, pkg3 = _shadow_pkg("2.0.0", 3, keys), _shadow_pkg("3.0.0", 4, keys)
    anns = {
        p.manifest.version: pkgs.announcement(
            p,
            http.add(f"m-{p.manifest.version}.tflite", p.model),
            channel="shadow",
            targets=Targets(shadow=True),
        )
        for p in (pkg2, pkg3)
    }
    conf = _config(tmp_path, broker, keys)

    def send(ws: np.ndarray) -> None:
        for w in ws:
            publish(broker.host, broker.port, "sensors/dev-1", json.dumps(w.tolist()))

    def report(msgs: list[Received], version: str, compared: int) -> ShadowReportV1 | None:
        return next(
            (
                r
                for r in _reports(msgs)
                if (r.candidate.version, r.windows_compared) == (version, compared)
            ),
            None,
        )

    with Collector(broker.host, broker.port, ["edge/dev-1/#"]) as col:
        with AgentProcess(conf, tmp_path / "agent-1.log"):
            col.wait_for(lambda m: any(r.topic == OTA_TOPIC for r in m), 30)
            publish(broker.host, broker.port, "edge/ota/shadow/m", anns["2.0.0"], retain=True)
            wait_state(col, 0, lambda s: (s.state, s.version) == ("shadow", "2.0.0"))
            send(windows[:40])
            # two reports with every window in: the save before the second one had them all
            msgs = col.wait_for(
                lambda m: sum(r.windows_compared == 40 for r in _reports(m)) >= 2, 60
            )
            first = report(msgs, "2.0.0", 40)
            assert first is not None
            # killed: nothing is saved on the way out
        mark = len(col.messages)
        with AgentProcess(conf, tmp_path / "agent-2.log") as agent:
            wait_state(col, mark, lambda s: (s.state, s.version) == ("shadow", "2.0.0"))
            msgs = col.wait_for(lambda m: bool(_reports(m[mark:])), 30)
            resumed = _reports(msgs[mark:])[0]
            assert resumed.candidate.version == "2.0.0"
            assert resumed.windows_compared == 40, resumed
            assert (resumed.since, resumed.top1_agreements) == (first.since, first.top1_agreements)
            send(windows[40:70])
            msgs = col.wait_for(lambda m: report(m[mark:], "2.0.0", 70) is not None, 60)
            assert "2.0.0: 40 window(s) compared since" in agent.output()

            # another candidate: its own counts, from zero
            mark = len(col.messages)
            publish(broker.host, broker.port, "edge/ota/shadow/m", anns["3.0.0"], retain=True)
            wait_state(col, mark, lambda s: (s.state, s.version) == ("shadow", "3.0.0"))
            msgs = col.wait_for(
                lambda m: any(r.candidate.version == "3.0.0" for r in _reports(m[mark:])), 30
            )
            fresh = next(r for r in _reports(msgs[mark:]) if r.candidate.version == "3.0.0")
            assert (fresh.windows_compared, fresh.top1_agreements) == (0, 0), fresh
            assert fresh.since > first.since
            send(windows[70:80])
            col.wait_for(lambda m: report(m[mark:], "3.0.0", 10) is not None, 60)
            code, _ = agent.terminate()
            assert code == 0, agent.output()
