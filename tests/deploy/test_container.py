"""The container image: built from the Containerfile with Podman and run against a Mosquitto.

Opt-in (it needs root, podman, runc and debootstrap, and takes minutes): ``scripts/test-container``
or ``EDGE_AGENT_CONTAINER_TEST=1 pytest tests/deploy/test_container.py``. Without that it is
skipped with that message, never silently.

No registry is needed: the test makes the base image itself (``debootstrap --variant=minbase``
bookworm with python3 + venv, ``podman import``; cached under .cache/container/) and passes it as
``--build-arg BASE``, and pip in the build installs offline from a wheelhouse this machine
downloads (tests/deploy/wheelhouse.py), served on localhost. The Containerfile is the one users
build; only BASE and pip's settings differ. The run: the agent container (non-root, config and
credentials read-only, state on a named volume) publishes predictions to a Mosquitto on this
host, ``/healthz`` answers 200 and Podman's own health check passes.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import json
import os
import platform
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agentproc import write_config
from tests.broker import Broker, free_port
from tests.deploy.wheelhouse import download
from tests.mqttclient import Collector

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("EDGE_AGENT_CACHE", ROOT / ".cache")) / "container"
RELEASE = "bookworm"
ENABLED = os.environ.get("EDGE_AGENT_CONTAINER_TEST") == "1"


def _ulimits() -> list[str]:
    """Limits stated explicitly: runc here refuses podman's defaults (this process's own open
    files; a process count well under this machine's, which runc also refuses to raise to)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 65536
    soft = min(soft, hard) if soft != resource.RLIM_INFINITY else hard
    return ["--ulimit", f"nofile={soft}:{hard}", "--ulimit", "nproc=4096:4096"]


ULIMITS = _ulimits()

pytestmark = [
    pytest.mark.slow,
    pytest.mark.container,
    pytest.mark.timeout(3600),  # the first run makes the base image and the wheelhouse
    pytest.mark.skipif(
        not ENABLED,
        reason="opt-in: scripts/test-container (root, podman, runc, debootstrap; minutes)",
    ),
]


def podman(*args: str, check: bool = True, timeout: float = 1800) -> str:
    out = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and out.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed ({out.returncode}):\n{out.stderr}")
    return out.stdout.strip()


# podman's architecture name -> the machine name wheels and uname use
MACHINES = {"amd64": "x86_64", "arm64": "aarch64"}
HOST_ARCH = {v: k for k, v in MACHINES.items()}.get(platform.machine(), platform.machine())


def _can_run(arch: str) -> bool:
    """This host runs ``arch`` natively, or through QEMU registered with binfmt_misc (F flag:
    scripts/test-arm64 sets that up)."""
    if arch == HOST_ARCH:
        return True
    handler = Path(f"/proc/sys/fs/binfmt_misc/qemu-{MACHINES[arch]}")
    if not handler.exists():
        return False
    lines = handler.read_text().splitlines()
    return "enabled" in lines and any(ln.startswith("flags:") and "F" in ln[6:] for ln in lines)


@functools.cache
def _tools_ok() -> None:
    missing = [t for t in ("podman", "runc", "debootstrap") if shutil.which(t) is None]
    assert not missing, f"scripts/test-container installs {missing}: run it as root"
    assert os.getuid() == 0, "the container test runs as root (rootful podman, debootstrap)"


def base_image(arch: str) -> str:
    """A Debian base with python3 and venv, made here (no registry): debootstrap + import."""
    tag = f"localhost/edge-agent-base:{RELEASE}-{arch}"
    if subprocess.run(["podman", "image", "exists", tag], check=False).returncode == 0:
        return tag
    CACHE.mkdir(parents=True, exist_ok=True)
    tarball = CACHE / f"base-{RELEASE}-{arch}.tar"
    if not tarball.exists():
        build = CACHE / f"base-{RELEASE}-{arch}"
        shutil.rmtree(build, ignore_errors=True)
        subprocess.run(
            ["debootstrap", f"--arch={arch}", "--variant=minbase",
             "--include=python3,python3-venv", RELEASE, str(build), "http://deb.debian.org/debian"],
            check=True, capture_output=True, timeout=3000,
        )  # fmt: skip
        subprocess.run(["tar", "-C", str(build), "-cf", f"{tarball}.tmp", "."], check=True)
        Path(f"{tarball}.tmp").rename(tarball)
        shutil.rmtree(build)
    podman("import", "--arch", arch, "--change", "CMD=/bin/bash", str(tarball), tag)
    return tag


def wheelhouse(arch: str) -> Path:
    """The device dependencies for the base (bookworm: Python 3.11, glibc 2.36), cached per
    pyproject.toml."""
    key = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:12]
    dest = CACHE / f"wheels-{MACHINES[arch]}-{key}"
    if not dest.exists():
        tmp = dest.with_suffix(".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        download(MACHINES[arch], "3.11", "2.36", tmp)
        tmp.rename(dest)
    return dest


@contextlib.contextmanager
def serve(directory: Path) -> Iterator[str]:
    """A find-links URL for ``directory`` on localhost (pip treats 127.0.0.1 as secure)."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a: object, **kw: object) -> None:
            super().__init__(*a, directory=str(directory), **kw)  # type: ignore[arg-type]

        def log_message(self, *a: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def build_image(arch: str) -> str:
    _tools_ok()
    base = base_image(arch)
    tag = f"localhost/edge-agent:test-{arch}-{uuid.uuid4().hex[:8]}"
    with serve(wheelhouse(arch)) as url:
        podman(
            "build", "--arch", arch, "--runtime", "runc", "--format", "docker",
            "--network", "host", "--build-arg", f"BASE={base}", "--build-arg", "PIP_NO_INDEX=1",
            "--build-arg", f"PIP_FIND_LINKS={url}", "-f", str(ROOT / "Containerfile"),
            "-t", tag, str(ROOT),
        )  # fmt: skip
    return tag


@pytest.fixture(scope="module", params=["amd64", "arm64"])
def image(request: pytest.FixtureRequest) -> Iterator[str]:
    arch = str(request.param)
    if not _can_run(arch):
        pytest.skip(f"{arch} cannot run here: needs qemu-user-static + binfmt (scripts/test-arm64)")
    tag = build_image(arch)
    try:
        yield tag
    finally:
        podman("rmi", "-f", tag, check=False)


def _healthz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def healthcheck(image: str) -> list[str]:
    """The image's HEALTHCHECK test (Podman shows it beside Config, Docker inside)."""
    cfg = json.loads(podman("image", "inspect", image))[0]
    check = cfg.get("Healthcheck") or cfg["Config"].get("Healthcheck")
    assert check, f"no HEALTHCHECK in {image}"
    return list(check["Test"])


def test_image_is_built_as_promised(image: str) -> None:
    info = json.loads(podman("image", "inspect", image))[0]
    arch = image.split(":test-")[1].split("-", maxsplit=1)[0]
    assert info["Architecture"] == arch
    machine = podman("run", "--rm", "--runtime", "runc", *ULIMITS, "--entrypoint", "uname",
                     image, "-m")  # fmt: skip
    assert machine == MACHINES[arch]
    conf = info["Config"]
    assert conf["User"] == "edge-agent"
    assert "/var/lib/edge-agent" in conf["Volumes"]
    check = healthcheck(image)
    assert check[0] == "CMD" and "/healthz" in check[-1], check
    assert "EDGE_AGENT__HTTP__PORT" in check[-1], check
    assert conf["Entrypoint"] == ["edge-agent"]
    # no TensorFlow, no compilers: the device dependencies only
    listing = podman("run", "--rm", "--runtime", "runc", *ULIMITS, "--entrypoint", "pip",
                     image, "list", "--format", "json")  # fmt: skip
    names = {p["name"].lower() for p in json.loads(listing)}
    assert "ai-edge-litert" in names and "edge-agent" in names
    assert not names & {"tensorflow", "tensorflow-cpu", "onnx2tf"}, names


def test_container_publishes_predictions_and_reports_health(
    image: str, tmp_path: Path, broker: Broker
) -> None:
    http_port = free_port()
    device = f"ctr-{uuid.uuid4().hex[:6]}"
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    creds = tmp_path / "credentials"
    creds.mkdir(mode=0o755)
    (creds / "mqtt-password").write_text("not-checked-by-this-broker\n")
    (creds / "mqtt-password").chmod(0o644)  # the container's user is not this one
    config = write_config(
        conf_dir / "config.toml",
        {
            "agent": {"device_id": device},
            "model": {"path": "builtin:demo"},
            "sources": [{"type": "synthetic", "name": "demo", "rate_hz": 100.0}],
            "mqtt": {
                "host": broker.host,
                "port": broker.port,
                "username": device,
                "password_file": "mqtt-password",
            },
            "http": {"enabled": True, "port": 8787},  # EDGE_AGENT__HTTP__PORT overrides
        },
    )
    config.chmod(0o644)
    name = f"edge-agent-test-{device}"
    volume = f"{name}-state"
    with Collector(broker.host, broker.port, [f"edge/{device}/#"]) as col:
        podman(
            "run", "-d", "--name", name, "--runtime", "runc", "--network", "host", *ULIMITS,
            "-e", f"EDGE_AGENT__HTTP__PORT={http_port}",  # the image's health check follows
            "-v", f"{config}:/etc/edge-agent/config.toml:ro",
            "-v", f"{creds}:/run/secrets:ro",
            "-v", f"{volume}:/var/lib/edge-agent",
            image,
        )  # fmt: skip
        try:
            msgs = col.wait_for(
                lambda m: sum("/prediction/" in r.topic for r in m) >= 5, timeout=180
            )
            preds = [r.json() for r in msgs if "/prediction/" in r.topic]
            assert [p["seq"] for p in preds[:5]] == list(range(5))
            assert any(r.topic.endswith("/status") and r.payload == b"online" for r in msgs)

            status = 0
            t0 = time.monotonic()
            while time.monotonic() - t0 < 120:
                status = _healthz(http_port)
                if status == 200:
                    break
                time.sleep(0.5)  # HTTP has no event to wait on
            assert status == 200, f"/healthz answered {status}\n{podman('logs', name)}"
            # the image's health check, run by Podman inside the container
            health = subprocess.run(
                ["podman", "healthcheck", "run", name], capture_output=True, text=True,
                check=False, timeout=60,
            )  # fmt: skip
            assert health.returncode == 0, health.stdout + health.stderr

            uid = podman("exec", name, "id", "-u")
            assert uid != "0", "the agent runs as root"
            ro = subprocess.run(
                ["podman", "exec", name, "sh", "-c", "echo x >> /etc/edge-agent/config.toml"],
                capture_output=True, check=False, timeout=60,
            )  # fmt: skip
            assert ro.returncode != 0, "the config is writable from the container"
            spool = podman("exec", name, "ls", "/var/lib/edge-agent")
            assert spool, "nothing in the state volume"
        finally:
            logs = podman("logs", name, check=False)
            podman("stop", "-t", "30", name, check=False)
            code = podman("inspect", "--format", "{{.State.ExitCode}}", name, check=False)
            podman("rm", "-f", name, check=False)
            podman("volume", "rm", "-f", volume, check=False)
    assert code == "0", f"the agent exited {code} on SIGTERM:\n{logs}"
    offline = [r for r in col.messages if r.topic.endswith("/status")]
    assert offline[-1].payload == b"offline", logs
