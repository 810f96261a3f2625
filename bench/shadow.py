"""Issue 16: what a shadow model and drift monitoring cost the active pipeline.

In-process (the real ``Pipeline``, a replay source paced at 100 windows/s, one window per
block, a recording publisher that stamps each prediction when it is handed over), interleaved
runs of the same span:

- alone: the active model only;
- shadow: the same plus a shadow (a second interpreter of the same model: the candidate's
  cost is the active one's) on its own nice'd thread;
- drift: the active model with drift monitoring on (a reference computed from the replay).

Rows: the active path's hand-over latency p50 / p99 (window's last sample in -> prediction
handed to the publisher) and windows/s with a shadow, against alone (target: within 5 %);
CPU per window of the process (all threads) with a shadow and with drift, for context.
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass

import numpy as np

from agent.config import parse_config
from agent.delivery.publisher import PredictionRecord
from agent.ingest.sources import SourceContext
from agent.metrics import Metrics
from agent.model.active import ActiveModel
from agent.model.runtime import load_model
from agent.pipeline.threads import Pipeline
from agent.release.reference import compute_reference
from agent.wire.topics import Topics
from bench import models
from bench.context import Context
from bench.report import Row

RATE = 100.0


class _Recorder:
    def __init__(self) -> None:
        self.lat: list[tuple[float, float]] = []  # (handed over at, latency s)
        self.lock = threading.Lock()

    def submit_many(self, records: list[PredictionRecord], *, inline: bool = False) -> None:
        now = time.perf_counter()
        with self.lock:
            self.lat += [(now, now - r.t_in) for r in records]


@dataclass
class Run:
    p50_us: float
    p99_us: float
    rate: float
    cpu_us: float
    shadow_cpu_us: float = 0.0
    """CPU time of the shadow thread per window the active model ran (shadow runs)."""
    shadow_blocks: float = 0.0
    """Times the shadow thread blocked (voluntary context switches: waits, the GIL) per
    window: its wake-ups."""


def _switches(native_id: int | None) -> int:
    try:
        with open(f"/proc/self/task/{native_id}/status") as f:
            for line in f:
                if line.startswith("voluntary_ctxt_switches"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _thread_cpu(ident: int | None) -> float:
    try:
        return time.clock_gettime(time.pthread_getcpuclockid(ident or 0))
    except (OSError, AttributeError):
        return 0.0


def _once(ctx: Context, name: str, mode: str, warm: float, span: float) -> Run:
    spec = ctx.spec(name)
    path = models.samples(spec, 16)
    content = ctx.model(name).read_bytes()
    cfg = parse_config(
        {
            "sources": [
                {
                    "type": "replay",
                    "name": "s",
                    "path": str(path),
                    "channels": spec.channels,
                    "rate": "fixed",
                    "rate_hz": RATE * spec.hop,
                    "block_size": spec.hop,
                    "loop": True,
                }
            ],
            "window": {"length": spec.length, "hop": spec.hop},
            "postprocess": {"type": "classification"},
        }
    )
    model = load_model(content)
    ref = None
    if mode == "drift":
        x = np.load(path)
        n = (len(x) - spec.length) // spec.hop + 1
        w = np.stack([x[i * spec.hop : i * spec.hop + spec.length] for i in range(n)])
        ref = compute_reference(w, spec.channels, source="bench")
    metrics = Metrics()
    rec = _Recorder()
    pipe = Pipeline(
        cfg,
        ActiveModel(model, name, "1", reference=ref),
        rec,  # type: ignore[arg-type]
        metrics,
        Topics("bench", "shadow"),
        SourceContext(metrics),
    )
    if mode == "shadow":
        pipe.set_shadow(ActiveModel(load_model(content), name, "2"))
    pipe.start()
    time.sleep(warm)
    th = pipe.shadow._thread if pipe.shadow is not None else None
    s0 = _switches(th.native_id) if th else 0
    sc0 = _thread_cpu(th.ident) if th else 0.0
    t0, c0 = time.perf_counter(), time.process_time()
    time.sleep(span)
    t1, c1 = time.perf_counter(), time.process_time()
    s1 = _switches(th.native_id) if th else 0
    sc1 = _thread_cpu(th.ident) if th else 0.0
    pipe.stop(5.0)
    if pipe.shadow is not None:
        pipe.shadow.stop()
    with rec.lock:
        lat = [v for t, v in rec.lat if t0 <= t < t1]
    n = max(len(lat), 1)
    return Run(
        float(np.percentile(lat, 50)) * 1e6,
        float(np.percentile(lat, 99)) * 1e6,
        len(lat) / (t1 - t0),
        (c1 - c0) / n * 1e6,
        (sc1 - sc0) / n * 1e6,
        (s1 - s0) / n,
    )


def run(ctx: Context) -> list[Row]:
    names = ["tiny"] if ctx.smoke else ["tiny", "kws"]
    warm, span = (0.5, 2.0) if ctx.smoke else (1.0, 8.0)
    rows: list[Row] = []
    for name in names:
        runs: dict[str, list[Run]] = {"alone": [], "shadow": [], "drift": []}
        for _ in range(ctx.repeat):  # interleaved
            for mode, got in runs.items():
                got.append(_once(ctx, name, mode, warm, span))

        def med(mode: str, field: str, runs: dict[str, list[Run]] = runs) -> float:
            return float(statistics.median(getattr(r, field) for r in runs[mode]))

        alone50, shadow50 = med("alone", "p50_us"), med("shadow", "p50_us")
        alone99, shadow99 = med("alone", "p99_us"), med("shadow", "p99_us")
        alone_rate, shadow_rate = med("alone", "rate"), med("shadow", "rate")
        singles = "/".join(f"{r.p50_us:.0f}" for r in runs["shadow"])
        rows += [
            Row(
                f"16 shadow: active latency p50 {name}",
                "µs",
                shadow50,
                {"alone": alone50},
                shadow50 / alone50,
                "<= 1.05 x alone",
                shadow50 <= 1.05 * alone50,
                f"sample in -> handed to the publisher, {RATE:.0f} windows/s; runs {singles}",
            ),
            Row(
                f"16 shadow: active latency p99 {name}",
                "µs",
                shadow99,
                {"alone": alone99},
                shadow99 / alone99,
                "",
                True,
                info=True,
            ),
            Row(
                f"16 shadow: active windows/s {name}",
                "1/s",
                shadow_rate,
                {"alone": alone_rate},
                shadow_rate / alone_rate,
                ">= 0.95 x alone",
                shadow_rate >= 0.95 * alone_rate,
            ),
            Row(
                f"16 shadow: CPU/window {name}",
                "µs",
                med("shadow", "cpu_us"),
                {"alone": med("alone", "cpu_us")},
                med("shadow", "cpu_us") / med("alone", "cpu_us"),
                "",
                True,
                "the whole process: the shadow's own invoke included",
                info=True,
            ),
            Row(
                f"16 shadow: shadow thread CPU/window {name}",
                "µs",
                med("shadow", "shadow_cpu_us"),
                {},
                None,
                "",
                True,
                f"its wake-ups (voluntary context switches) per window: "
                f"{med('shadow', 'shadow_blocks'):.2f}",
                info=True,
            ),
            Row(
                f"16 drift: CPU/window {name}",
                "µs",
                med("drift", "cpu_us"),
                {"alone": med("alone", "cpu_us")},
                med("drift", "cpu_us") / med("alone", "cpu_us"),
                "",
                True,
                f"latency p50 {med('drift', 'p50_us'):.0f} µs (alone {alone50:.0f})",
                info=True,
            ),
        ]
    return rows
