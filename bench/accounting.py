"""Per-prediction accounting of the agent against the naive loop, in counts that do not
depend on the machine's load: Python calls, C calls, syscalls, thread wake-ups (context
switches) and SQLite statements per prediction that arrived at the subscriber.

    .venv/bin/python -m bench.accounting [--models tiny,kws] [--span 6] [--modes steady,fast]

``steady`` runs both programs at 100 windows/s (the "2 CPU/prediction" family); ``fast``
runs them flat out (family 1, no batching). Each program runs three times per mode: plain
(context switches: the sum over its threads of ``voluntary_ctxt_switches`` and
``nonvoluntary_ctxt_switches`` in ``/proc/PID/task/*/status``), under ``strace -f -c -p``
(syscalls, attached for the span only) and with ``bench/countcalls/sitecustomize.py``
counting every Python and C call (a profile hook in every thread; the SQLite statements are
its ``execute``/``executemany``/``executescript`` C calls). Hooked and traced runs are slow,
so only counts are read from them, never times. Prints one table, then the most called
functions of each program per prediction.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench import models
from bench.context import Context, prediction_topic, standalone
from bench.procs import OUT, REPO

COUNT_DIR = REPO / "bench" / "countcalls"
SQL = ("C execute", "C executemany", "C executescript", "C Connection.execute")


def ctx_switches(pid: int) -> dict[str, tuple[int, int]]:
    """{thread name: (voluntary, nonvoluntary)} context switches so far, summed by name.

    Voluntary ones are the thread's own waits (the wake-ups that count); nonvoluntary ones
    are preemptions, which grow with the machine's load.
    """
    out: dict[str, tuple[int, int]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            v = n = 0
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches"):
                    v = int(line.split()[1])
                elif line.startswith("nonvoluntary_ctxt_switches"):
                    n = int(line.split()[1])
        except (OSError, ValueError):
            continue
        a, b = out.get(name, (0, 0))
        out[name] = (a + v, b + n)
    return out


def strace_counts(pid: int, span: float) -> tuple[dict[str, int], float]:
    """Syscalls of every thread of ``pid`` during ``span`` seconds: {name: calls}."""
    out = Path(tempfile.mkstemp(prefix="strace-", dir=OUT)[1])
    st = subprocess.Popen(
        ["strace", "-f", "-c", "-o", str(out), "-p", str(pid)], stderr=subprocess.DEVNULL
    )
    time.sleep(0.5)  # attached
    t0 = time.monotonic()
    time.sleep(span)
    st.send_signal(2)
    st.wait(30)
    calls: dict[str, int] = {}
    for line in out.read_text().splitlines():
        m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)$", line)
        if m and m.group(2) != "total":
            calls[m.group(2)] = int(m.group(1))
    out.unlink()
    return calls, time.monotonic() - t0


@dataclass
class Counts:
    predictions: int = 0
    ctxsw: float = 0.0
    """Voluntary context switches (wake-ups) per prediction, all threads."""
    preempted: float = 0.0
    """Nonvoluntary context switches per prediction (load-dependent: context only)."""
    wakeups: dict[str, float] = field(default_factory=dict)
    """Voluntary context switches per prediction, per thread name."""
    threads: dict[str, float] = field(default_factory=dict)
    """Python calls per prediction, per thread name."""
    syscalls: dict[str, float] = field(default_factory=dict)
    py: float = 0.0
    c: float = 0.0
    top: dict[str, float] = field(default_factory=dict)

    @property
    def sql(self) -> float:
        return sum(self.top.get(k, 0.0) for k in SQL)


Measure = Callable[[int, Callable[[], int]], None]


def measure(run: Callable[[dict[str, str], Measure], None], span: float) -> Counts:
    """Run the program three ways (plain, strace, call counting) and count per prediction."""
    got = Counts()

    def plain(pid: int, arrived: Callable[[], int]) -> None:
        time.sleep(2.0)
        c0, n0 = ctx_switches(pid), arrived()
        time.sleep(span)
        c1, n1 = ctx_switches(pid), arrived()
        n = max(n1 - n0, 1)
        got.predictions = n1 - n0
        per = {k: (v[0] - c0.get(k, (0, 0))[0], v[1] - c0.get(k, (0, 0))[1]) for k, v in c1.items()}
        got.ctxsw = sum(v for v, _ in per.values()) / n
        got.preempted = sum(p for _, p in per.values()) / n
        got.wakeups = {k: v / n for k, (v, _) in sorted(per.items(), key=lambda kv: -kv[1][0])}

    def traced(pid: int, arrived: Callable[[], int]) -> None:
        time.sleep(2.0)
        n0 = arrived()
        calls, _ = strace_counts(pid, span)
        n = max(arrived() - n0, 1)  # arrivals lag the strace window by < 1 ms at 100/s
        got.syscalls = {k: v / n for k, v in sorted(calls.items(), key=lambda kv: -kv[1])}

    run({}, plain)
    run({}, traced)
    fd, name = tempfile.mkstemp(prefix="calls-", dir=OUT)
    os.close(fd)
    calls_file = Path(name)

    def counted(pid: int, arrived: Callable[[], int]) -> None:
        def snap() -> dict[str, object]:
            for _ in range(50):
                try:
                    return dict(json.loads(calls_file.read_text()))
                except (OSError, ValueError):
                    time.sleep(0.1)
            raise RuntimeError("no call counts")

        time.sleep(3.0)
        a, n0 = snap(), arrived()
        time.sleep(span)
        b, n1 = snap(), arrived()
        n = max(n1 - n0, 1)
        got.py = (int(b["py"]) - int(a["py"])) / n  # type: ignore[call-overload]
        got.c = (int(b["c"]) - int(a["c"])) / n  # type: ignore[call-overload]
        ta = dict(a["top"])  # type: ignore[call-overload]
        got.top = {k: (v - ta.get(k, 0)) / n for k, v in b["top"]}  # type: ignore[attr-defined]
        tha = dict(a["threads"])  # type: ignore[call-overload]
        got.threads = {
            k: (v - tha.get(k, 0)) / n
            for k, v in dict(b["threads"]).items()  # type: ignore[call-overload]
        }

    env = {
        "PYTHONPATH": f"{COUNT_DIR}{os.pathsep}{os.environ.get('PYTHONPATH', REPO)}",
        "BENCH_COUNT_CALLS": str(calls_file),
    }
    run(env, counted)
    calls_file.unlink(missing_ok=True)
    return got


def agent_runner(ctx: Context, name: str, fast: bool) -> Callable[[dict[str, str], Measure], None]:
    spec = ctx.spec(name)
    samples = models.samples(spec, 16)

    def run(env: dict[str, str], m: Measure) -> None:
        rid = ctx.run_id("acct")
        if fast:
            conf = ctx.agent_config(rid, name, samples)
        else:
            conf = ctx.agent_config(
                rid, name, samples, rate_hz=100.0 * spec.hop, block_size=spec.hop, max_queue=1024
            )
        from tests.agentproc import AgentProcess

        with ctx.subscriber(rid) as sub:
            proc = AgentProcess(conf, conf.parent / "agent.log", env=env).start()
            try:
                assert proc.proc is not None
                if not sub.wait_for(1, 60):
                    raise RuntimeError(proc.output()[-2000:])
                m(proc.proc.pid, lambda: sub.predictions)
            finally:
                proc.kill()

    return run


def naive_runner(ctx: Context, name: str, fast: bool) -> Callable[[dict[str, str], Measure], None]:
    samples = models.samples(ctx.spec(name), 16)

    def run(env: dict[str, str], m: Measure) -> None:
        rid = ctx.run_id("acct-naive")
        old = dict(os.environ)
        os.environ.update(env)
        try:
            with ctx.subscriber(rid) as sub:
                proc = ctx.naive_process(
                    name,
                    samples,
                    prediction_topic(rid, name),
                    10_000_000 if fast else 100_000,
                    0.0 if fast else 100.0,
                )
                try:
                    m(proc.pid, lambda: sub.predictions)
                finally:
                    proc.kill()
                    proc.wait()
        finally:
            os.environ.clear()
            os.environ.update(old)

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", default="tiny")
    ap.add_argument("--modes", default="steady,fast")
    ap.add_argument("--span", type=float, default=6.0)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if shutil.which("strace") is None:
        sys.exit("bench.accounting needs strace (apt-get install strace)")
    names = args.models.split(",")
    results: dict[str, Counts] = {}
    with standalone("acct-", names) as ctx:
        for name in names:
            for mode in args.modes.split(","):
                fast = mode == "fast"
                for prog, runner in (("agent", agent_runner), ("naive", naive_runner)):
                    key = f"{prog} {name} {mode}"
                    print(f"accounting: {key} ...", file=sys.stderr, flush=True)
                    results[key] = measure(runner(ctx, name, fast), args.span)
    print(
        f"{'per prediction':<24} {'preds':>6} {'py calls':>9} {'C calls':>8} {'SQL':>5} "
        f"{'syscalls':>9} {'wake-ups':>8} {'preempt':>7}"
    )
    for key, r in results.items():
        print(
            f"{key:<24} {r.predictions:>6} {r.py:>9.1f} {r.c:>8.1f} {r.sql:>5.2f} "
            f"{sum(r.syscalls.values()):>9.2f} {r.ctxsw:>8.2f} {r.preempted:>7.2f}"
        )
    for key, r in results.items():
        sc = ", ".join(f"{k} {v:.2f}" for k, v in list(r.syscalls.items())[:8])
        print(f"\n{key}: syscalls {sc}")
        wk = ", ".join(f"{k} {v:.2f}" for k, v in r.wakeups.items() if v >= 0.01)
        print(f"  wake-ups by thread: {wk}")
        th = ", ".join(f"{k} {v:.1f}" for k, v in sorted(r.threads.items(), key=lambda kv: -kv[1]))
        print(f"  Python calls by thread: {th}")
        for k, v in sorted(r.top.items(), key=lambda kv: -kv[1])[: args.top]:
            print(f"  {v:8.2f}  {k}")
    if args.json:
        args.json.write_text(json.dumps({k: r.__dict__ for k, r in results.items()}, indent=1))


if __name__ == "__main__":
    main()
