"""kill -9 at random moments during updates, 50 times: always exactly one of old/new active.

The agent runs against a real Mosquitto and a local HTTP server while releases keep coming
(the next version is announced as soon as one is installed). It is killed at a random moment
of each run, often inside an update (downloading, staging, swapping, its health window) and
sometimes inside the start-up recovery itself. After every kill the disk must name exactly one
complete, verified model (``current`` absent: the configured one; or a version directory whose
model matches its manifest), ``previous`` likewise; and at the end the agent serves
predictions from the version ``current`` names, which is one the fleet released.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from pathlib import Path
from typing import Any

import pytest

from tests.agentproc import AgentProcess
from tests.broker import Broker
from tests.mqttclient import Collector, Received, publish
from tests.ota import models, pkgs
from tests.ota.conftest import Keys
from tests.ota.httpserver import FileServer
from tests.ota.test_ota_e2e import (
    ANNOUNCE,
    SYNTHETIC,
    agent_config,
    announce,
    installed_is_verified,
    predictions,
)

pytestmark = pytest.mark.slow

KILLS = int(os.environ.get("EDGE_AGENT_KILL_LOOP", "50"))
SEED = int(os.environ.get("EDGE_AGENT_KILL_SEED", "13"))


def verified_at(link: Path) -> str | None:
    """The version ``link`` (``current``/``previous``) names, its bytes checked; None if absent."""
    if not link.is_symlink():
        return None
    d = link.resolve()
    manifest = json.loads((d / "manifest.json").read_bytes())
    model = (d / "model.tflite").read_bytes()
    assert hashlib.sha256(model).hexdigest() == manifest["artifact"]["sha256"], d
    return str(manifest["version"])


def test_random_kills_during_updates_leave_exactly_one_verified_model(
    tmp_path: Path, broker: Broker, keys: Keys, http: FileServer
) -> None:
    conf = agent_config(tmp_path, broker, keys, SYNTHETIC, health_window_s=0.5)
    state = tmp_path / "state"
    versions = [f"{n}.0.0" for n in range(2, 8)]
    released = {"1.0.0"}
    urls: dict[str, str] = {}
    built = {}
    for i, v in enumerate(versions):
        content = models.dense(2 + i % 2)
        built[v] = pkgs.build(content, v, keys.release)
        urls[v] = http.add(f"m/{v}.tflite", content)
    rng = random.Random(SEED)
    announced = 0
    announce(broker, built[versions[0]], urls[versions[0]])
    released.add(versions[0])
    history: list[tuple[float, str | None, str | None]] = []
    for i in range(KILLS):
        agent = AgentProcess(conf, tmp_path / f"agent-{i}.log")
        agent.start()
        at = rng.uniform(0.2, 2.2)
        time.sleep(at)  # the random moment of the kill is what this test is about
        agent.kill()
        cur = installed_is_verified(state)
        prev = verified_at(state / "models" / "previous")
        history.append((round(at, 2), cur, prev))
        assert cur is None or cur in released, history
        assert prev is None or prev in released, history
        if cur == versions[announced] and announced + 1 < len(versions):
            announced += 1  # installed: release the next one
            v = versions[announced]
            announce(broker, built[v], urls[v])
            released.add(v)
    # a last, undisturbed run (no new release): it serves the model `current` names
    publish(broker.host, broker.port, ANNOUNCE, b"", retain=True)
    boot = json.loads((state / "spool.db.seq").read_bytes())["boot"] + 1  # this run's
    with (
        Collector(broker.host, broker.port, ["edge/dev-1/#"]) as col,
        AgentProcess(conf, tmp_path / "agent-final.log") as agent,
    ):
        # predictions the killed runs spooled are resent first, with their own boot counter
        def this_run(msgs: list[Received]) -> list[dict[str, Any]]:
            return [p for p in predictions(msgs) if p["boot"] == boot]

        msgs = col.wait_for(lambda m: len(this_run(m)) >= 5, 60)
        served = {p["model"]["version"] for p in this_run(msgs)}
        code, _ = agent.terminate()
        assert code == 0, agent.output()
    assert len(served) == 1 and served <= released, served
    running = served.pop()
    final = installed_is_verified(state)
    assert running == (final or "1.0.0"), (running, final, history)
    assert announced >= 1, f"no update ever completed in {KILLS} kills: {history}"
