"""OTA end to end: the real agent process, a real Mosquitto, a real HTTP server, real packages.

An independent paho subscriber watches predictions and the retained ``<prefix>/dev-1/ota``
state. The models come from ``tests.ota.models`` (TensorFlow, once per session) and are
packaged and signed with the converters' code.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.config import MqttSection
from agent.release.manifest import Targets
from agent.release.package import Package
from agent.wire.ota import OtaStateV1
from converters.publish import publish_package
from converters.settings import PublishSettings
from tests.agentproc import AgentProcess, write_config
from tests.broker import Broker
from tests.mqttclient import Collector, Received, publish
from tests.ota import models, pkgs
from tests.ota.conftest import Keys
from tests.ota.httpserver import FileServer
from tests.test_e2e import demo_signal, write_csv

pytestmark = pytest.mark.slow

WINDOW, HOP = 32, 16
ANNOUNCE = "edge/ota/stable/m"
OTA_TOPIC = "edge/dev-1/ota"


# --------------------------------------------------------------------------- helpers


def agent_config(tmp: Path, broker: Broker, keys: Keys, source: dict[str, Any], **ota: Any) -> Path:
    model = tmp / "m-1.0.0.tflite"
    model.write_bytes(models.dense(1))
    cfg: dict[str, Any] = {
        "agent": {"device_id": "dev-1", "state_dir": str(tmp / "state"), "log_level": "info"},
        "model": {"path": str(model), "name": "m", "version": "1.0.0"},
        "window": {"length": WINDOW, "hop": HOP},
        "postprocess": {"type": "raw"},
        "sources": [source],
        "mqtt": {
            "host": broker.host,
            "port": broker.port,
            "reconnect_min_s": 0.1,
            "reconnect_max_s": 1.0,
        },
        "ota": {
            "enabled": True,
            "trusted_keys": [str(keys.release_pub)],
            "health_window_s": 1.0,
            "download_retries": 1,
            **ota,
        },
    }
    return write_config(tmp / "agent.toml", cfg)


SYNTHETIC = {"type": "synthetic", "name": "syn", "rate_hz": 200.0, "block_size": 4}


def predictions(msgs: list[Received]) -> list[dict[str, Any]]:
    return [m.json() for m in msgs if "/prediction/" in m.topic]


def states(msgs: list[Received]) -> list[OtaStateV1]:
    return [OtaStateV1.model_validate_json(m.payload) for m in msgs if m.topic == OTA_TOPIC]


def wait_state(
    col: Collector, mark: int, pred: Callable[[OtaStateV1], bool], timeout: float = 30
) -> OtaStateV1:
    msgs = col.wait_for(lambda m: any(pred(s) for s in states(m[mark:])), timeout)
    return next(s for s in states(msgs[mark:]) if pred(s))


def is_refusal(version: str, reason: str) -> Callable[[OtaStateV1], bool]:
    return lambda s: (
        s.refusal is not None
        and (s.refusal.version, s.refusal.reason)
        == (
            version,
            reason,
        )
    )


def is_failed(version: str, reason: str) -> Callable[[OtaStateV1], bool]:
    return lambda s: (s.state, s.version, s.reason) == ("failed", version, reason)


def is_committed(version: str) -> Callable[[OtaStateV1], bool]:
    return lambda s: (s.state, s.version, s.health) == ("active", version, "passed")


def still_serving(col: Collector, version: str, n: int = 3) -> None:
    """The next ``n`` predictions all come from ``version``."""
    mark = len(col.messages)
    msgs = col.wait_for(lambda m: len(predictions(m[mark:])) >= n, 30)
    got = [(p["seq"], p["model"]["version"]) for p in predictions(col.messages)]
    assert {p["model"]["version"] for p in predictions(msgs[mark:])} == {version}, got


def announce(broker: Broker, pkg: Package, url: str, **kw: Any) -> None:
    """Publish ``pkg``'s announcement retained, as the build host would."""
    publish(broker.host, broker.port, ANNOUNCE, pkgs.announcement(pkg, url, **kw), retain=True)


def wait_file(path: Path, timeout: float, agent: AgentProcess) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline or not agent.alive():
            raise TimeoutError(f"{path} never appeared:\n{agent.output()[-3000:]}")
        time.sleep(0.05)  # another process's file: nothing to await


def installed_is_verified(state_dir: Path) -> str | None:
    """The version ``current`` names, after checking its bytes against its manifest."""
    current = state_dir / "models" / "current"
    if not current.is_symlink():
        return None
    d = current.resolve()
    manifest = json.loads((d / "manifest.json").read_bytes())
    model = (d / "model.tflite").read_bytes()
    assert hashlib.sha256(model).hexdigest() == manifest["artifact"]["sha256"]
    return str(manifest["version"])


# --------------------------------------------------------------------------- tests


def test_update_while_streaming_loses_and_repeats_nothing(
    tmp_path: Path, broker: Broker, keys: Keys, http: FileServer
) -> None:
    x = demo_signal(1600, seed=7)
    csv = write_csv(tmp_path / "samples.csv", x)
    source = {
        "type": "replay",
        "name": "rec",
        "path": str(csv),
        "rate": "fixed",
        "rate_hz": 400.0,
        "loop": True,
    }
    conf = agent_config(tmp_path, broker, keys, source)
    pkg = pkgs.build(models.dense(2), "2.0.0", keys.release)
    settings = PublishSettings(
        store=str(http.root),
        base_url=http.base_url,
        channel="stable",
        mqtt=MqttSection(host=broker.host, port=broker.port),
    )
    with (
        Collector(broker.host, broker.port, ["edge/dev-1/#"]) as col,
        AgentProcess(conf, tmp_path / "agent.log") as agent,
    ):
        col.wait_for(lambda m: len(predictions(m)) >= 20, 30)
        published = publish_package(pkg, settings)
        assert published.topic == ANNOUNCE and published.url.startswith("http://127.0.0.1")
        wait_state(col, 0, is_committed("2.0.0"))
        msgs = col.wait_for(
            lambda m: sum(p["model"]["version"] == "2.0.0" for p in predictions(m)) >= 40, 30
        )
        code, _ = agent.terminate()
        assert code == 0, agent.output()
    preds = predictions(msgs)
    seqs = [p["seq"] for p in preds]
    assert seqs == list(range(len(seqs))), "a sequence number is missing or repeated"
    versions = [p["model"]["version"] for p in preds]
    switch = versions.index("2.0.0")
    assert switch > 0 and versions == ["1.0.0"] * switch + ["2.0.0"] * (len(versions) - switch)
    # every prediction carries the version that produced it: recompute each window
    stream = np.tile(x, (len(seqs) * HOP // len(x) + 2, 1))
    windows = np.stack([stream[s * HOP : s * HOP + WINDOW] for s in seqs])
    by_version = {
        "1.0.0": models.dense_reference(1, windows),
        "2.0.0": models.dense_reference(2, windows),
    }
    for i, p in enumerate(preds):
        got = np.asarray(p["outputs"]["tensors"]["Identity"]).reshape(-1)
        np.testing.assert_allclose(got, by_version[p["model"]["version"]][i], atol=2e-3)
    assert "switched 1.0.0 -> 2.0.0" in agent.output()


def test_every_bad_offer_is_refused_with_its_reason_and_the_old_model_serves(
    tmp_path: Path, broker: Broker, keys: Keys, http: FileServer
) -> None:
    conf = agent_config(tmp_path, broker, keys, SYNTHETIC)
    good = models.dense(2)
    b = {
        v: pkgs.build(good, v, keys.release) for v in ("1.1.0", "1.3.0", "1.4.0", "1.5.0", "1.6.0")
    }
    model_url = http.add("good.tflite", good)
    with (
        Collector(broker.host, broker.port, ["edge/dev-1/#"]) as col,
        AgentProcess(conf, tmp_path / "agent.log") as agent,
    ):
        col.wait_for(lambda m: len(predictions(m)) >= 3 and bool(states(m)), 30)

        serving = ["1.0.0"]

        def refused(pkg: Package, url: str, reason: str, **kw: Any) -> None:
            mark = len(col.messages)
            announce(broker, pkg, url, **kw)
            wait_state(col, mark, is_refusal(pkg.manifest.version, reason))
            still_serving(col, serving[0])

        def failed(pkg: Package, url: str, reason: str) -> None:
            mark = len(col.messages)
            announce(broker, pkg, url)
            wait_state(col, mark, is_failed(pkg.manifest.version, reason))
            still_serving(col, "1.0.0")

        refused(b["1.1.0"], model_url, "unsigned", signature=None, key_id=None)
        refused(pkgs.build(good, "1.2.0", keys.other), model_url, "unknown_key")
        evil = pkgs.tamper_manifest(b["1.3.0"], description="evil")
        refused(b["1.3.0"], model_url, "bad_signature", manifest=evil)
        failed(b["1.4.0"], http.add("swapped.tflite", os.urandom(len(good))), "hash_mismatch")
        failed(b["1.5.0"], http.add("more.tflite", good, "more"), "too_large")
        failed(b["1.6.0"], http.add("short.tflite", good, "truncated"), "truncated")
        narrow = models.narrow()
        refused(
            pkgs.build(narrow, "1.7.0", keys.release),
            http.add("n.tflite", narrow),
            "incompatible_input",
        )
        gm = pkgs.tampered_golden(pkgs.build(good, "1.8.0", keys.release), keys.release)
        failed(gm, model_url, "golden_mismatch")
        nan = models.nan_model()
        failed(pkgs.build(nan, "1.9.0", keys.release), http.add("nan.tflite", nan), "non_finite")
        assert installed_is_verified(tmp_path / "state") is None

        # a good release goes through; then replays of older or re-used versions are refused
        mark = len(col.messages)
        v3 = pkgs.build(good, "3.0.0", keys.release)
        announce(broker, v3, model_url)
        wait_state(col, mark, is_committed("3.0.0"))
        still_serving(col, "3.0.0")
        serving[0] = "3.0.0"
        refused(b["1.6.0"], model_url, "version_rollback")
        other = models.dense(4)
        refused(
            pkgs.build(other, "3.0.0", keys.release), http.add("o.tflite", other), "version_reused"
        )
        assert installed_is_verified(tmp_path / "state") == "3.0.0"
        code, _ = agent.terminate()
        assert code == 0, agent.output()


@pytest.mark.parametrize(
    ("pause_at", "max_boot_failures", "outcome"),
    [
        ("downloading", 3, "2.0.0"),
        ("verifying", 3, "2.0.0"),
        ("staged", 3, "2.0.0"),
        ("activating", 3, "2.0.0"),
        ("swapped", 3, "2.0.0"),  # between the `current` swap and the trial write
        ("trial", 3, "2.0.0"),
        ("trial", 1, "1.0.0"),
    ],
)
def test_kill_9_at_each_state_then_restart(
    tmp_path: Path,
    broker: Broker,
    keys: Keys,
    http: FileServer,
    pause_at: str,
    max_boot_failures: int,
    outcome: str,
) -> None:
    conf = agent_config(tmp_path, broker, keys, SYNTHETIC, max_boot_failures=max_boot_failures)
    state_dir = tmp_path / "state"
    content = models.dense(2)
    pkg = pkgs.build(content, "2.0.0", keys.release)
    url = http.add("m/2.0.0/model.tflite", content)
    first = AgentProcess(conf, tmp_path / "agent1.log", env={"EDGE_AGENT_OTA_PAUSE_AT": pause_at})
    second = AgentProcess(conf, tmp_path / "agent2.log")
    try:
        with Collector(broker.host, broker.port, ["edge/dev-1/#"]) as col:
            first.start()
            col.wait_for(lambda m: len(predictions(m)) >= 3, 30)
            announce(broker, pkg, url)
            wait_file(state_dir / "ota" / f"paused-{pause_at}", 30, first)
            first.kill()
            # whatever the kill interrupted, `current` is absent or a complete, verified version
            assert installed_is_verified(state_dir) in (None, "2.0.0")
            mark = len(col.messages)
            second.start()
            if outcome == "2.0.0":
                wait_state(col, mark, is_committed("2.0.0"))
            else:
                s = wait_state(col, mark, lambda s: s.state == "rolled_back")
                assert (s.version, s.reason, s.running) == ("2.0.0", "boot_failures", "1.0.0")
            msgs = col.wait_for(
                lambda m: any(p["model"]["version"] == outcome for p in predictions(m[mark:])), 30
            )
            first_version = predictions(msgs[mark:])[0]["model"]["version"]
            assert first_version in ("1.0.0", "2.0.0")
            still_serving(col, outcome)
            assert installed_is_verified(state_dir) == (None if outcome == "1.0.0" else "2.0.0")
            if pause_at == "downloading":  # the second run resumed the first one's bytes
                assert any(
                    r and r.startswith("bytes=") for r in http.ranges("m/2.0.0/model.tflite")
                )
            code, _ = second.terminate()
            assert code == 0, second.output()
    finally:
        for a in (first, second):
            if a.alive():
                a.kill()


def test_a_model_that_fails_its_health_window_is_rolled_back(
    tmp_path: Path, broker: Broker, keys: Keys, http: FileServer
) -> None:
    conf = agent_config(tmp_path, broker, keys, SYNTHETIC, health_window_s=60.0)
    content = models.fragile()  # fine on its quiet golden samples, NaN on a real signal
    pkg = pkgs.build(content, "2.0.0", keys.release, data=pkgs.quiet_data())
    url = http.add("fragile.tflite", content)
    with (
        Collector(broker.host, broker.port, ["edge/dev-1/#"]) as col,
        AgentProcess(conf, tmp_path / "agent.log") as agent,
    ):
        col.wait_for(lambda m: len(predictions(m)) >= 3, 30)
        announce(broker, pkg, url)
        wait_state(
            col, 0, lambda s: (s.state, s.health, s.version) == ("active", "watching", "2.0.0")
        )
        s = wait_state(col, 0, lambda s: s.state == "rolled_back", timeout=30)
        assert (s.version, s.reason, s.running) == ("2.0.0", "non_finite", "1.0.0")
        still_serving(col, "1.0.0")
        # the bad version is not retried, even when announced again
        mark = len(col.messages)
        announce(broker, pkg, url)
        wait_state(col, mark, is_refusal("2.0.0", "marked_bad"))
        code, _ = agent.terminate()
        assert code == 0, agent.output()
    assert installed_is_verified(tmp_path / "state") is None


def test_a_dropped_in_package_takes_the_same_path(
    tmp_path: Path, broker: Broker, keys: Keys
) -> None:
    incoming = tmp_path / "incoming"
    conf = agent_config(tmp_path, broker, keys, SYNTHETIC, incoming_dir=str(incoming))
    data = pkgs.build(models.dense(2), "2.0.0", keys.release).to_bytes()
    with (
        Collector(broker.host, broker.port, ["edge/dev-1/#"]) as col,
        AgentProcess(conf, tmp_path / "agent.log") as agent,
    ):
        col.wait_for(lambda m: len(predictions(m)) >= 3 and bool(states(m)), 30)
        mark = len(col.messages)
        target = incoming / "m-2.0.0.eapkg"
        with target.open("wb") as f:  # a slow copy: nothing happens before it is complete
            f.write(data[: len(data) // 2])
            f.flush()
            with pytest.raises(TimeoutError):
                col.wait_for(lambda m: bool(states(m[mark:])), timeout=1.5)
            f.write(data[len(data) // 2 :])
        wait_state(col, mark, is_committed("2.0.0"))
        still_serving(col, "2.0.0")
        assert not target.exists()
        # an unsigned package dropped in is refused and set aside
        unsigned = pkgs.build(models.dense(3), "3.0.0", None).to_bytes()
        mark = len(col.messages)
        tmp = incoming / ".copying"
        tmp.write_bytes(unsigned)
        tmp.rename(incoming / "m-3.0.0.eapkg")  # an atomic move in
        wait_state(col, mark, is_refusal("3.0.0", "unsigned"))
        wait_file(incoming / "rejected" / "m-3.0.0.eapkg", 10, agent)
        assert not (incoming / "m-3.0.0.eapkg").exists()
        still_serving(col, "2.0.0")
        code, _ = agent.terminate()
        assert code == 0, agent.output()


def test_targeting_leaves_other_groups_alone(
    tmp_path: Path, broker: Broker, keys: Keys, http: FileServer
) -> None:
    conf = agent_config(tmp_path, broker, keys, SYNTHETIC)
    content = models.dense(2)
    pkg = pkgs.build(content, "2.0.0", keys.release)
    with (
        Collector(broker.host, broker.port, ["edge/dev-1/#"]) as col,
        AgentProcess(conf, tmp_path / "agent.log") as agent,
    ):
        col.wait_for(lambda m: len(predictions(m)) >= 3 and bool(states(m)), 30)
        mark = len(col.messages)
        announce(broker, pkg, http.add("m.tflite", content), targets=Targets(groups=["field"]))
        wait_state(col, mark, is_refusal("2.0.0", "not_targeted"))
        still_serving(col, "1.0.0")
        code, _ = agent.terminate()
        assert code == 0, agent.output()


def test_install_command_retries_a_failed_download(
    tmp_path: Path, broker: Broker, keys: Keys, http: FileServer
) -> None:
    """Home Assistant's *Install* (``install`` on ``<prefix>/<device>/ota/set``): a release
    whose download failed is tried again, all the way to committed; junk commands do nothing."""
    conf = agent_config(tmp_path, broker, keys, SYNTHETIC)
    good = models.dense(2)
    pkg = pkgs.build(good, "1.1.0", keys.release)
    url = http.url("late.tflite")  # not there yet: the first download fails
    with (
        Collector(broker.host, broker.port, ["edge/dev-1/#"]) as col,
        AgentProcess(conf, tmp_path / "agent.log") as agent,
    ):
        col.wait_for(lambda m: len(predictions(m)) >= 3 and bool(states(m)), 30)
        mark = len(col.messages)
        announce(broker, pkg, url)
        failed = wait_state(col, mark, lambda s: (s.state, s.version) == ("failed", "1.1.0"))
        assert failed.reason and failed.reason.startswith("download")
        still_serving(col, "1.0.0")
        publish(broker.host, broker.port, "edge/dev-1/ota/set", b"something else")
        http.add("late.tflite", good)
        mark = len(col.messages)
        publish(broker.host, broker.port, "edge/dev-1/ota/set", b"install")
        wait_state(col, mark, is_committed("1.1.0"))
        still_serving(col, "1.1.0")
        code, _ = agent.terminate()
        assert code == 0
    log = agent.output()
    assert "OTA command b'something else' ignored" in log
    assert "install requested: 1 announcement(s) queued again" in log
