"""A real Mosquitto broker for tests, started on a free port (never an assumed 1883).

``Broker`` can be stopped and started again on the same port, to test reconnects and
store-and-forward. TLS listeners are configured from files a test makes itself.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

MOSQUITTO_CANDIDATES = ("mosquitto", "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def mosquitto_binary() -> str:
    for cand in MOSQUITTO_CANDIDATES:
        found = shutil.which(cand)
        if found:
            return found
    raise RuntimeError(
        "mosquitto is not installed: the test command (scripts/test) installs Debian's "
        "'mosquitto' package; run it, or apt-get install mosquitto"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.02)  # polling a port that has no event to await
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


@dataclass
class TlsFiles:
    ca_file: Path
    cert_file: Path
    key_file: Path
    require_certificate: bool = False


@dataclass
class Broker:
    workdir: Path
    port: int = field(default_factory=free_port)
    tls: TlsFiles | None = None
    extra_conf: str = ""
    persistent: bool = False
    proc: subprocess.Popen[bytes] | None = None
    plain_port: int = field(default_factory=free_port)
    """With ``tls``: a second, plain listener for the test's own observer."""

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def _write_conf(self) -> Path:
        lines = [
            "per_listener_settings false",
            # started as root (CI), mosquitto would switch to the 'mosquitto' user, which cannot
            # write its log and persistence file into the test's directory
            f"user {pwd.getpwuid(os.getuid()).pw_name}",
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            f"persistence {'true' if self.persistent else 'false'}",
            f"persistence_location {self.workdir}/",
            "max_inflight_messages 0",
            "max_queued_messages 0",
            f"log_dest file {self.workdir / 'mosquitto.log'}",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        if self.tls is not None:
            lines[1:1] = [f"listener {self.plain_port} 127.0.0.1"]
            lines += [
                f"cafile {self.tls.ca_file}",
                f"certfile {self.tls.cert_file}",
                f"keyfile {self.tls.key_file}",
                f"require_certificate {'true' if self.tls.require_certificate else 'false'}",
            ]
        conf = self.workdir / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n" + self.extra_conf)
        return conf

    def start(self) -> None:
        assert self.proc is None, "broker already running"
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self._write_conf()
        self.proc = subprocess.Popen(
            [mosquitto_binary(), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            wait_for_port(self.port)
        except TimeoutError:
            self.stop()
            log = self.workdir / "mosquitto.log"
            raise RuntimeError(
                f"mosquitto did not start: {log.read_text() if log.exists() else ''}"
            ) from None

    def stop(self, graceful: bool = False) -> None:
        """SIGKILL the broker (or SIGTERM, so a persistent one saves its sessions)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGTERM if graceful else signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None

    def __enter__(self) -> Broker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running_broker(workdir: Path, tls: TlsFiles | None = None) -> Iterator[Broker]:
    b = Broker(workdir, tls=tls)
    b.start()
    try:
        yield b
    finally:
        b.stop()
