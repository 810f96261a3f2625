"""``edge-fleet drift`` and the drift/shadow columns against a real broker: retained status,
metrics with drift scores and drift alerts of three simulated devices."""

from __future__ import annotations

import json
import time

import pytest

from agent.fleet.cli import main as fleet_main
from tests.broker import Broker
from tests.mqttclient import publish


def _metrics(device: str, version: str, score: float | None) -> bytes:
    drift = None if score is None else {"score": score, "alert": score >= 0.25}
    return json.dumps(
        {
            "v": 1,
            "device": device,
            "groups": [],
            "ota_channels": ["stable"],
            "ts": time.time(),
            "agent_version": "0.1.0",
            "model": {"name": "demo", "version": version},
            "rates": {"samples_per_s": 50.0, "predictions_per_s": 1.0},
            "queue": {"depth": 0, "dropped": 0},
            "drift": drift,
        }
    ).encode()


def test_drift_lists_devices_over_the_threshold_by_version(
    broker: Broker, capsys: pytest.CaptureFixture[str]
) -> None:
    devices = {
        "d1": ("1.0.0", 0.41, True),
        "d2": ("1.1.0", 0.12, False),
        "d3": ("1.0.0", None, False),
    }
    for dev, (version, score, alert) in devices.items():
        publish(broker.host, broker.port, f"edge/{dev}/status", b"online", retain=True)
        publish(
            broker.host,
            broker.port,
            f"edge/{dev}/metrics",
            _metrics(dev, version, score),
            retain=True,
        )
        if alert:
            payload = json.dumps({"active": True, "channels": ["ch1"]})
            publish(broker.host, broker.port, f"edge/{dev}/drift", payload, retain=True)
    args = ["--host", broker.host, "--port", str(broker.port), "--wait", "10"]
    assert fleet_main(["drift", *args]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == ["demo 1.0.0", "  d1  0.410 ALERT ch1"], out
    assert fleet_main(["drift", *args, "--threshold", "0.1", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert sorted(got) == ["demo 1.0.0", "demo 1.1.0"]
    assert [d["device"] for d in got["demo 1.1.0"]] == ["d2"]
    assert got["demo 1.0.0"][0]["drift"] == {"score": 0.41, "alert": True, "channels": ["ch1"]}
    assert fleet_main(["status", *args]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[-2:] == ["DRIFT", "SHADOW"]
    rows = {line.split()[0]: line for line in table[1:4]}
    assert (
        "0.410 ALERT ch1" in rows["d1"]
        and "0.120" in rows["d2"]
        and rows["d3"].split()[-2:] == ["-", "-"]
    )


def test_rollout_shadow_flag_becomes_the_targets_flag_and_promote_clears_it() -> None:
    from agent.fleet.cli import _targets, build_parser

    p = build_parser()
    args = p.parse_args(["rollout", "--package", "x.eapkg", "--channel", "shadow", "--shadow"])
    assert _targets(args).shadow is True and _targets(args).devices is None
    args = p.parse_args(["rollout", "--package", "x.eapkg", "--channel", "canary"])
    assert _targets(args).shadow is None
    args = p.parse_args(["promote", "--model", "m", "--min-agreement", "0.98"])
    assert args.min_agreement == 0.98 and args.min_windows == 1000
