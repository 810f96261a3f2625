"""The TUF client's cost on the device (issue 13): what the daemon pays, what a check pays.

Two figures, each against a reference measured in the same run:

- *daemon*: the RSS and import time the agent's OTA code adds to a process that already has
  the agent's own imports (``agent.app.service``), measured with and without
  ``tuf.ngclient``. The agent never imports it (the check runs in a child): the agent's
  figure is the OTA import without TUF; the reference is what importing ngclient in the
  daemon would have added on top.
- *check*: one refresh of a fresh repository (``python -m agent.ota.tufcheck``, root +
  timestamp + snapshot + targets over ``file://``), wall time and the child's peak RSS; the
  reference is a bare ``python -c pass`` process start.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.context import Context
from bench.procs import PYTHON, REPO
from bench.report import Row

_IMPORT = """
import resource, sys, time
import agent.app.service
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
import agent.ota.updater
{extra}
print(time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - r0)
"""


def _import_cost(extra: str) -> tuple[float, float]:
    out = subprocess.run(
        [PYTHON, "-c", _IMPORT.format(extra=extra)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return float(out[0]), float(out[1]) / 1024  # seconds, MiB


def _child(args: list[str], stdin: str = "") -> tuple[float, float]:
    """Wall time and peak RSS (MiB, from ``wait4``: this child only) of one process."""
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [PYTHON, *args],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdin is not None
    proc.stdin.write(stdin.encode())
    proc.stdin.close()
    _, status, usage = os.wait4(proc.pid, 0)
    took = time.monotonic() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{args} exited {proc.returncode}")
    return took, usage.ru_maxrss / 1024


def _repo(tmp: Path) -> dict[str, object]:
    from converters.store import LocalStore
    from converters.tufrepo import TufRepository

    store = LocalStore(tmp / "store")
    TufRepository(store, tmp / "keys").init(3, 2)
    dev = tmp / "dev"
    dev.mkdir()
    return {
        "root": tmp / "store" / "tuf" / "1.root.json",
        "req": {
            "metadata_dir": str(dev),
            "metadata_url": store.url("tuf/root.json").rsplit("/", 1)[0],
            "targets_url": store.base_url,
            "timeout_s": 30.0,
            "model": "m",
            "channel": "stable",
            "device": "bench",
            "groups": [],
        },
    }


def run(ctx: Context) -> list[Row]:
    reps = 2 if ctx.smoke else max(5, ctx.repeat)
    plain, with_tuf = [], []
    for _ in range(reps):
        plain.append(_import_cost(""))
        with_tuf.append(_import_cost("import tuf.ngclient"))
    ms = statistics.median(s for s, _ in plain) * 1000
    mib = statistics.median(m for _, m in plain)
    tuf_ms = statistics.median(s for s, _ in with_tuf) * 1000 - ms
    tuf_mib = statistics.median(m for _, m in with_tuf) - mib
    checks, bare = [], []
    peak = 0.0
    for _ in range(reps):
        with tempfile.TemporaryDirectory() as d:
            r = _repo(Path(d))
            shutil.copy(str(r["root"]), Path(d) / "dev" / "root.json")
            took, peak_now = _child(["-m", "agent.ota.tufcheck"], json.dumps(r["req"]))
            checks.append(took)
            peak = max(peak, peak_now)
        bare.append(_child(["-c", "pass"])[0])
    c, b = statistics.median(checks), statistics.median(bare)
    return [
        Row(
            "13 TUF: daemon import",
            "MiB",
            0.0,
            {"ngclient_mib": tuf_mib, "ngclient_ms": tuf_ms, "ota_mib": mib, "ota_ms": ms},
            None,
            "the daemon never imports tuf (0 MiB)",
            True,
            f"agent.ota.updater adds {mib:.1f} MiB / {ms:.0f} ms without TUF; importing "
            f"tuf.ngclient in the daemon would add {tuf_mib:.1f} MiB / {tuf_ms:.0f} ms more",
        ),
        Row(
            "13 TUF: one check (child)",
            "s",
            c,
            {"bare python": b},
            c / b if b else None,
            "info",
            True,
            f"refresh of root/timestamp/snapshot/targets in a child process; child peak RSS "
            f"{peak:.0f} MiB, gone when it exits",
            info=True,
        ),
    ]
