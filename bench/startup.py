"""Target 6: start-up, process start to first prediction published.

The agent (``edge-agent run`` on the tiny model, replay source, broker up) is timed from
``Popen`` to the arrival of its first prediction at the bench subscriber; the reference is
the bare process (``bench.limit --startup``: import NumPy and the runtime, load the same
model, invoke once) timed from ``Popen`` to its ``ready`` line. Interleaved, median of the
repeats.

Both are timed as installed: the repository's modules are compiled to bytecode first
(``compile_sources``), as ``pip install`` does. Without it, a checkout run with
``PYTHONDONTWRITEBYTECODE=1`` (or with stale ``__pycache__`` after an edit) compiles the
agent's ~70 modules from source on every start: 60+ ms that no installed device pays.
"""

from __future__ import annotations

import compileall
import statistics
import subprocess
import time

from bench import models
from bench.context import Context
from bench.procs import PYTHON, REPO
from bench.report import Row


def compile_sources() -> None:
    """Bytecode for the agent and the bench, as an install has it (``__pycache__``)."""
    for package in ("agent", "bench"):
        compileall.compile_dir(REPO / package, quiet=1)


def bare_seconds(ctx: Context, name: str) -> float:
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [PYTHON, "-m", "bench.limit", str(ctx.model(name)), "--startup"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    took = time.monotonic() - t0
    proc.wait(30)
    if line != "ready":
        raise RuntimeError(f"bare start-up: {line!r}")
    return took


def agent_seconds(ctx: Context, name: str) -> float:
    spec = ctx.spec(name)
    run = ctx.run_id("startup")
    conf = ctx.agent_config(run, name, models.samples(spec, 16))
    with ctx.subscriber(run) as sub:
        t0 = time.monotonic()
        with ctx.agent(conf) as proc:
            if not sub.wait_for(1, 30):
                raise RuntimeError(f"agent start-up: no prediction\n{proc.output()[-2000:]}")
            took = time.monotonic() - t0
    return took


def run(ctx: Context) -> list[Row]:
    name = "tiny"
    ctx.model(name)
    compile_sources()
    reps = 2 if ctx.smoke else max(5, ctx.repeat)
    bare, agent = [], []
    for _ in range(reps):
        bare.append(bare_seconds(ctx, name))
        agent.append(agent_seconds(ctx, name))
    a, b = statistics.median(agent), statistics.median(bare)
    return [
        Row(
            "7 start-up tiny",
            "s",
            a,
            {"bare": b},
            a / b,
            "<= 1.5 s and <= 2 x bare",
            a <= 1.5 and a <= 2 * b,
            "process start to first prediction at the subscriber; runs: agent "
            + "/".join(f"{v:.2f}" for v in agent)
            + ", bare "
            + "/".join(f"{v:.2f}" for v in bare),
        )
    ]
