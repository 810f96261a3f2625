"""Targets 2, 3 and 6 (issue 15): CPU per prediction, latency and memory at 100 windows/s.

The agent replays a recording at the rate that makes 100 windows/s, one window per block (a
block is emitted when its last sample is due), with queue, metrics and health checks on; the
bench subscriber stamps each prediction on arrival. After a warm-up:

- latency: arrival time minus the prediction's ``ts`` (when its window's last sample was
  due), p50 and p99, against the naive loop's own (measured the same way: from the due time
  of its window, so both pay for waking up late);
- CPU: the process's user + system seconds over the measured span, per prediction that
  arrived in it, against the naive baseline paced at the same 100 windows/s;
- RSS: the agent's VmRSS at the end, against the bare interpreter process on the same model.

The soak runs the tiny model for ``--soak-minutes`` and fits a line to RSS sampled every
second after a warm-up of 75 s (RSS settles in the first minute: the first metrics report is
at 60 s); growth over 10 minutes is that slope x 10 min (a soak shorter than 10 minutes is
extrapolated, and says so).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np

from bench import models
from bench.context import Context, prediction_topic
from bench.procs import Sample, cpu_seconds, sample
from bench.report import Row
from bench.subscriber import Subscriber

RATE = 100.0  # windows per second


@dataclass
class Steady:
    predictions: int
    p50_ms: float
    p99_ms: float
    cpu_us: float
    rss_mb: float


def _window(sub: Subscriber, t0: float, t1: float) -> tuple[int, list[float]]:
    """Predictions that arrived in [t0, t1) (epoch s) and their latencies in ms."""
    d = sub.data
    lat = [(tp - ts) * 1000 for tp, ts in zip(d.t_pred, d.ts, strict=False) if t0 <= tp < t1]
    return len(lat), lat


def agent_steady(ctx: Context, name: str, warm: float, span: float) -> Steady:
    spec = ctx.spec(name)
    samples = models.samples(spec, 16)
    run = ctx.run_id("steady")
    conf = ctx.agent_config(
        run, name, samples, rate_hz=RATE * spec.hop, block_size=spec.hop, max_queue=1024
    )
    with ctx.subscriber(run, keep_ts=True) as sub, ctx.agent(conf) as proc:
        assert proc.proc is not None
        pid = proc.proc.pid
        if not sub.wait_for(1, 60):
            raise RuntimeError(f"agent {name}: no prediction in 60 s\n{proc.output()[-2000:]}")
        time.sleep(warm)
        a, t0 = sample(pid), time.time()
        time.sleep(span)
        b, t1 = sample(pid), time.time()
        n, lat = _window(sub, t0, t1)
    return Steady(
        n,
        float(np.percentile(lat, 50)),
        float(np.percentile(lat, 99)),
        (b.cpu - a.cpu) / max(n, 1) * 1e6,
        b.rss,
    )


@dataclass
class Naive:
    cpu_us: float
    p50_ms: float
    p99_ms: float


def naive_steady(ctx: Context, name: str, warm: float, span: float) -> Naive:
    """The naive baseline at the same rate: CPU µs per prediction, and its latency (from the
    due time of its window to the prediction's arrival: target 3's reference)."""
    samples = models.samples(ctx.spec(name), 16)
    run = ctx.run_id("naive-steady")
    windows = int((warm + span + 5) * RATE)
    with ctx.subscriber(run, keep_ts=True) as sub:
        proc = ctx.naive_process(name, samples, prediction_topic(run, name), windows, RATE)
        try:
            time.sleep(warm)
            c0, n0, t0 = cpu_seconds(proc.pid), sub.predictions, time.time()
            time.sleep(span)
            c1, n1, t1 = cpu_seconds(proc.pid), sub.predictions, time.time()
        finally:
            proc.kill()
            proc.wait()
        _, lat = _window(sub, t0, t1)
    p50, p99 = (float(np.percentile(lat, q)) for q in (50, 99)) if lat else (0.0, 0.0)
    return Naive((c1 - c0) / max(n1 - n0, 1) * 1e6, p50, p99)


def run(ctx: Context) -> list[Row]:
    names = ["tiny"] if ctx.smoke else ["tiny", "kws", "mnv2-96"]
    warm, span = (1.0, 2.0) if ctx.smoke else (2.0, 8.0)
    reps = min(2, ctx.repeat)
    rows: list[Row] = []
    for name in names:
        lim = ctx.limit(name)
        invoke_ms = lim.invoke_us / 1000
        agents: list[Steady] = []
        naives: list[Naive] = []
        for _ in range(reps):  # interleaved
            agents.append(agent_steady(ctx, name, warm, span))
            naives.append(naive_steady(ctx, name, warm, span))
        p50 = statistics.median(a.p50_ms for a in agents)
        p99 = statistics.median(a.p99_ms for a in agents)
        cpu = statistics.median(a.cpu_us for a in agents)
        naive = statistics.median(v.cpu_us for v in naives)
        naive_p50 = statistics.median(v.p50_ms for v in naives)
        naive_p99 = statistics.median(v.p99_ms for v in naives)
        rss = statistics.median(a.rss_mb for a in agents)
        n = sum(a.predictions for a in agents)
        rows += [
            Row(
                f"3 latency p50 {name}",
                "ms",
                p50,
                {"invoke": invoke_ms, "naive": naive_p50},
                None,
                "<= naive + 0.2 ms",
                p50 <= naive_p50 + 0.2,
                f"{n} predictions at {RATE:.0f}/s; runs: agent "
                f"{_runs([a.p50_ms for a in agents], 2)}, naive "
                f"{_runs([v.p50_ms for v in naives], 2)}",
            ),
            Row(
                f"3 latency p99 {name}",
                "ms",
                p99,
                {"invoke": invoke_ms, "naive": naive_p99},
                None,
                "<= naive + 1 ms",
                p99 <= naive_p99 + 1.0,
                f"runs: agent {_runs([a.p99_ms for a in agents], 2)}, naive "
                f"{_runs([v.p99_ms for v in naives], 2)}",
            ),
            Row(
                f"2 CPU/prediction {name}",
                "µs",
                cpu,
                {"naive": naive},
                cpu / naive,
                "<= 0.8 x naive",
                cpu <= 0.8 * naive,
                f"runs: agent {_runs([a.cpu_us for a in agents])}, "
                f"naive {_runs([v.cpu_us for v in naives])}",
            ),
            Row(
                f"6 RSS {name}",
                "MB",
                rss,
                {"bare": lim.rss_mb},
                rss - lim.rss_mb,
                "<= bare + 20 MB",
                rss <= lim.rss_mb + 20.0,
                "ratio column: the difference in MB",
            ),
        ]
    rows.append(soak(ctx))
    return rows


def soak(ctx: Context) -> Row:
    """RSS growth of the agent on the tiny model at 100 windows/s."""
    name = "tiny"
    spec = ctx.spec(name)
    minutes = ctx.soak_minutes
    # RSS settles in the first minute (first metrics report at 60 s, first WAL checkpoint)
    warm = 75.0 if minutes >= 2 else minutes * 60 / 3
    samples = models.samples(spec, 16)
    run = ctx.run_id("soak")
    conf = ctx.agent_config(run, name, samples, rate_hz=RATE * spec.hop, block_size=spec.hop)
    points: list[Sample] = []
    with ctx.subscriber(run) as sub, ctx.agent(conf) as proc:
        assert proc.proc is not None
        pid = proc.proc.pid
        if not sub.wait_for(1, 60):
            raise RuntimeError(f"soak: no prediction in 60 s\n{proc.output()[-2000:]}")
        end = time.monotonic() + minutes * 60
        while time.monotonic() < end:
            points.append(sample(pid))
            time.sleep(1.0)
        arrived = sub.predictions
        alive = proc.alive()
    t0 = points[0].t
    after = [p for p in points if p.t - t0 >= warm]
    xs = np.array([p.t - t0 for p in after]) / 60
    ys = np.array([p.rss for p in after])
    slope = float(np.polyfit(xs, ys, 1)[0]) if len(after) >= 3 else float("nan")
    growth10 = slope * 10
    seen = float(ys[-1] - ys[0]) if len(ys) else float("nan")
    how = "measured" if minutes >= 10 else f"extrapolated from a {minutes:g}-minute soak"
    return Row(
        "8 RSS growth, 10 min",
        "MB",
        growth10,
        {"start": float(ys[0]) if len(ys) else float("nan")},
        None,
        "<= 2 MB",
        bool(growth10 <= 2.0) and alive,
        f"{how}: slope {slope:+.3f} MB/min after {warm:.0f} s warm-up, "
        f"{seen:+.2f} MB seen over {xs[-1] - xs[0] if len(xs) else 0:.1f} min, "
        f"{arrived} predictions, RSS {ys.min() if len(ys) else 0:.1f}-"
        f"{ys.max() if len(ys) else 0:.1f} MB",
    )


def _runs(values: list[float], digits: int = 0) -> str:
    return "/".join(f"{v:.{digits}f}" for v in values)
