"""Broker options of ``edge-fleet``: the agent's own ``[mqtt]`` table, from flags or a config.

``--config agent.toml`` takes that file's ``[mqtt]`` table (host, port, TLS, user, password
file, topic prefix) and flags override single keys, so an operator can point the fleet tool
at exactly the broker the agents use. The result is validated as ``agent.config.MqttSection``
with the agent's own rules; the password is read the agent's way (file or environment).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agent.config import MqttSection, load_config, read_password
from agent.errors import ConfigError


def add_broker_args(p: argparse.ArgumentParser) -> None:
    """Add the broker options (host, port, TLS, credentials, ``--config``) to ``p``."""
    g = p.add_argument_group("broker (default: the [mqtt] table of --config, else localhost)")
    g.add_argument("--config", type=Path, help="agent config.toml whose [mqtt] table to use")
    g.add_argument("--host", help="broker host")
    g.add_argument("--port", type=int, help="broker port")
    g.add_argument("--protocol", choices=["5", "3.1.1"], help="MQTT protocol version")
    g.add_argument("--prefix", dest="topic_prefix", help="topic prefix (default edge)")
    g.add_argument("--username", help="user name")
    g.add_argument("--password-file", type=Path, help="file holding the password")
    g.add_argument("--password-env", help="environment variable holding the password")
    g.add_argument("--tls", action="store_true", default=None, help="connect with TLS")
    g.add_argument("--ca-file", type=Path, help="CA bundle to verify the broker (implies --tls)")
    g.add_argument("--cert-file", type=Path, help="client certificate (mutual TLS)")
    g.add_argument("--key-file", type=Path, help="client private key (mutual TLS)")


def mqtt_settings(args: argparse.Namespace) -> MqttSection:
    """The broker settings from ``--config`` and the flags; ``ConfigError`` naming the keys."""
    base: dict[str, Any] = {}
    if getattr(args, "config", None) is not None:
        base = load_config(args.config).mqtt.model_dump()
    for key in (
        "host",
        "port",
        "protocol",
        "topic_prefix",
        "username",
        "password_file",
        "password_env",
    ):
        value = getattr(args, key, None)
        if value is not None:
            base[key] = value
    tls: dict[str, Any] = dict(base.get("tls") or {})
    for key in ("ca_file", "cert_file", "key_file"):
        value = getattr(args, key, None)
        if value is not None:
            tls[key] = value
            tls["enabled"] = True
    if getattr(args, "tls", None):
        tls["enabled"] = True
    if tls:
        base["tls"] = tls
    # a command-line tool gives up quickly instead of backing off for half a minute
    base.setdefault("reconnect_max_s", 2.0)
    base["reconnect_min_s"] = min(float(base.get("reconnect_min_s", 0.5)), 0.5)
    base["reconnect_max_s"] = min(float(base["reconnect_max_s"]), 5.0)
    try:
        return MqttSection.model_validate(base)
    except ValidationError as exc:
        problems = [
            (
                "mqtt." + ".".join(str(p) for p in e["loc"]) if e["loc"] else "mqtt",
                e["msg"].removeprefix("Value error, "),
            )
            for e in exc.errors(include_url=False)
        ]
        raise ConfigError(problems, "broker options") from None


def password(settings: MqttSection) -> str | None:
    """The MQTT password from ``settings``' file or environment variable, or None."""
    return read_password(settings)
