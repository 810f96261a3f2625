"""deploy/edge-agent.service: systemd-analyze verify passes, and its security exposure is low.

systemd-analyze must be installed (Debian package ``systemd``): without it these tests fail,
they do not skip. Nothing is started; verify and ``security --offline`` read unit files only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
UNIT = DEPLOY / "edge-agent.service"
SENSORS = DEPLOY / "edge-agent.service.d" / "sensors.conf.example"
EXEC = "/opt/edge-agent/venv/bin/edge-agent"

CEILING = 2.0  # ours; systemd calls everything below 5.0 "OK"

# Every check the unit is allowed to fail, each with its reason in deploy/README.md.
EXPECTED_OPEN = {
    "PrivateNetwork=",
    "RestrictAddressFamilies=~AF_(INET|INET6)",
    "RestrictAddressFamilies=~AF_UNIX",
    "IPAddressDeny=",
    "PrivateUsers=",
    "ProcSubset=",
    "RootDirectory=/RootImage=",
    "DeviceAllow=",  # ProtectClock= itself allows reading the RTC
}


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.fail(
            "systemd-analyze is not installed: the test command must `apt-get install systemd` "
            "(nothing is started; the unit file is only analysed)"
        )
    return found


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, SYSTEMD_COLORS="0", SYSTEMD_PAGER="", SYSTEMD_LOG_COLOR="0")
    return subprocess.run(
        [systemd_analyze(), *args], check=False, capture_output=True, text=True, env=env, timeout=60
    )


def render(tmp_path: Path, *, sensors: bool = False) -> Path:
    """A copy of the unit whose ExecStart exists (verify checks it), optionally with the drop-in."""
    stub = tmp_path / "root" / EXEC.lstrip("/")
    stub.parent.mkdir(parents=True)
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    text = UNIT.read_text()
    assert text.count(f"ExecStart={EXEC} ") == 1
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    unit = unit_dir / UNIT.name
    unit.write_text(text.replace(f"ExecStart={EXEC} ", f"ExecStart={stub} "))
    if sensors:
        dropins = unit_dir / f"{UNIT.name}.d"
        dropins.mkdir()
        shutil.copy(SENSORS, dropins / "sensors.conf")
    return unit


def exposure(unit: Path) -> float:
    out = analyze("security", "--offline=true", "--no-pager", str(unit))
    assert out.returncode == 0, out.stderr
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", out.stdout)
    assert m, f"no overall exposure line in:\n{out.stdout[-2000:]}"
    return float(m.group(1))


def directives(path: Path) -> dict[str, list[str]]:
    """KEY -> values of the active (uncommented) lines of a unit file."""
    out: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key, []).append(value)
    return out


@pytest.mark.parametrize("sensors", [False, True], ids=["unit", "with-sensors-dropin"])
def test_systemd_analyze_verify_is_clean(tmp_path: Path, sensors: bool) -> None:
    unit = render(tmp_path, sensors=sensors)
    out = analyze("verify", "--man=no", str(unit))
    assert out.returncode == 0 and out.stderr.strip() == "", out.stderr  # warnings count too


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a typo'd key is reported."""
    unit = render(tmp_path)
    unit.write_text(unit.read_text().replace("WatchdogSec=", "WatchdogSecs="))
    out = analyze("verify", "--man=no", str(unit))
    assert "Unknown key 'WatchdogSecs'" in out.stderr


def test_security_exposure_is_low_and_documented(tmp_path: Path) -> None:
    figure = exposure(render(tmp_path))
    assert figure < 5.0, f"exposure {figure} is not in systemd's OK band"
    assert figure <= CEILING, f"exposure rose to {figure} (ceiling {CEILING})"
    readme = (DEPLOY / "README.md").read_text()
    documented = re.search(r"rates the unit \*\*(\d+\.\d+) \(OK\)\*\*", readme)
    assert documented and float(documented.group(1)) == figure, "update deploy/README.md"
    assert f"rates this unit {figure} (OK)" in UNIT.read_text(), "update the unit's comment"


def test_security_exposure_with_sensor_access(tmp_path: Path) -> None:
    figure = exposure(render(tmp_path, sensors=True))
    assert figure < 5.0
    readme = (DEPLOY / "README.md").read_text()
    assert f"With the sensors drop-in active it is {figure}." in readme, "update deploy/README.md"


def test_only_the_documented_checks_are_open(tmp_path: Path) -> None:
    out = analyze("security", "--offline=true", "--json=short", str(render(tmp_path)))
    assert out.returncode == 0, out.stderr
    checks = json.loads(out.stdout)
    open_checks = {c["name"] for c in checks if c["exposure"] not in (None, "0.0")}
    assert open_checks == EXPECTED_OPEN, (
        f"newly open: {sorted(open_checks - EXPECTED_OPEN)}; "
        f"now closed (tighten EXPECTED_OPEN): {sorted(EXPECTED_OPEN - open_checks)}"
    )


def test_unit_promises() -> None:
    d = directives(UNIT)
    one = {k: v[0] for k, v in d.items() if len(v) == 1}
    assert one["Type"] == "notify"
    assert one["NotifyAccess"] == "main"
    assert one["WatchdogSec"] == "30s"
    assert one["Restart"] == "on-failure"
    assert one["ExecReload"] == """/bin/sh -c 'kill -HUP "$MAINPID"'"""
    assert one["ExecStart"] == f"{EXEC} run --config /etc/edge-agent/config.toml"
    assert one["User"] == one["Group"] == "edge-agent"
    assert one["StateDirectory"] == one["ConfigurationDirectory"] == "edge-agent"
    assert d["LoadCredential"] == ["mqtt-password:/etc/edge-agent/credentials/mqtt-password"]
    for key in ("ProtectSystem", "NoNewPrivileges", "PrivateTmp", "ProtectHome", "MemoryMax"):
        assert key in one, key
    assert one["ProtectSystem"] == "strict"
    assert one["CapabilityBoundingSet"] == ""
    env = " ".join(d["Environment"]).split()
    assert "PYTHONFAULTHANDLER=1" in env  # tracebacks on the watchdog's SIGABRT


def test_sensors_dropin_is_inert_until_renamed() -> None:
    assert not SENSORS.name.endswith(".conf"), "systemd would load it"
    d = directives(SENSORS)
    assert d["PrivateDevices"] == ["no"] and d["DevicePolicy"] == ["closed"]
    assert "char-i2c rw" in d["DeviceAllow"]
    assert d["SupplementaryGroups"] == ["i2c dialout"]
