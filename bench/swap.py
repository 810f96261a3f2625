"""Target 8: a hot swap (OTA activation) at 200 windows/s.

The real ``edge-agent run`` process with OTA enabled runs the tiny model on a replay source
paced at 200 windows/s (one window per block). Three packages (``tiny-b`` 2.0.0, ``tiny`` 3.0.0,
``tiny-b`` 4.0.0; unsigned: ``ota.allow_unsigned`` for the bench) are dropped one after the
other into the agent's ``incoming/`` folder: the agent's own OTA path verifies each,
smoke-tests its golden samples in a fresh interpreter, activates it between two invocations
and watches its health, while the subscriber records every prediction.

Checked over the whole run: sequence numbers 0..N-1 each exactly once; the windows' ``ts``
advance by exactly one hop (no sample dropped or repeated); the version changes exactly at
each activation, in order. Measured per activation: the longest gap between the arrivals of
consecutive predictions from the moment the package is dropped until 1 s after the first
prediction of the new version, against 2 x the normal interval + 5 ms; the row shows the
median of the three (each is listed in the note).
"""

from __future__ import annotations

import itertools
import time

import numpy as np

from bench import models
from bench.context import Context
from bench.report import Row

RATE = 200.0


def _package(ctx: Context, model: str, version: str) -> bytes:
    from agent.release.manifest import PostprocessSpec
    from converters.packaging import PackageSpec, package_model

    content = ctx.model(model).read_bytes()
    spec = PackageSpec(
        name="tiny",
        version=version,
        mode="int8",
        postprocess=PostprocessSpec(type="classification"),
    )
    return package_model(spec, content, key=None).to_bytes()


SWAPS = (("tiny-b", "2.0.0"), ("tiny", "3.0.0"), ("tiny-b", "4.0.0"))


def run(ctx: Context) -> list[Row]:
    name = "tiny"
    spec = ctx.spec(name)
    ctx.model(name)
    run_id = ctx.run_id("swap")
    incoming = ctx.workdir / run_id / "incoming"
    packages = [(version, _package(ctx, model, version)) for model, version in SWAPS]
    settle = 1.0 if ctx.smoke else 2.0
    conf = ctx.agent_config(
        run_id,
        name,
        models.samples(spec, 16),
        rate_hz=RATE * spec.hop,
        block_size=spec.hop,
        max_queue=1024,
        extra={
            "ota": {
                "enabled": True,
                "allow_unsigned": True,
                "incoming_dir": str(incoming),
                "health_window_s": 0.5,
            }
        },
    )
    drops: list[tuple[str, float]] = []
    with ctx.subscriber(run_id, keep_ts=True) as sub, ctx.agent(conf) as proc:
        if not sub.wait_for(1, 60):
            raise RuntimeError(f"swap: no prediction in 60 s\n{proc.output()[-2000:]}")
        incoming.mkdir(parents=True, exist_ok=True)
        for version, data in packages:
            time.sleep(settle)
            tmp = incoming / f".tiny-{version}.partial"
            tmp.write_bytes(data)
            drops.append((version, time.time()))
            tmp.rename(incoming / f"tiny-{version}.eapkg")  # an atomic move in
            deadline = time.monotonic() + 60
            while version not in sub.data.versions[-50:]:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"swap: {version} never served\n{proc.output()[-3000:]}")
                time.sleep(0.05)  # the subscriber thread fills the list: polled with a deadline
        time.sleep(settle)
        d = sub.data
        seqs, ts, tp, vers = list(d.seqs), list(d.ts), list(d.t_pred), list(d.versions)
    return [_verdict(seqs, ts, tp, vers, drops, 1 / RATE)]


def _verdict(
    seqs: list[int],
    ts: list[float],
    tp: list[float],
    vers: list[str],
    drops: list[tuple[str, float]],
    interval: float,
) -> Row:
    n = len(seqs)
    problems = []
    if seqs != list(range(n)):
        problems.append("sequence numbers not 0..N-1 once each")
    steps = np.diff(np.array(ts))
    bad_steps = int(np.sum(np.abs(steps - interval) > interval / 2))
    if bad_steps:
        problems.append(f"{bad_steps} window step(s) not one hop (samples dropped/repeated)")
    changes = [b for a, b in itertools.pairwise(vers) if a != b]
    want = [v for v, _ in drops]
    if changes != want or vers[0] != "1.0.0":
        problems.append(f"versions went {vers[0]} -> {' -> '.join(changes)}, not -> {want}")
    arrivals = np.array(tp)
    longest: list[float] = []
    took: list[float] = []
    where: list[float] = []  # when the longest gap ended, relative to the first new prediction
    for version, t_drop in drops:
        first_new = vers.index(version) if version in vers else n - 1
        t_new = tp[first_new]
        idx = np.flatnonzero((arrivals >= t_drop) & (arrivals <= t_new + 1.0))
        lo = max(1, int(idx[0])) if idx.size else 1
        hi = int(idx[-1]) + 1 if idx.size else lo + 1
        gaps = arrivals[lo:hi] - arrivals[lo - 1 : hi - 1]
        k = int(np.argmax(gaps))
        longest.append(float(gaps[k]) * 1000)
        where.append((arrivals[lo + k] - t_new) * 1000)
        took.append(t_new - t_drop)
    before = np.diff(arrivals[arrivals < drops[0][1]])
    p99_normal = float(np.percentile(before, 99)) * 1000 if before.size else float("nan")
    limit = 2 * interval * 1000 + 5
    median = float(np.median(longest))
    return Row(
        "8 hot swap at 200/s",
        "ms gap",
        median,
        {"interval": interval * 1000, "p99 gap before": p99_normal},
        None,
        f"<= 2 x interval + 5 ms = {limit:.0f} ms, 0 lost",
        median <= limit and not problems,
        f"{len(drops)} OTA activations (drop -> verify, smoke test, activate), median of their "
        f"longest gaps; each: {'/'.join(f'{g:.1f}' for g in longest)} ms, ending "
        f"{'/'.join(f'{w:+.0f}' for w in where)} ms from the first new prediction, which came "
        f"{'/'.join(f'{t:.2f}' for t in took)} s after the drop; {n} predictions, "
        + ("; ".join(problems) if problems else "0 dropped, 0 duplicated"),
    )
