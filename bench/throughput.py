"""Targets 1, 4 and 5 (issue 15): predictions delivered per second.

For each model, interleaved and repeated (the median is reported): the bare interpreter loop
(the limit), the naive baseline, and the real agent replaying a recording as fast as it can
(``rate = "fast"``), publishing at QoS 1 to Mosquitto; for the tiny models also the agent with
``mqtt.batch.max_predictions`` (target 4: >= 50,000/s for the tiny model), and for the large
models the agent with batching on against the bare loop (target 5: >= 0.95 x). Unbatched,
every model must reach the naive loop (target 1). Rates are counted by the bench subscriber
on arrival, over the last 90% of the predictions (start-up excluded), and every run checks
that the sequence numbers that arrived are exactly 0..N-1, in order (nothing lost, nothing
duplicated).

"Batching" in the row names is ``mqtt.batch`` (predictions per MQTT message). Every agent run
has ``model.max_invoke_batch`` at its default (32): queued windows run several per invoke
where the model allows it (tiny, kws, mnv2-96; not mnv2-224, whose ~2 ms invoke makes it
``long_invoke``), in the unbatched rows too; bench/NOTES.md, "Batched invoke", has the A/B.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from bench import models
from bench.context import Context, prediction_topic, wait_or_fail
from bench.report import Row
from bench.subscriber import Subscriber, steady_rate

BATCH = 100  # predictions per MQTT message in the batched runs of the small models
BATCH_LARGE = 16  # ... and of the large ones (target 5: "with batching on")


@dataclass(frozen=True)
class Plan:
    name: str
    windows: int  # predictions counted per unbatched run
    batched: bool  # also run with batching (tiny models)
    large: bool  # also target 5: batched, against the limit (the bare loop)


FULL = (
    Plan("tiny", 40_000, True, False),
    Plan("kws", 24_000, True, False),
    Plan("mnv2-96", 2_500, False, True),
    Plan("mnv2-224", 250, False, True),
)
SMOKE = (Plan("tiny", 2_000, True, False),)


def _check(sub: Subscriber, n: int) -> str:
    """'' when exactly predictions 0..n-1 arrived in order, else what is wrong."""
    seqs = sub.data.seqs[:n]
    if seqs == list(range(n)):
        return ""
    missing = n - len(set(seqs) & set(range(n)))
    dup = len(seqs) - len(set(seqs))
    return f"{missing} missing, {dup} duplicated, in order: {seqs == sorted(seqs)}"


def agent_rate(ctx: Context, name: str, n: int, batch: int) -> tuple[float, str]:
    spec = ctx.spec(name)
    samples = models.samples(spec, 64)
    run = ctx.run_id("tp")
    conf = ctx.agent_config(
        run,
        name,
        samples,
        batch=batch,
        block_size=spec.hop * max(1, 4096 // spec.hop),
        extra={"mqtt": {"batch": {"max_predictions": batch, "max_delay_ms": 20.0}}},
    )
    with ctx.subscriber(run) as sub, ctx.agent(conf) as proc:
        wait_or_fail(sub, n, 60 + n / 500, f"agent {name}", proc.log)
        return steady_rate(sub.data.t, sub.data.counts), _check(sub, n)


def naive_rate(ctx: Context, name: str, n: int) -> tuple[float, str]:
    samples = models.samples(ctx.spec(name), 64)
    run = ctx.run_id("naive")
    with ctx.subscriber(run) as sub:
        proc = ctx.naive_process(name, samples, prediction_topic(run, name), n)
        try:
            wait_or_fail(sub, n, 60 + n / 500, f"naive {name}", None)
        finally:
            proc.kill()
            proc.wait()
        return steady_rate(sub.data.t, sub.data.counts), _check(sub, n)


def run(ctx: Context) -> list[Row]:
    rows = []
    for plan in SMOKE if ctx.smoke else FULL:
        rows += _model(ctx, plan)
    return rows


def _model(ctx: Context, plan: Plan) -> list[Row]:
    name, n = plan.name, plan.windows
    limits, naives, agents, batched = [], [], [], []
    problems: list[str] = []
    ctx.limit(name)  # the cached reference other families use
    size = BATCH if plan.batched else BATCH_LARGE
    for _ in range(ctx.repeat):
        limits.append(ctx.run_limit(name, 0.5 if ctx.smoke else 2.0)["rate"])
        rate, bad = naive_rate(ctx, name, n)
        naives.append(rate)
        problems += [f"naive: {bad}"] if bad else []
        rate, bad = agent_rate(ctx, name, n, 1)
        agents.append(rate)
        problems += [f"agent: {bad}"] if bad else []
        if plan.batched or plan.large:
            rate, bad = agent_rate(ctx, name, n * 2 if plan.batched else n, size)
            batched.append(rate)
            problems += [f"agent batched: {bad}"] if bad else []
    limit, naive, agent = (statistics.median(v) for v in (limits, naives, agents))
    refs = {"limit": limit, "naive": naive}
    spread = f"runs: agent {_runs(agents)}, naive {_runs(naives)}"
    lost = "; ".join(problems)
    rows = [
        Row(
            f"1 throughput {name}, no batching",
            "pred/s",
            agent,
            refs,
            agent / naive,
            ">= 1.0 x naive",
            agent >= naive and not problems,
            "; ".join(x for x in (spread, lost) if x),
        )
    ]
    if not batched:
        return rows
    b = statistics.median(batched)
    runs = f"runs: {_runs(batched)}"
    note = "; ".join(x for x in (runs, lost) if x)
    if plan.large:
        rows.append(
            Row(
                f"5 throughput {name}, batch {size}",
                "pred/s",
                b,
                refs,
                b / limit,
                ">= 0.95 x limit",
                b >= 0.95 * limit and not problems,
                note,
            )
        )
    elif name == "tiny":
        rows.append(
            Row(
                f"4 throughput {name}, batch {size}",
                "pred/s",
                b,
                refs,
                b / naive,
                ">= 50,000/s, none lost",
                b >= 50_000 and not problems,
                note,
            )
        )
    else:  # kws: its invoke alone caps it far below 50,000/s; shown against the limit
        rows.append(
            Row(
                f"4 throughput {name}, batch {size}",
                "pred/s",
                b,
                refs,
                b / limit,
                "(context: ratio to the limit)",
                not problems,
                note,
                info=not problems,
            )
        )
    return rows


def _runs(values: list[float]) -> str:
    return "/".join(f"{v:,.0f}" for v in values)
