"""Config: every problem reported with its key path; env overrides; embedded defaults."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import load_config, parse_config, read_password
from agent.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def problems(data: dict[str, object]) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return dict(info.value.problems)


def test_repo_config_toml_is_valid() -> None:
    cfg = load_config(REPO / "config.toml", environ={})
    assert cfg.agent.device_id == "pi-kitchen-01"
    assert cfg.window.length == 32


def test_embedded_defaults_are_the_demo() -> None:
    cfg = load_config(None, environ={})
    assert cfg.model.path == "builtin:demo"
    assert cfg.sources[0].type == "synthetic"
    assert cfg.mqtt.host == "localhost" and cfg.mqtt.port == 1883


@pytest.mark.parametrize(
    ("data", "path", "fragment"),
    [
        ({"agent": {"devcie_id": "x"}}, "agent.devcie_id", "Extra inputs"),
        ({"agent": {"device_id": "a/b"}}, "agent", "no '/'"),
        ({"mqtt": {"port": 70000}}, "mqtt.port", "less than or equal"),
        ({"mqtt": {"qos": 3}}, "mqtt.qos", "Input should be"),
        ({"mqtt": {"tls": {"cert_file": "c.pem"}}}, "mqtt.tls", "cert_file and key_file"),
        ({"mqtt": {"password_file": "p"}}, "mqtt", "needs a username"),
        ({"window": {"length": 8, "hop": 16}}, "window", "hop (16) must be <= length (8)"),
        ({"preprocess": {"normalize": "standard"}}, "preprocess", "needs mean and std"),
        (
            {"preprocess": {"normalize": "standard", "mean": [0, 0, 0], "std": [1, 0, 1]}},
            "preprocess",
            "std values must be > 0",
        ),
        ({"sources": [{"type": "replay"}]}, "sources[0].path", "Field required"),
        ({"sources": [{"type": "serial"}]}, "sources[0]", "does not match any of the expected"),
        ({"sources": [{"type": "synthetic", "rate_hz": 0}]}, "sources[0].rate_hz", "greater"),
        ({"sources": [{"type": "command", "argv": []}]}, "sources[0]", "argv must name"),
        ({"postprocess": {"type": "anomaly"}}, "postprocess.threshold", "Field required"),
        ({"model": {"runtime": "onnx"}}, "model.runtime", "Input should be"),
        ({"ota": {"enabled": True}}, "ota", "needs trusted_keys"),
    ],
)
def test_each_error_names_its_key(data: dict[str, object], path: str, fragment: str) -> None:
    found = problems(data)
    assert path in found, found
    assert fragment in found[path]


def test_all_problems_reported_not_just_the_first() -> None:
    found = problems({"mqtt": {"port": 0, "qos": 5}, "window": {"length": 0}, "bogus": 1})
    assert {"mqtt.port", "mqtt.qos", "window.length", "bogus"} <= set(found)


def test_cross_field_channel_mismatch() -> None:
    found = problems({"preprocess": {"normalize": "standard", "mean": [0, 0], "std": [1, 1]}})
    assert any("2 values for 3 channels" in r for r in found.values())


def test_env_overrides_nested_keys_and_list_items(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[[sources]]\ntype = "synthetic"\nname = "a"\n')
    cfg = load_config(
        f,
        environ={
            "EDGE_AGENT__MQTT__HOST": "broker.lan",
            "EDGE_AGENT__MQTT__PORT": "8883",
            "EDGE_AGENT__MQTT__TLS__ENABLED": "true",
            "EDGE_AGENT__SOURCES__0__RATE_HZ": "25",
            "EDGE_AGENT__AGENT__GROUPS": '["a", "b"]',
        },
    )
    assert cfg.mqtt.host == "broker.lan"
    assert cfg.mqtt.port == 8883
    assert cfg.mqtt.tls.enabled is True
    assert cfg.sources[0].rate_hz == 25  # type: ignore[union-attr]
    assert cfg.agent.groups == ["a", "b"]


def test_env_override_errors_name_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, environ={"EDGE_AGENT__MQTT__PORT": "not-a-port"})
    assert "mqtt.port" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_config(None, environ={"EDGE_AGENT__SOURCES__3__RATE_HZ": "1"})
    assert "EDGE_AGENT__SOURCES__3__RATE_HZ" in str(info.value)


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[mqtt\nhost=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad, environ={})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml", environ={})


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    f = tmp_path / "sub" / "c.toml"
    f.parent.mkdir()
    f.write_text('[model]\npath = "m.tflite"\n[agent]\nstate_dir = "st"\n')
    cfg = load_config(f, environ={})
    assert cfg.model.path == str(f.parent / "m.tflite")
    assert cfg.agent.state_dir == f.parent / "st"


def test_password_from_file_credentials_dir_and_env(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cret\n")
    cfg = parse_config({"mqtt": {"username": "u", "password_file": "pw"}})
    assert read_password(cfg.mqtt, {"CREDENTIALS_DIRECTORY": str(tmp_path)}) == "s3cret"
    cfg = parse_config({"mqtt": {"username": "u", "password_env": "MQTT_PW"}})
    assert read_password(cfg.mqtt, {"MQTT_PW": "x"}) == "x"
    with pytest.raises(ConfigError, match="MQTT_PW is not set"):
        read_password(cfg.mqtt, {})


def test_check_config_cli_reports_every_problem_and_exits_2(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text("[mqtt]\nport = 0\nqos = 9\n[window]\nlenght = 3\n")
    res = subprocess.run(
        [sys.executable, "-m", "agent", "check-config", "--config", str(f)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert res.returncode == 2
    for key in ("mqtt.port", "mqtt.qos", "window.lenght"):
        assert key in res.stderr


def test_check_config_cli_prints_effective_config() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "agent", "check-config", "--config", str(REPO / "config.toml")],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "EDGE_AGENT__MQTT__HOST": "override.example"},
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert '"host": "override.example"' in res.stdout


@pytest.mark.parametrize(
    ("http", "warned"),
    [
        ({"enabled": True, "host": "0.0.0.0"}, True),
        ({"enabled": True, "host": "::"}, True),
        ({"enabled": True, "host": "pi.local"}, True),
        ({"enabled": True, "host": "0.0.0.0", "token_file": "tok"}, False),
        ({"enabled": True, "host": "127.0.0.1"}, False),
        ({"enabled": True, "host": "::1"}, False),
        ({"enabled": True, "host": "localhost"}, False),
        ({"enabled": False, "host": "0.0.0.0"}, False),
    ],
)
def test_check_config_warns_about_an_exposed_api_without_a_token(
    tmp_path: Path, http: dict[str, object], warned: bool
) -> None:
    """Issue 13 finding 5: binding beyond loopback without a token is worth a warning."""
    lines = [f"{k} = {json.dumps(v)}" for k, v in http.items()]
    (tmp_path / "tok").write_text("s3cret-token\n")  # check-config reads the token file
    f = tmp_path / "c.toml"
    f.write_text("[http]\n" + "\n".join(lines) + "\n")
    res = subprocess.run(
        [sys.executable, "-m", "agent", "check-config", "--config", str(f)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert ("warning: http.host" in res.stderr) is warned, res.stderr
