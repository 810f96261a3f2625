"""The TLS path against Mosquitto with a CA made in the test: server auth and mutual TLS."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from tests.agentproc import AgentProcess, write_config
from tests.broker import Broker, TlsFiles
from tests.mqttclient import Collector
from tests.tlsfiles import make_ca


def tls_config(tmp: Path, broker: Broker, tls: dict[str, Any]) -> Path:
    csv = tmp / "s.csv"
    x = np.random.default_rng(0).normal(size=(32 * 4, 3))
    csv.write_text("a,b,c\n" + "\n".join(",".join(f"{v:.5f}" for v in r) for r in x) + "\n")
    cfg = {
        "agent": {"device_id": "tls-dev", "state_dir": str(tmp / "state")},
        "sources": [{"type": "replay", "name": "rec", "path": str(csv), "rate": "fast"}],
        "window": {"length": 32, "hop": 32},
        "mqtt": {
            "host": "127.0.0.1",
            "port": broker.port,
            "reconnect_min_s": 0.1,
            "reconnect_max_s": 0.5,
            "tls": tls,
        },
    }
    return write_config(tmp / "agent.toml", cfg)


def test_mutual_tls_delivers(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "pki")
    tls = TlsFiles(ca["ca_file"], ca["server_cert"], ca["server_key"], require_certificate=True)
    with Broker(tmp_path / "broker", tls=tls) as broker:
        conf = tls_config(
            tmp_path,
            broker,
            {
                "enabled": True,
                "ca_file": str(ca["ca_file"]),
                "cert_file": str(ca["client_cert"]),
                "key_file": str(ca["client_key"]),
            },
        )
        with (
            Collector(broker.host, broker.plain_port, ["edge/tls-dev/#"]) as col,
            AgentProcess(conf, tmp_path / "agent.log") as agent,
        ):
            msgs = col.wait_for(lambda m: sum("/prediction/" in r.topic for r in m) >= 4, 30)
            code, _ = agent.terminate()
        assert code == 0
        assert [r.json()["seq"] for r in msgs if "/prediction/" in r.topic] == [0, 1, 2, 3]


def test_untrusted_server_is_refused_and_nothing_is_lost(tmp_path: Path) -> None:
    """With the wrong CA the agent never connects; predictions wait in the spool."""
    ca = make_ca(tmp_path / "pki")
    tls = TlsFiles(ca["ca_file"], ca["server_cert"], ca["server_key"])
    with Broker(tmp_path / "broker", tls=tls) as broker:
        conf = tls_config(tmp_path, broker, {"enabled": True, "ca_file": str(ca["rogue_ca"])})
        with (
            Collector(broker.host, broker.plain_port, ["edge/tls-dev/#"]) as col,
            AgentProcess(conf, tmp_path / "agent.log") as agent,
        ):
            refused = "certificate verify failed"
            t0 = time.monotonic()
            while refused not in agent.output() and time.monotonic() - t0 < 20:
                time.sleep(0.1)  # a log line in another process: nothing to await
            assert refused in agent.output()
            assert not [r for r in col.messages if "/prediction/" in r.topic]
            code, _ = agent.terminate()
        assert code == 0
        assert "4 message(s) queued" in agent.output()
