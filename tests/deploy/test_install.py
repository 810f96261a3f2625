"""deploy/install.sh and deploy/uninstall.sh, run for real against a scratch root (DESTDIR).

The scripts run under /bin/sh (dash on Debian), as on a device. Enabling the unit uses
`systemctl --root`, which works without a running systemd. One slow test builds a real venv
from a small wheel made here (offline: PIP_NO_INDEX), including an upgrade and a failed one.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from agent.config import load_config, read_password

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
WANTS = "etc/systemd/system/multi-user.target.wants/edge-agent.service"


def sh(
    script: str | Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/sh", str(script), *args],
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


def run(script: str | Path, *args: str, env: dict[str, str] | None = None) -> str:
    out = sh(script, *args, env=env)
    assert out.returncode == 0, f"{script} {args} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def run_failing(script: str | Path, *args: str, env: dict[str, str] | None = None) -> str:
    out = sh(script, *args, env=env)
    assert out.returncode != 0, f"{script} {args} should have failed:\n{out.stdout}"
    return out.stderr


def install(root: Path, *args: str, env: dict[str, str] | None = None) -> str:
    return run(DEPLOY / "install.sh", "--destdir", str(root), *args, env=env)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_install_produces_the_promised_files(tmp_path: Path) -> None:
    root = tmp_path / "root"
    out = install(root, "--no-venv", "--device-id", "pi-kitchen-01", "--mqtt-host", "mq.lan")
    assert "not creating the system user" in out

    unit = root / "etc/systemd/system/edge-agent.service"
    assert unit.read_bytes() == (DEPLOY / "edge-agent.service").read_bytes()
    assert mode(unit) == 0o644
    example = root / "etc/systemd/system/edge-agent.service.d/sensors.conf.example"
    assert mode(example) == 0o644
    wants = root / WANTS
    assert wants.is_symlink() and os.readlink(wants) == "/etc/systemd/system/edge-agent.service"

    assert mode(root / "etc/edge-agent") == 0o755
    assert mode(root / "etc/edge-agent/config.toml") == 0o640
    assert mode(root / "etc/edge-agent/credentials") == 0o700
    password = root / "etc/edge-agent/credentials/mqtt-password"
    assert mode(password) == 0o600 and password.read_bytes() == b""
    assert mode(root / "etc/edge-agent/tls") == 0o755
    assert mode(root / "opt/edge-agent/README.md") == 0o644
    assert mode(root / "opt/edge-agent/uninstall.sh") == 0o755
    assert (root / "opt/edge-agent/releases").is_dir()
    assert not (root / "opt/edge-agent/venv").exists()  # --no-venv


def test_written_config_is_valid_and_matches_the_unit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The config validates, and its password_file is the credential the unit loads."""
    root = tmp_path / "root"
    install(root, "--no-venv", "--no-systemctl", "--device-id", "dev-7", "--mqtt-host", "mq.lan")
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    cfg = load_config(root / "etc/edge-agent/config.toml", environ={})
    assert cfg.agent.device_id == "dev-7"
    assert cfg.agent.state_dir == Path("/var/lib/edge-agent")
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.username) == ("mq.lan", 8883, "dev-7")
    assert cfg.mqtt.tls.enabled
    assert cfg.mqtt.tls.ca_file == Path("/etc/edge-agent/tls/edge-ca.crt")

    # systemd: LoadCredential=mqtt-password:... puts the file in $CREDENTIALS_DIRECTORY.
    creds = tmp_path / "run-credentials"
    creds.mkdir()
    (creds / "mqtt-password").write_text("s3cret\n")
    assert read_password(cfg.mqtt, environ={"CREDENTIALS_DIRECTORY": str(creds)}) == "s3cret"


def test_reinstall_never_clobbers_operator_files(tmp_path: Path) -> None:
    root = tmp_path / "root"
    install(root, "--no-venv", "--device-id", "a")
    config = root / "etc/edge-agent/config.toml"
    password = root / "etc/edge-agent/credentials/mqtt-password"
    config.write_text("# mine\n")
    password.write_text("operator-set\n")

    out = install(root, "--no-venv", "--device-id", "b")
    assert "keeping the existing /etc/edge-agent/config.toml" in out
    assert config.read_text() == "# mine\n"
    assert password.read_text() == "operator-set\n"

    # Explicit files do replace: that is what the options are for.
    new_pw = tmp_path / "pw"
    new_pw.write_text("rotated\n")
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    install(root, "--no-venv", "--mqtt-password-file", str(new_pw), "--ca-file", str(ca))
    assert password.read_text() == "rotated\n" and mode(password) == 0o600
    installed_ca = root / "etc/edge-agent/tls/edge-ca.crt"
    assert installed_ca.read_text() == ca.read_text() and mode(installed_ca) == 0o644
    assert config.read_text() == "# mine\n"


def test_destdir_and_skip_systemctl_from_the_environment(tmp_path: Path) -> None:
    root = tmp_path / "root"
    out = run(
        DEPLOY / "install.sh",
        "--device-id",
        "a",
        env={"DESTDIR": str(root), "SKIP_SYSTEMCTL": "1", "SKIP_VENV": "1"},
    )
    assert "not running systemctl" in out
    assert (root / "etc/systemd/system/edge-agent.service").is_file()
    assert not (root / WANTS).is_symlink()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--device-id", "a/b"], "device id 'a/b'"),
        (["--device-id", "x" * 65], "longer than 64"),
        (["--mqtt-password-file", "/nonexistent/pw"], "not found"),
        (["--wheel", "/nonexistent/x.whl"], "does not exist"),
        (["--frobnicate"], "unknown option"),
    ],
)
def test_bad_options_fail_before_writing_anything(
    tmp_path: Path, args: list[str], message: str
) -> None:
    root = tmp_path / "root"
    err = run_failing(DEPLOY / "install.sh", "--destdir", str(root), *args)
    assert message in err
    assert not (root / "etc").exists() and not (root / "opt").exists()


def test_uninstall_keeps_operator_files_unless_purged(tmp_path: Path) -> None:
    root = tmp_path / "root"
    install(root, "--no-venv", "--device-id", "a")
    (root / "var/lib/edge-agent").mkdir(parents=True)
    (root / "var/lib/edge-agent/spool.db").write_bytes(b"unsent")
    dropins = root / "etc/systemd/system/edge-agent.service.d"
    (dropins / "sensors.conf").write_text("[Service]\nPrivateDevices=no\n")
    uninstall = root / "opt/edge-agent/uninstall.sh"  # the installed copy, as an operator runs it
    copy = tmp_path / "uninstall.sh"  # (it deletes itself, so run a copy)
    copy.write_bytes(uninstall.read_bytes())

    out = run(copy, "--destdir", str(root))
    assert not (root / "etc/systemd/system/edge-agent.service").exists()
    assert not (root / WANTS).is_symlink()
    assert not (root / "opt/edge-agent").exists()
    assert (root / "etc/edge-agent/config.toml").is_file()
    assert (root / "etc/edge-agent/credentials/mqtt-password").is_file()
    assert (root / "var/lib/edge-agent/spool.db").read_bytes() == b"unsent"
    assert sorted(p.name for p in dropins.iterdir()) == ["sensors.conf"]
    assert "kept /etc/edge-agent" in out

    run(copy, "--destdir", str(root))  # again: nothing left to do, still fine

    run(copy, "--destdir", str(root), "--purge")
    assert not (root / "etc/edge-agent").exists()
    assert not (root / "var/lib/edge-agent").exists()
    assert not dropins.exists()


# ----------------------------------------------------------------------------- a real venv


def make_wheel(directory: Path, version: str) -> Path:
    """A minimal edge-agent wheel: package ``agent`` and the ``edge-agent`` console script."""
    dist = f"edge_agent-{version}.dist-info"
    files = {
        "agent/__init__.py": f'__version__ = "{version}"\n\n\ndef main() -> None:\n'
        f'    print("edge-agent {version}")\n',
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: edge-agent\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
        f"{dist}/entry_points.txt": "[console_scripts]\nedge-agent = agent:main\n",
    }
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{name},sha256={digest.decode()},{len(text.encode())}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = "\n".join(record) + "\n"
    path = directory / f"edge_agent-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return path


def version_of(exe: Path) -> str:
    return subprocess.run([exe], check=True, capture_output=True, text=True).stdout.strip()


@pytest.mark.slow
def test_venv_install_upgrade_and_failed_upgrade(tmp_path: Path) -> None:
    root = tmp_path / "root"
    offline = {"PIP_NO_INDEX": "1", "PIP_NO_DEPS": "1", "PIP_NO_CACHE_DIR": "1"}
    common = ["--no-systemctl", "--python", sys.executable, "--device-id", "a"]
    link = root / "opt/edge-agent/venv"
    releases = root / "opt/edge-agent/releases"

    install(root, *common, "--wheel", str(make_wheel(tmp_path, "1.0.0")), env=offline)
    assert link.is_symlink()
    first = os.readlink(link)
    assert first.startswith("releases/")  # relative: the tree can be moved as a whole
    exe = link / "bin/edge-agent"
    assert os.access(exe, os.X_OK)
    assert version_of(exe) == "edge-agent 1.0.0"

    # A broken upgrade leaves the installed release in place and cleans up after itself.
    broken = tmp_path / "edge_agent-2.0.0-py3-none-any.whl"
    broken.write_bytes(b"not a zip")
    err = run_failing(
        DEPLOY / "install.sh", "--destdir", str(root), *common, "--wheel", str(broken), env=offline
    )
    assert "/opt/edge-agent/venv is unchanged" in err
    assert os.readlink(link) == first
    assert [p.name for p in releases.iterdir()] == [first.removeprefix("releases/")]

    # A good upgrade switches the link, keeps the previous release, drops older ones.
    (releases / "20000101T000000Z").mkdir()
    install(root, *common, "--wheel", str(make_wheel(tmp_path, "2.0.0")), env=offline)
    second = os.readlink(link)
    assert second != first
    assert sorted(p.name for p in releases.iterdir()) == sorted(
        [first.removeprefix("releases/"), second.removeprefix("releases/")]
    )
    assert version_of(exe) == "edge-agent 2.0.0"
