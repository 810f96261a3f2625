"""``edge-fleet rollout`` / ``promote`` against a real Mosquitto and simulated devices.

The simulated devices (tests/fleet/support.py) are plain paho clients that answer every
announcement they are targeted by with the retained ``OtaStateV1`` a real updater publishes
(``failed``, ``rolled_back``, a refusal, or ``active``). tests/fleet/test_fleet_agents.py runs
the same against real agents.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from agent.config import MqttSection
from agent.delivery.mqtt import OutgoingMessage, publish_once
from agent.fleet.cli import EXIT_ABORTED, EXIT_ERROR, EXIT_OK, EXIT_TIMEOUT, main
from agent.release.manifest import Announcement, Targets
from agent.release.package import make_package, write_package
from tests.broker import Broker
from tests.fleet.support import (
    SimulatedDevice,
    make_announcement,
    make_manifest,
    retained_announcement,
)

CANARY = "edge/ota/canary/demo"


def broker_args(broker: Broker) -> list[str]:
    return ["--host", broker.host, "--port", str(broker.port)]


def put(broker: Broker, ann: Announcement) -> None:
    topic = f"edge/ota/{ann.channel}/demo"
    settings = MqttSection(host=broker.host, port=broker.port)
    publish_once(settings, "seed", [OutgoingMessage(topic, ann.to_bytes(), 1, True)])


def version_of(ann: Announcement | None) -> str | None:
    return None if ann is None else str(json.loads(ann.manifest)["version"])


def run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, dict[str, Any]]:
    code = main(argv)
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip().startswith("{") else {"text": out}


def rollout_from_staging(broker: Broker, *extra: str) -> list[str]:
    return [
        "rollout",
        "--model",
        "demo",
        "--from-channel",
        "staging",
        "--channel",
        "canary",
        "--json",
        "--timeout",
        "20",
        *broker_args(broker),
        *extra,
    ]


def fleet(broker: Broker, stack: ExitStack, spec: dict[str, tuple[list[str], str]]) -> None:
    for name, (groups, answer) in spec.items():
        stack.enter_context(SimulatedDevice(broker, name, groups, answer=answer))


@pytest.mark.parametrize("answer", ["failed", "rolled_back", "refused"])
def test_rollout_to_a_rejecting_group_is_stopped(
    broker: Broker, capsys: pytest.CaptureFixture[str], answer: str
) -> None:
    put(broker, make_announcement("demo", "1.0.0", "canary"))
    put(broker, make_announcement("demo", "1.1.0", "staging"))
    with ExitStack() as stack:
        fleet(
            broker,
            stack,
            {
                "lab-1": (["lab"], answer),
                "lab-2": (["lab"], answer),
                "lab-3": (["lab"], answer),
                "field-1": (["field"], "active"),
            },
        )
        code, report = run(capsys, rollout_from_staging(broker, "--group", "lab"))
    assert code == EXIT_ABORTED, report
    assert report["outcome"] == "aborted" and report["restored"] is True
    assert report["version"] == "1.1.0" and report["previous_version"] == "1.0.0"
    assert report["failed"] and set(report["failed"]) <= {"lab-1", "lab-2", "lab-3"}
    assert set(report["targeted"]) == {"lab-1", "lab-2", "lab-3"}
    assert report["succeeded"] == []
    # the channel offers the previous version again
    back = retained_announcement(broker, CANARY)
    assert version_of(back) == "1.0.0" and back is not None and back.channel == "canary"


def test_rollout_completes_when_the_group_takes_it(
    broker: Broker, capsys: pytest.CaptureFixture[str]
) -> None:
    put(broker, make_announcement("demo", "1.0.0", "canary"))
    put(broker, make_announcement("demo", "1.1.0", "staging"))
    with ExitStack() as stack:
        fleet(
            broker,
            stack,
            {
                "lab-1": (["lab"], "active"),
                "lab-2": (["lab"], "active"),
                "f": (["field"], "failed"),
            },
        )
        code, report = run(capsys, rollout_from_staging(broker, "--group", "lab"))
    assert code == EXIT_OK, report
    assert report["outcome"] == "completed" and report["restored"] is False
    assert report["succeeded"] == ["lab-1", "lab-2"] and report["failed"] == {}
    ann = retained_announcement(broker, CANARY)
    assert version_of(ann) == "1.1.0" and ann is not None
    assert ann.targets == Targets(groups=["lab"], percent=100.0)


def test_abort_without_a_previous_version_clears_the_channel(
    broker: Broker, capsys: pytest.CaptureFixture[str]
) -> None:
    put(broker, make_announcement("demo", "1.1.0", "staging"))
    with ExitStack() as stack:
        fleet(broker, stack, {"a": ([], "failed")})
        code, report = run(capsys, rollout_from_staging(broker))
    assert code == EXIT_ABORTED and report["previous_version"] is None
    assert retained_announcement(broker, CANARY) is None


def test_rollout_timeout_and_no_follow(broker: Broker, capsys: pytest.CaptureFixture[str]) -> None:
    put(broker, make_announcement("demo", "1.1.0", "staging"))
    with ExitStack() as stack:
        # a device that never answers: silent on this version (it already 'runs' it)
        stack.enter_context(SimulatedDevice(broker, "quiet", [], answer="active", version="1.1.0"))
        argv = rollout_from_staging(broker)
        argv[argv.index("--timeout") + 1] = "1"
        code, report = run(capsys, argv)
    assert code == EXIT_TIMEOUT and report["outcome"] == "timed_out"
    code, report = run(capsys, [*rollout_from_staging(broker), "--no-follow"])
    assert code == EXIT_OK and report["outcome"] == "announced"


def test_versions_only_go_up(broker: Broker, capsys: pytest.CaptureFixture[str]) -> None:
    put(broker, make_announcement("demo", "1.2.0", "canary"))
    put(broker, make_announcement("demo", "1.1.0", "staging"))
    code = main(rollout_from_staging(broker, "--no-follow"))
    assert code == EXIT_ERROR
    assert "version_not_newer" in capsys.readouterr().err
    assert version_of(retained_announcement(broker, CANARY)) == "1.2.0"
    code, _ = run(capsys, rollout_from_staging(broker, "--no-follow", "--force"))
    assert code == EXIT_OK
    assert version_of(retained_announcement(broker, CANARY)) == "1.1.0"


def test_rollout_of_a_package_file(
    broker: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = b"TFL3" + b"\0" * 60
    pkg = make_package(make_manifest("demo", "2.0.0", model), model, key=None)
    path = write_package(tmp_path / pkg.filename, pkg)
    argv = [
        "rollout",
        "--package",
        str(path),
        "--base-url",
        "https://store.example/models/",
        "--channel",
        "canary",
        "--percent",
        "25",
        "--no-follow",
        "--json",
        *broker_args(broker),
    ]
    code, report = run(capsys, argv)
    assert code == EXIT_OK and report["version"] == "2.0.0"
    ann = retained_announcement(broker, CANARY)
    assert ann is not None and ann.manifest_bytes == pkg.manifest_bytes
    assert ann.url == "https://store.example/models/demo/2.0.0/model.tflite"
    assert ann.package_url == "https://store.example/models/demo/2.0.0/demo-2.0.0.eapkg"
    assert ann.targets.percent == 25.0 and ann.signature is None
    # --base-url is needed to say where devices download from
    assert main([*argv[:3], "--channel", "canary", *broker_args(broker)]) == EXIT_ERROR


def test_promote_re_announces_the_same_signed_manifest(
    broker: Broker, capsys: pytest.CaptureFixture[str]
) -> None:
    canary = make_announcement("demo", "1.1.0", "canary", Targets(groups=["lab"], percent=10))
    put(broker, canary)
    put(broker, make_announcement("demo", "1.0.0", "stable"))
    code, out = run(
        capsys, ["promote", "--model", "demo", "--version", "1.1.0", "--json", *broker_args(broker)]
    )
    assert code == EXIT_OK and out == {"model": "demo", "version": "1.1.0", "channel": "stable"}
    stable = retained_announcement(broker, "edge/ota/stable/demo")
    assert stable is not None and stable.channel == "stable"
    assert (stable.manifest, stable.signature, stable.key_id, stable.url) == (
        canary.manifest,
        canary.signature,
        canary.key_id,
        canary.url,
    )
    assert stable.targets == Targets()  # everyone on stable
    # the wrong expected version, a missing channel, an older version: refused
    assert main(["promote", "--model", "demo", "--version", "9.9.9", *broker_args(broker)]) == 2
    assert main(["promote", "--model", "other", *broker_args(broker)]) == EXIT_ERROR
    put(broker, make_announcement("demo", "1.0.5", "canary"))
    assert main(["promote", "--model", "demo", *broker_args(broker)]) == EXIT_ERROR
    assert "version_not_newer" in capsys.readouterr().err
    assert main(["promote", "--model", "demo", "--force", *broker_args(broker)]) == EXIT_OK


def test_broker_unreachable_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.broker import free_port

    code = main(["status", "--host", "127.0.0.1", "--port", str(free_port()), "--wait", "0"])
    assert code == EXIT_ERROR
    assert "cannot connect" in capsys.readouterr().err
