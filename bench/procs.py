"""Processes the benchmarks start and watch: CPU seconds and RSS from /proc, the machine.

Every measured program (the agent, the naive baseline, the bare interpreter loop) runs as its
own process, so its CPU time and memory are its own and nothing of the orchestrator's.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"
PYTHON = sys.executable
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU seconds the live threads of ``pid`` have run so far.

    From the scheduler's own accounting (``schedstat``, nanoseconds), not the utime/stime of
    ``/proc/PID/stat``: those are sampled at the 100 Hz tick, and a workload paced at
    100 windows/s wakes in step with that tick and gets charged whole ticks.
    """
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (OSError, IndexError, ValueError):
                continue  # the thread just ended
    except FileNotFoundError:
        return 0.0
    if total:
        return total / 1e9
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MiB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Sample:
    t: float
    cpu: float
    rss: float


def sample(pid: int) -> Sample:
    return Sample(time.monotonic(), cpu_seconds(pid), rss_mb(pid))


def run_json(args: list[str], timeout: float) -> dict[str, Any]:
    """Run ``python -m ...`` style ``args``; its last stdout line is a JSON result."""
    proc = subprocess.run(
        [PYTHON, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    line = proc.stdout.strip().splitlines()[-1]
    result: dict[str, Any] = json.loads(line)
    return result


def machine() -> str:
    """One line: CPU model, cores, Python, OS."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}"
    )


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for dist in ("ai-edge-litert", "paho-mqtt", "numpy", "tensorflow-cpu"):
        try:
            out.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            continue
    try:
        mosq = subprocess.run(
            ["/usr/sbin/mosquitto", "-h"], capture_output=True, text=True, check=False
        ).stdout.splitlines()[0]
        out.append(mosq.strip())
    except (OSError, IndexError):
        pass
    return ", ".join(out)
