"""``edge-fleet`` against several real agent processes on one Mosquitto.

Three agents run the builtin demo model on a synthetic source, with OTA on the ``canary``
channel trusting key A. The fleet view shows them online with model, OTA state, prediction
rate and queue depth; a rollout of a package signed with key B (which no device trusts) to
the ``lab`` group is refused by the lab devices' real updaters and stopped automatically, and
the channel offers the previous version again; ``kill -9`` of one agent turns it offline
through its last will.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from agent.config import MqttSection
from agent.delivery.mqtt import OutgoingMessage, publish_once
from agent.fleet.cli import EXIT_ABORTED, EXIT_OK, main
from agent.fleet.view import DeviceState, watch_fleet
from agent.model.loading import demo_model_bytes
from agent.release.manifest import Announcement, utc_now
from agent.release.package import make_package, sign_manifest, write_package
from agent.release.signing import generate_keypair, load_private_key
from tests.agentproc import AgentProcess, write_config
from tests.broker import Broker
from tests.fleet.support import agent_config, make_manifest, retained_announcement

pytestmark = pytest.mark.slow

DEVICES = {"dev-a": ["lab"], "dev-b": ["lab"], "dev-c": ["field"]}
CANARY = "edge/ota/canary/demo"


@pytest.fixture
def agents(broker: Broker, tmp_path: Path) -> Iterator[dict[str, AgentProcess]]:
    priv_a, pub_a = generate_keypair()
    (tmp_path / "trusted.pem").write_bytes(pub_a)
    key_a = load_private_key(priv_a)
    # the channel's current release: the demo model itself, signed by the trusted key
    demo = demo_model_bytes()
    manifest = make_manifest("demo", "1.0.0", demo).to_bytes()
    sig = sign_manifest(manifest, key_a)
    current = Announcement(
        channel="canary",
        manifest=manifest.decode(),
        signature=sig.signature,
        key_id=sig.key_id,
        url="http://127.0.0.1:9/demo/1.0.0/model.tflite",
        published_at=utc_now(),
    )
    publish_once(
        MqttSection(host=broker.host, port=broker.port),
        "seed",
        [OutgoingMessage(CANARY, current.to_bytes(), 1, True)],
    )
    procs: dict[str, AgentProcess] = {}
    with ExitStack() as stack:
        for dev, groups in DEVICES.items():
            cfg = agent_config(
                tmp_path,
                broker,
                dev,
                groups,
                metrics={"interval_s": 0.3},
                ota={
                    "enabled": True,
                    "channels": ["canary"],
                    "trusted_keys": [str(tmp_path / "trusted.pem")],
                },
            )
            conf = write_config(tmp_path / f"{dev}.toml", cfg)
            procs[dev] = stack.enter_context(AgentProcess(conf, tmp_path / f"{dev}.log"))
        yield procs


def broker_args(broker: Broker) -> list[str]:
    return ["--host", broker.host, "--port", str(broker.port)]


def status_json(capsys: pytest.CaptureFixture[str], broker: Broker) -> dict[str, Any]:
    assert main(["status", "--json", "--wait", "5", *broker_args(broker)]) == EXIT_OK
    return {d["device"]: d for d in json.loads(capsys.readouterr().out)["devices"]}


def settled(devices: list[DeviceState]) -> bool:
    by = {d.device: d for d in devices}
    return set(DEVICES) <= set(by) and all(
        by[n].online
        and by[n].has_metrics
        and (by[n].prediction_rate or 0) > 0
        and by[n].ota is not None
        for n in DEVICES
    )


def test_fleet_status_rollout_abort_and_last_will(
    agents: dict[str, AgentProcess],
    broker: Broker,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = MqttSection(host=broker.host, port=broker.port)
    with watch_fleet(settings) as view:
        assert view.wait_for(settled, 60), [d.to_json() for d in view.devices()]

    # ---- status: every agent online, with model, OTA state, rate and queue
    table = status_json(capsys, broker)
    assert set(table) == set(DEVICES)
    for dev, groups in DEVICES.items():
        row = table[dev]
        assert row["online"] is True and (row["model"], row["version"]) == ("demo", "1.0.0")
        assert row["groups"] == groups
        assert row["ota"]["state"] == "idle" and row["ota"]["running"] == "1.0.0"
        # the queue holds a message until its PUBACK: a snapshot may catch one or two in flight
        assert row["prediction_rate"] > 0 and 0 <= row["queue_depth"] <= 10
        assert row["last_seen_age_s"] < 30
    assert main(["status", "--wait", "2", *broker_args(broker)]) == EXIT_OK
    text = capsys.readouterr().out
    assert "3 device(s), 3 online" in text and "demo 1.0.0" in text

    # ---- rollout to 'lab' of a package no device trusts: refused, stopped, restored
    priv_b, _ = generate_keypair()
    demo = demo_model_bytes()
    pkg = make_package(make_manifest("demo", "1.1.0", demo), demo, load_private_key(priv_b))
    path = write_package(tmp_path / pkg.filename, pkg)
    code = main(
        [
            "rollout",
            "--package",
            str(path),
            "--base-url",
            "http://127.0.0.1:9/store",
            "--channel",
            "canary",
            "--group",
            "lab",
            "--timeout",
            "60",
            "--json",
            *broker_args(broker),
        ]
    )
    report = json.loads(capsys.readouterr().out)
    assert code == EXIT_ABORTED, report
    assert report["outcome"] == "aborted" and report["restored"] is True
    assert sorted(report["targeted"]) == ["dev-a", "dev-b"]  # dev-c is in 'field'
    assert report["failed"] and set(report["failed"]) <= {"dev-a", "dev-b"}
    assert all(v.startswith("refused (unknown_key") for v in report["failed"].values())
    back = retained_announcement(broker, CANARY)
    assert back is not None and json.loads(back.manifest)["version"] == "1.0.0"
    assert all(a.alive() for a in agents.values())
    # the agents kept running their model
    table = status_json(capsys, broker)
    assert all(table[d]["version"] == "1.0.0" for d in DEVICES)

    # ---- kill -9: the broker publishes dev-c's last will
    agents["dev-c"].kill()
    with watch_fleet(settings) as view:

        def dead(devices: list[DeviceState]) -> bool:
            by = {d.device: d.online for d in devices}
            return by.get("dev-c") is False and by.get("dev-a") is True

        assert view.wait_for(dead, 30)
    table = status_json(capsys, broker)
    assert table["dev-c"]["online"] is False
    assert table["dev-a"]["online"] is True and table["dev-b"]["online"] is True
