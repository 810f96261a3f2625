"""Where the CPU goes, per thread and per stage, at 100 windows/s (target 2's setting).

    .venv/bin/python -m bench.threadcpu [--models tiny,kws,mnv2-96] [--span 8]

For the agent and the naive loop, each on the bench's steady setup (``bench.steady``): CPU
time per prediction and voluntary context switches (wake-ups) per prediction of every
thread, from the scheduler's own accounting (``/proc/PID/task/*/schedstat`` and ``status``);
the agent's threads are named at the OS level by ``bench/threadcpu_site/sitecustomize.py``.
A second agent run times the data path's stages in the threads that run them
(``thread_time``, inclusive; the list is ``STAGES`` in that file). The figures move with
the machine; compare the agent and the naive loop of the same run, not runs.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench.accounting import agent_runner, naive_runner
from bench.context import standalone
from bench.procs import REPO

SITE = REPO / "bench" / "threadcpu_site"


def per_thread(pid: int) -> dict[str, tuple[int, int]]:
    """{thread name: (CPU ns, voluntary context switches)} so far, summed by name."""
    out: dict[str, tuple[int, int]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            ns = int((task / "schedstat").read_text().split()[0])
            status = (task / "status").read_text().splitlines()
            vol = int(next(ln for ln in status if ln.startswith("voluntary_ctxt")).split()[1])
        except (OSError, StopIteration, ValueError):
            continue
        a, b = out.get(name, (0, 0))
        out[name] = (a + ns, b + vol)
    return out


def threads(label: str, span: float, pid: int, arrived: Callable[[], int]) -> None:
    """Print CPU and wake-ups per prediction of every thread of ``pid`` over ``span`` s."""
    time.sleep(2.0)
    a, n0 = per_thread(pid), arrived()
    time.sleep(span)
    b, n1 = per_thread(pid), arrived()
    n = max(n1 - n0, 1)
    total = sum(v[0] - a.get(k, (0, 0))[0] for k, v in b.items())
    print(f"{label}: {n} predictions, {total / 1e3 / n:.0f} µs CPU each")
    for k, (ns, vol) in sorted(b.items(), key=lambda kv: -kv[1][0]):
        d = (ns - a.get(k, (0, 0))[0]) / 1e3 / n
        w = (vol - a.get(k, (0, 0))[1]) / n
        if d >= 0.5 or w >= 0.01:
            print(f"  {k:<16} {d:8.1f} µs  {w:5.2f} wake-ups")


def stages(label: str, span: float, path: Path, pid: int, arrived: Callable[[], int]) -> None:
    """Print the CPU per prediction of each timed stage (from the agent's ``path``)."""
    time.sleep(3.0)
    a, n0 = json.loads(path.read_text()), arrived()
    time.sleep(span)
    time.sleep(0.6)  # the file is rewritten twice a second
    b, n1 = json.loads(path.read_text()), arrived()
    n = max(n1 - n0, 1)
    print(f"{label}, stages (inclusive, in the thread that runs them):")
    cpu, calls = b["cpu_ns"], b["calls"]
    for k in sorted(cpu, key=lambda k: -(cpu[k] - a["cpu_ns"].get(k, 0))):
        d = (cpu[k] - a["cpu_ns"].get(k, 0)) / 1e3 / n
        c = (calls[k] - a["calls"].get(k, 0)) / n
        print(f"  {k:<28} {d:8.1f} µs  {c:5.2f} calls")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", default="tiny")
    ap.add_argument("--span", type=float, default=8.0)
    args = ap.parse_args()
    names = args.models.split(",")
    path = f"{SITE}{os.pathsep}{os.environ.get('PYTHONPATH', REPO)}"
    with standalone("threadcpu-", names) as ctx:
        for name in names:
            agent_runner(ctx, name, False)(
                {"PYTHONPATH": path}, functools.partial(threads, f"agent {name}", args.span)
            )
            naive_runner(ctx, name, False)(
                {}, functools.partial(threads, f"naive {name}", args.span)
            )
            out = ctx.workdir / f"stages-{name}.json"
            agent_runner(ctx, name, False)(
                {"PYTHONPATH": path, "BENCH_STAGE_CPU": str(out)},
                functools.partial(stages, f"agent {name}", args.span, out),
            )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
