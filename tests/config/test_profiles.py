"""``mqtt.profile``: a config that would break on the chosen broker platform is refused at
check-config, with the key and the platform's limit in the message."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.config import parse_config
from agent.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def problems(data: dict[str, Any]) -> dict[str, str]:
    try:
        parse_config(data)
    except ConfigError as exc:
        return dict(exc.problems)
    return {}


def aws(**mqtt: Any) -> dict[str, Any]:
    return {"mqtt": {"profile": "aws-iot-core", **mqtt}}


def test_generic_takes_what_aws_iot_core_refuses() -> None:
    data: dict[str, Any] = {
        "mqtt": {"qos": 2, "topic_prefix": "a/b/c/d/e/f", "batch": {"max_predictions": 5000}}
    }
    assert problems(data) == {}
    data["mqtt"]["profile"] = "aws-iot-core"
    found = problems(data)
    assert set(found) == {
        "mqtt.qos",
        "mqtt.topic_prefix",
        "ota.channels",
        "mqtt.batch.max_predictions",
    }
    assert "AWS IoT Core" in found["mqtt.qos"] and "at most QoS 1" in found["mqtt.qos"]
    assert "at most 7" in found["mqtt.topic_prefix"] and "8 slashes" in found["mqtt.topic_prefix"]
    assert "128 KB" in found["mqtt.batch.max_predictions"]


@pytest.mark.parametrize(
    ("data", "key", "fragment"),
    [
        (aws(keepalive_s=15), "mqtt.keepalive_s", "30-1200 s"),
        (aws(topic_prefix="a/b/c/d/e/f"), "mqtt.topic_prefix", "at most 7"),
        (aws(topic_prefix="/".join(["p" * 60] * 4)), "mqtt.topic_prefix", "at most 256"),
        (
            aws() | {"sources": [{"type": "mqtt", "name": "s", "topic": "x/y", "qos": 2}]},
            "sources.0.qos",
            "at most QoS 1",
        ),
        (
            aws() | {"homeassistant": {"enabled": True, "discovery_prefix": "h/a/s/s/x"}},
            "homeassistant.discovery_prefix",
            "at most 7",
        ),
        (
            {"mqtt": {"profile": "emqx", "protocol": "3.1.1"}},
            "mqtt.protocol",
            "shared subscriptions",
        ),
        (
            {"mqtt": {"profile": "hivemq", "protocol": "3.1.1"}},
            "mqtt.protocol",
            "HiveMQ",
        ),
        (
            {"sources": [{"type": "mqtt", "name": "s", "topic": "$share/g/x/y"}]},
            "sources.0.topic",
            "'emqx' or 'hivemq'",
        ),
    ],
)
def test_each_platform_limit_names_its_key(data: dict[str, Any], key: str, fragment: str) -> None:
    found = problems(data)
    assert key in found, found
    assert fragment in found[key]


def test_a_config_that_fits_passes() -> None:
    assert problems(aws(topic_prefix="acme/site1", keepalive_s=60)) == {}
    assert problems({"mqtt": {"profile": "emqx"}}) == {}
    shared: dict[str, Any] = {"mqtt": {"profile": "emqx"}}
    shared["sources"] = [{"type": "mqtt", "name": "s", "topic": "$share/g/x/y"}]
    assert problems(shared) == {}


def test_check_config_refuses_with_key_and_limit(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[mqtt]\nprofile = "aws-iot-core"\nqos = 2\n')
    res = subprocess.run(
        [sys.executable, "-m", "agent", "check-config", "--config", str(f)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": os.environ.get("PYTHONPATH", str(REPO))},
        check=False,
    )
    assert res.returncode == 2, res.stderr
    assert "mqtt.qos" in res.stderr and "at most QoS 1" in res.stderr
