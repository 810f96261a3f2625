"""deploy/install.sh and deploy/uninstall.sh, run for real against a scratch root (DESTDIR).

The scripts run under /bin/sh (dash on Debian), as on a device. Enabling the unit uses
`systemctl --root`, which works without a running systemd. One slow test builds a real venv
from a small wheel made here (offline: PIP_NO_INDEX), including an upgrade and a failed one.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import load_config, read_password
from tests.wheelmaker import build_wheel

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


def make_wheel(
    directory: Path, version: str, name: str = "edge-agent", requires: tuple[str, ...] = ()
) -> Path:
    """A minimal wheel: package ``agent`` and the ``edge-agent`` console script (for
    ``name="edge-agent"``), or an empty distribution called ``name``."""
    if name != "edge-agent":
        return build_wheel(directory, name, version, {f"{name.replace('-', '_')}.py": ""})
    main = (
        f'__version__ = "{version}"\n\n\ndef main() -> None:\n    print("edge-agent {version}")\n'
    )
    return build_wheel(
        directory,
        name,
        version,
        {"agent/__init__.py": main},
        {"edge-agent": "agent:main"},
        requires,
    )


def version_of(exe: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the venv's own files
    return subprocess.run([exe], check=True, capture_output=True, text=True, env=env).stdout.strip()


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


# --------------------------------------------------------------------------- interpreter choice
# install.sh asks pip whether every device dependency has a wheel for the system python3 (the
# wheels here: a find-links folder, offline). tests/deploy/test_interpreter_choice.py asks the
# real index for other machines.

FAKE_UV = """#!/bin/sh
# uv as install.sh calls it: python install VERSION / python find VERSION. The "managed"
# CPython is this machine's own Python, linked into UV_PYTHON_INSTALL_DIR.
mkdir -p "$UV_PYTHON_INSTALL_DIR"
echo "uv $*" >>"$UV_PYTHON_INSTALL_DIR/../uv.log"
dir="$UV_PYTHON_INSTALL_DIR/cpython-3.12.99-linux-fake"
case "$1 $2" in
"python install") mkdir -p "$dir/bin" && ln -sf {python} "$dir/bin/python3.12" ;;
"python find") echo "$dir/bin/python3.12" ;;
*) echo "fake uv: unexpected $*" >&2; exit 2 ;;
esac
"""


def fake_uv(tmp_path: Path) -> Path:
    uv = tmp_path / "uv"
    base = getattr(sys, "_base_executable", sys.executable)
    uv.write_text(FAKE_UV.replace("{python}", base))
    uv.chmod(0o755)
    return uv


@pytest.mark.slow
def test_system_python_is_chosen_when_pip_finds_its_wheels(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, "1.0", name="edge-test-runtime")
    agent = make_wheel(tmp_path, "1.0.0", requires=("edge-test-runtime>=1",))
    offline = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels), "PIP_NO_CACHE_DIR": "1"}
    root = tmp_path / "root"
    out = install(root, "--no-systemctl", "--device-id", "a", "--wheel", str(agent), env=offline)
    assert "Python: the system python3" in out
    assert "pip finds a wheel for every device dependency" in out, out
    assert not (root / "opt/edge-agent/python").exists()
    assert version_of(root / "opt/edge-agent/venv/bin/edge-agent") == "edge-agent 1.0.0"


@pytest.mark.slow
def test_managed_python_when_the_system_python_has_no_wheels(tmp_path: Path) -> None:
    agent = make_wheel(tmp_path, "1.0.0", requires=("edge-test-runtime>=1",))
    empty = tmp_path / "wheels"
    empty.mkdir()
    offline = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(empty), "PIP_NO_CACHE_DIR": "1"}
    root = tmp_path / "root"
    args = ["--no-systemctl", "--device-id", "a", "--wheel", str(agent)]
    err = sh(DEPLOY / "install.sh", "--destdir", str(root), *args, "--uv", str(fake_uv(tmp_path)),
             env=offline)  # fmt: skip
    # The probe found no wheel: install.sh says so and goes to the managed 3.12 ...
    assert "pip finds no wheels for the system python3" in err.stdout, err.stdout + err.stderr
    assert "edge-test-runtime" in err.stdout
    assert "using a managed CPython 3.12 (uv) in /opt/edge-agent/python" in err.stdout
    assert "the system Python is not touched" in err.stdout
    uv_log = (root / "opt/edge-agent/uv.log").read_text().splitlines()
    assert uv_log == ["uv python install 3.12", "uv python find 3.12"]
    # ... where the same dependency is missing too: a clean failure, nothing switched.
    assert err.returncode != 0
    assert "/opt/edge-agent/venv is unchanged" in err.stderr
    assert not (root / "opt/edge-agent/venv").exists()


@pytest.mark.slow
def test_managed_python_builds_the_service_venv(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, "1.0", name="edge-test-runtime")
    agent = make_wheel(tmp_path, "1.0.0", requires=("edge-test-runtime>=1",))
    offline = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels), "PIP_NO_CACHE_DIR": "1"}
    root = tmp_path / "root"
    out = install(root, "--no-systemctl", "--device-id", "a", "--wheel", str(agent),
                  "--managed-python", "--uv", str(fake_uv(tmp_path)), env=offline)  # fmt: skip
    assert "Python: --managed-python: using a managed CPython 3.12" in out
    venv = root / "opt/edge-agent/venv"
    cfg = (venv / "pyvenv.cfg").read_text()
    home = next(ln.split("=", 1)[1].strip() for ln in cfg.splitlines() if ln.startswith("home"))
    assert home.startswith(str(root / "opt/edge-agent/python/cpython-3.12")), cfg
    assert version_of(venv / "bin/edge-agent") == "edge-agent 1.0.0"


def test_python_override_and_explain_options_are_checked(tmp_path: Path) -> None:
    err = run_failing(DEPLOY / "install.sh", "--destdir", str(tmp_path), "--python", "/nope/py")
    assert "/nope/py not found" in err
    err = run_failing(DEPLOY / "install.sh", "--explain-python", "--as", "aarch64,3.13")
    assert "give MACHINE,PYTHON,GLIBC" in err


@pytest.mark.slow
def test_unreachable_index_is_not_taken_for_missing_wheels(tmp_path: Path) -> None:
    """pip says "no matching distribution" also when it never reached the index: install.sh
    stops and says so instead of going to the managed Python for a wrong reason."""
    agent = make_wheel(tmp_path, "1.0.0", requires=("edge-test-runtime>=1",))
    unreachable = {
        "PIP_INDEX_URL": "http://127.0.0.1:9/simple",  # discard port: nothing listens
        "PIP_FIND_LINKS": "",
        "PIP_EXTRA_INDEX_URL": "",
        "PIP_RETRIES": "1",  # pip names the connection error when it retries (default 5)
        "PIP_TIMEOUT": "2",
    }
    root = tmp_path / "root"
    args = ["--no-systemctl", "--device-id", "a", "--wheel", str(agent)]
    err = run_failing(DEPLOY / "install.sh", "--destdir", str(root), *args, env=unreachable)
    assert "pip could not reach the package index" in err, err
    assert not (root / "opt/edge-agent/python").exists()
    assert not (root / "opt/edge-agent/venv").exists()
