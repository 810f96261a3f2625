"""Run the real agent (``python -m agent run``) as a subprocess for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str | Path):
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    """Write a nested dict as TOML (tables, sub-tables and arrays of tables)."""
    lines: list[str] = []

    def table(prefix: str, d: dict[str, Any], header: str | None) -> None:
        if header:
            lines.append(header)
        subs = []
        for k, v in d.items():
            if isinstance(v, dict) or (isinstance(v, list) and v and isinstance(v[0], dict)):
                subs.append((k, v))
            else:
                lines.append(f"{k} = {toml_value(v)}")
        for k, v in subs:
            name = f"{prefix}.{k}" if prefix else k
            if isinstance(v, dict):
                table(name, v, f"[{name}]")
            else:
                for item in v:
                    table(name, item, f"[[{name}]]")

    table("", cfg, None)
    path.write_text("\n".join(lines) + "\n")
    return path


class AgentProcess:
    """``edge-agent run --config PATH`` in a subprocess; stderr goes to ``log``."""

    def __init__(self, config: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log = log
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> AgentProcess:
        self._fh = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(self.config)],
            stdout=self._fh,
            stderr=self._fh,
            cwd=REPO,
            env=self.env,
        )
        return self

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def terminate(self, timeout: float = 10.0) -> tuple[int, float]:
        """SIGTERM; returns (exit code, seconds it took)."""
        assert self.proc is not None
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._fh.close()
        return code, time.monotonic() - t0

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)
        self._fh.close()

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout)
        self._fh.close()
        return code

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def __enter__(self) -> AgentProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.alive():
            self.kill()
