"""Run ``edge-fleet serve`` as a real process against a test broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.agentproc import REPO
from tests.broker import Broker, free_port


class DashboardProcess:
    def __init__(self, broker: Broker, workdir: Path, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / "dashboard.log"
        self.argv = [
            sys.executable,
            "-m",
            "agent.fleet.cli",
            "serve",
            "--host",
            broker.host,
            "--port",
            str(broker.port),
            "--http-port",
            str(self.port),
            "--state-dir",
            str(workdir / "rollouts"),
            *extra,
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> DashboardProcess:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 60
        while True:
            try:
                if self.get_json("/healthz")["broker_connected"]:
                    return self
            except (OSError, urllib.error.URLError):
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dashboard did not come up:\n{self.log.read_text()}")
            time.sleep(0.1)  # polling a process that is starting: nothing to await

    def get_json(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            return json.loads(r.read())

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
