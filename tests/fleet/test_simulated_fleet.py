"""End to end with the fleet simulator: 200 real MQTT clients, a canary rollout that aborts on
refusals and restores the previous announcement, and a status view that sees everyone."""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from pathlib import Path

import pytest

from agent.config import MqttSection
from agent.delivery.mqtt import OutgoingMessage, publish_once
from agent.fleet.cli import EXIT_OK, main
from agent.fleet.rollout import Outcome, RolloutPolicy, RolloutStore, run_rollout
from agent.fleet.simulator import Behaviour, Script, SimSpec, Simulator
from agent.fleet.view import watch_fleet
from agent.release.manifest import Targets
from tests.broker import Broker
from tests.fleet.support import make_announcement, retained_announcement

N = 200
INITIAL_SHA = hashlib.sha256(b"TFL3-not-a-model").hexdigest()  # make_manifest's content


def test_simulated_fleet_rollout_aborts_on_refusals_and_restores(
    broker: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = SimSpec(
        devices=N,
        sha256=INITIAL_SHA,
        metrics_interval_s=2.0,
        prediction_rate=0.2,
        install_s=0.2,
        health_s=1.0,
        scripts=(
            Script(Behaviour.REFUSE, 0.15, "bad_signature"),
            Script(Behaviour.OFFLINE, 0.02, "1"),
        ),
    )
    settings = MqttSection(host=broker.host, port=broker.port)
    topic = "edge/ota/canary/demo"
    previous = make_announcement("demo", "1.0.0", "canary")
    publish_once(settings, "seed", [OutgoingMessage(topic, previous.to_bytes(), 1, True)])
    sim = Simulator(spec, broker.host, broker.port)
    sim.start()
    try:
        assert sim.wait_online(N, 120), f"{sim.online} of {N} online"
        gone = sum(1 for d in sim.devices if d.behaviour is Behaviour.OFFLINE)
        assert gone > 0
        with watch_fleet(settings) as view:
            assert view.wait_for(
                lambda ds: sum(1 for d in ds if d.online is False) == gone and len(ds) == N, 60
            )

        # the status view: every device, the offline ones marked and without live rates
        assert (
            main(
                [
                    "status",
                    "--json",
                    "--wait",
                    "30",
                    "--host",
                    broker.host,
                    "--port",
                    str(broker.port),
                ]
            )
            == EXIT_OK
        )
        status = json.loads(capsys.readouterr().out)
        assert status["summary"]["devices"] == N
        assert status["summary"]["offline"] == gone
        assert status["summary"]["versions"] == {"demo 1.0.0": N}
        offline = [d for d in status["devices"] if d["online"] is False]
        assert offline and all(d["prediction_rate"] is None for d in offline)

        # a canary to half the fleet; 15 % of the devices refuse: abort above 5 %
        ann = make_announcement("demo", "1.1.0", "canary", Targets(percent=50.0))
        store = RolloutStore(tmp_path / "rollouts")
        lines: list[str] = []
        report = run_rollout(
            settings,
            None,
            ann,
            RolloutPolicy(max_failure_fraction=0.05, timeout_s=120.0, discover_s=30.0),
            on_event=lines.append,
            store=store,
        )
        assert report.outcome is Outcome.ABORTED, "\n".join(lines[-20:])
        assert report.restored and report.restored_text == "re-announced 1.0.0"
        assert report.failure_reasons() and set(report.failure_reasons()) == {
            "refused (bad_signature)"
        }
        refusing = {d.device for d in sim.devices if d.behaviour is Behaviour.REFUSE}
        assert set(report.failed) <= refusing
        assert report.failure_fraction > 0.05
        assert any(line.startswith("ABORTED") for line in lines)
        back = retained_announcement(broker, topic)
        assert back is not None and json.loads(back.manifest)["version"] == "1.0.0"
        kept = store.load("canary", "demo")
        assert kept.outcome is Outcome.ABORTED and kept.restored_text == "re-announced 1.0.0"

        # the refusals are visible per device in the status view
        with watch_fleet(settings) as view:
            assert view.wait_for(
                lambda ds: {d.device for d in ds if d.last_refusal} >= set(report.failed), 60
            )
            reasons = Counter(
                d.last_refusal.reason for d in view.devices() if d.last_refusal is not None
            )
        assert reasons["bad_signature"] >= len(report.failed)
    finally:
        sim.stop(clear=True)
    assert time.time()  # the simulator stopped cleanly


def _fleet(n: int, **kw: object) -> SimSpec:
    return SimSpec(
        devices=n,
        sha256=INITIAL_SHA,
        metrics_interval_s=2.0,
        prediction_rate=0.0,
        install_s=0.2,
        health_s=0.5,
        **kw,  # type: ignore[arg-type]
    )


def test_a_rollout_to_devices_already_on_the_build_completes_at_once(
    broker: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Finding 3: every target already runs the announced build."""
    sim = Simulator(_fleet(20), broker.host, broker.port)
    sim.start()
    try:
        assert sim.wait_online(20, 60)
        settings = MqttSection(host=broker.host, port=broker.port)
        ann = make_announcement("demo", "1.0.0", "staging")  # the build they all run
        publish_once(
            settings, "seed", [OutgoingMessage("edge/ota/staging/demo", ann.to_bytes(), 1, True)]
        )
        t0 = time.monotonic()
        code = main(
            [
                "rollout", "--host", broker.host, "--port", str(broker.port),
                "--model", "demo", "--from-channel", "staging", "--channel", "canary",
                "--discover", "30", "--timeout", "120", "--json",
                "--state-dir", str(tmp_path),
            ]
        )  # fmt: skip
        took = time.monotonic() - t0
        report = json.loads(capsys.readouterr().out)
        assert code == EXIT_OK, report
        assert report["outcome"] == "completed"
        assert len(report["already"]) == 20 and report["pending"] == []
        assert took < 60  # not the --timeout of 120
    finally:
        sim.stop(clear=True)


def test_a_rollout_resumes_from_its_state_on_disk(
    broker: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The operator's machine restarts: --no-follow stands in for the lost process, then
    --resume follows the kept rollout to its end."""
    sim = Simulator(_fleet(20), broker.host, broker.port)
    sim.start()
    try:
        assert sim.wait_online(20, 60)
        settings = MqttSection(host=broker.host, port=broker.port)
        ann = make_announcement("demo", "1.1.0", "staging")
        publish_once(
            settings, "seed", [OutgoingMessage("edge/ota/staging/demo", ann.to_bytes(), 1, True)]
        )
        common = ["--host", broker.host, "--port", str(broker.port), "--model", "demo",
                  "--channel", "canary", "--state-dir", str(tmp_path), "--json"]  # fmt: skip
        code = main(["rollout", *common, "--from-channel", "staging", "--no-follow"])
        assert code == EXIT_OK
        assert json.loads(capsys.readouterr().out)["outcome"] == "announced"
        assert (tmp_path / "canary-demo.json").exists()
        code = main(["rollout", *common, "--resume", "--timeout", "120"])
        report = json.loads(capsys.readouterr().out)
        assert code == EXIT_OK, report
        assert report["outcome"] == "completed" and len(report["succeeded"]) == 20
        kept = RolloutStore(tmp_path).load("canary", "demo")
        assert kept.outcome is Outcome.COMPLETED
        # a finished rollout is not resumed again
        assert main(["rollout", *common, "--resume"]) == EXIT_OK
        assert json.loads(capsys.readouterr().out)["outcome"] == "completed"
    finally:
        sim.stop(clear=True)


def test_scripted_health_failures_and_flapping_devices(broker: Broker, tmp_path: Path) -> None:
    """fail_health devices roll back (a failure with its reason, counted, no abort under the
    threshold); flapping devices drop without DISCONNECT (last will) and come back, and still
    take the release from the retained announcement."""
    spec = _fleet(
        30,
        scripts=(
            Script(Behaviour.FAIL_HEALTH, 0.2),
            Script(Behaviour.FLAP, 0.2, "2"),
        ),
    )
    sim = Simulator(spec, broker.host, broker.port)
    sim.start()
    try:
        assert sim.wait_online(30, 60)
        settings = MqttSection(host=broker.host, port=broker.port)
        with watch_fleet(settings) as view:
            # a flapping device's last will says offline; it comes back online
            assert view.wait_for(lambda ds: any(d.online is False for d in ds), 30)
        ann = make_announcement("demo", "1.1.0", "canary")
        report = run_rollout(
            settings,
            None,
            ann,
            RolloutPolicy(max_failure_fraction=0.5, timeout_s=90.0, discover_s=20.0),
            store=RolloutStore(tmp_path),
        )
        failing = {d.device for d in sim.devices if d.behaviour is Behaviour.FAIL_HEALTH}
        assert failing & set(report.targeted)
        assert failing & set(report.targeted) <= set(report.failed) <= failing
        assert set(report.failure_reasons()) == {"rolled_back (error_rate)"}
        assert report.outcome in (Outcome.COMPLETED, Outcome.TIMED_OUT)
        assert not report.restored
        accepting = {d.device for d in sim.devices if d.behaviour is Behaviour.ACCEPT}
        assert accepting & set(report.targeted) <= set(report.succeeded)
        assert sim.counts["dropped"] > 0
    finally:
        sim.stop(clear=True)
