"""``edge-agent doctor`` against the real Mosquitto the tests start: TCP, TLS handshake and
CONNACK with credentials, plus the local checks (issue 11)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.app.doctor import Row, _clock, _credentials, _state_dir, diagnose
from agent.config import parse_config
from tests.agentproc import REPO, write_config
from tests.broker import Broker, TlsFiles, free_port
from tests.tlsfiles import make_ca

pytestmark = pytest.mark.slow


def doctor(conf: Path, env: dict[str, str] | None = None) -> tuple[int, dict[str, Row]]:
    import os

    res = subprocess.run(
        [sys.executable, "-m", "agent", "doctor", "--config", str(conf), "--json"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
        env={**os.environ, **(env or {})},
        timeout=120,
    )
    rows = {r["check"]: Row(r["check"], r["ok"], r["detail"]) for r in json.loads(res.stdout)}
    return res.returncode, rows


def conf(tmp: Path, mqtt: dict[str, Any], **tables: Any) -> Path:
    data = {"agent": {"state_dir": str(tmp / "state")}, "mqtt": mqtt, **tables}
    return write_config(tmp / "agent.toml", data)


def test_a_healthy_setup_passes(tmp_path: Path, broker: Broker) -> None:
    code, rows = doctor(conf(tmp_path, {"host": broker.host, "port": broker.port}))
    assert code == 0, rows
    assert [rows[k].ok for k in ("broker TCP", "broker CONNACK", "runtime", "state dir")] == [
        True
    ] * 4
    assert rows["broker TLS"].ok is None
    assert "XNNPACK" in rows["runtime"].detail
    assert rows["clock"].ok is True


def test_reference_kernels_are_reported(tmp_path: Path, broker: Broker) -> None:
    path = conf(
        tmp_path, {"host": broker.host, "port": broker.port}, model={"reference_kernels": True}
    )
    code, rows = doctor(path)
    assert code == 0 and "reference kernels" in rows["runtime"].detail


def test_an_unreachable_broker_fails(tmp_path: Path) -> None:
    code, rows = doctor(conf(tmp_path, {"host": "127.0.0.1", "port": free_port()}))
    assert code == 1
    assert rows["broker TCP"].ok is False and "refused" in rows["broker TCP"].detail.lower()
    assert rows["broker CONNACK"].ok is None


def test_wrong_credentials_are_refused_at_connack(tmp_path: Path) -> None:
    pw = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(pw), "dev", "right"], check=True)
    pw.chmod(0o644)
    extra = f"allow_anonymous false\npassword_file {pw}\n"
    with Broker(tmp_path / "broker", extra_conf=extra) as b:
        (tmp_path / "good").write_text("right\n")
        (tmp_path / "bad").write_text("wrong\n")
        base = {"host": b.host, "port": b.port, "username": "dev"}
        code, rows = doctor(conf(tmp_path, {**base, "password_file": str(tmp_path / "good")}))
        assert code == 0 and rows["broker CONNACK"].ok is True, rows
        code, rows = doctor(conf(tmp_path, {**base, "password_file": str(tmp_path / "bad")}))
        assert code == 1 and rows["broker CONNACK"].ok is False
        assert "refused as 'dev'" in rows["broker CONNACK"].detail


def test_tls_handshake_with_the_right_and_a_rogue_ca(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "tls")
    tls = TlsFiles(ca["ca_file"], ca["server_cert"], ca["server_key"])
    with Broker(tmp_path / "broker", tls=tls) as b:
        good = {
            "host": b.host,
            "port": b.port,
            "tls": {"enabled": True, "ca_file": str(ca["ca_file"])},
        }
        code, rows = doctor(conf(tmp_path, good))
        assert code == 0, rows
        assert rows["broker TLS"].ok is True and "TLS" in rows["broker TLS"].detail
        rogue = {**good, "tls": {"enabled": True, "ca_file": str(ca["rogue_ca"])}}
        code, rows = doctor(conf(tmp_path, rogue))
        assert code == 1 and rows["broker TLS"].ok is False
        assert "certificate verify failed" in rows["broker TLS"].detail


def test_local_checks(tmp_path: Path) -> None:
    assert _clock(now=0.0).ok is False and "1970" in _clock(now=0.0).detail
    blocker = tmp_path / "file"
    blocker.write_text("")
    cfg = parse_config({"agent": {"state_dir": str(blocker / "state")}})
    assert _state_dir(cfg).ok is False
    creds = tmp_path / "creds"
    creds.mkdir()
    cfg = parse_config({"mqtt": {"username": "u", "password_file": "mqtt-password"}})
    row = _credentials(cfg, {"CREDENTIALS_DIRECTORY": str(creds)})
    assert row.ok is False and "mqtt-password" in row.detail
    (creds / "mqtt-password").write_text("x")
    assert _credentials(cfg, {"CREDENTIALS_DIRECTORY": str(creds)}).ok is True


def test_trusted_keys_that_do_not_load_fail(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pub"
    bad.write_text("not a key")
    cfg = parse_config(
        {
            "agent": {"state_dir": str(tmp_path / "s")},
            "mqtt": {"port": free_port()},
            "ota": {"enabled": True, "trusted_keys": [str(bad)]},
        }
    )
    rows = {r.check: r for r in diagnose(cfg, {}, timeout_s=1.0)}
    assert rows["trusted keys"].ok is False and "bad.pub" in rows["trusted keys"].detail
