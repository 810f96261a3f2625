"""``python -m bench.perwindow``: the pipeline's Python work per window, invoke left out.

``Pipeline._process`` (the inference thread's loop: reshape, run, postprocess, record) on the
demo model with classification, with ``run_native`` replaced by a constant so only the
Python work around ``invoke()`` is timed, then the publisher's ``PayloadEncoder`` on the
records it made. Best of ``--repeat`` passes over 5,000 windows. Compare two trees by running
it with each on ``PYTHONPATH`` (the machine is shared: alternate the runs, take the minima).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from agent.config import parse_config
from agent.delivery.publisher import PayloadEncoder, PredictionRecord
from agent.ingest.samples import SampleBlock
from agent.ingest.sources import SourceContext
from agent.ingest.window import StreamWindowers
from agent.metrics import Metrics
from agent.model.active import ActiveModel
from agent.model.loading import demo_model_bytes
from agent.model.runtime import load_model
from agent.pipeline.threads import Pipeline
from agent.wire.topics import Topics


class _Keep:
    def __init__(self) -> None:
        self.records: list[PredictionRecord] = []

    def submit_many(self, records: list[PredictionRecord], *, inline: bool = False) -> None:
        self.records += records


def measure(repeat: int, windows: int = 5000) -> tuple[float, float]:
    """(seconds of Python work per window, seconds of encoding per prediction), minima."""
    cfg = parse_config(
        {
            "sources": [{"type": "synthetic", "name": "s", "channels": 3}],
            "window": {"length": 32, "hop": 16},
            "postprocess": {"type": "classification", "labels": ["a", "b"]},
        }
    )
    metrics = Metrics()
    model = load_model(demo_model_bytes())
    outs = model.run_native(np.zeros(model.feed.shape, model.feed.dtype))

    def constant(x: Any) -> list[Any]:
        return outs

    model.run_native = constant  # type: ignore[method-assign]
    keep = _Keep()
    pipe = Pipeline(
        cfg,
        ActiveModel(model, "demo", "1"),
        keep,  # type: ignore[arg-type]
        metrics,
        Topics("edge", "d"),
        SourceContext(metrics),
    )
    st = pipe._stages
    x = np.random.default_rng(0).normal(0, 1, (16 * windows + 16, 3)).astype(np.float32)
    block = SampleBlock("s", np.arange(len(x), dtype=np.float64), x, time.perf_counter())
    wins = StreamWindowers(32, 16, 3).push(block, st.encoder)
    encode = PayloadEncoder("d")
    best_p = best_e = float("inf")
    for _ in range(repeat):
        keep.records = []
        t0 = time.perf_counter()
        pipe._process(st, wins, "s", False)
        t1 = time.perf_counter()
        for i, rec in enumerate(keep.records):
            encode(i, rec)
        t2 = time.perf_counter()
        best_p, best_e = min(best_p, t1 - t0), min(best_e, t2 - t1)
    return best_p / len(wins), best_e / len(wins)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.perwindow", description=__doc__)
    ap.add_argument("--repeat", type=int, default=40)
    args = ap.parse_args(argv)
    per_window, per_encode = measure(args.repeat)
    print(
        f"process {per_window * 1e6:.3f} us/window (invoke excluded), "
        f"encode {per_encode * 1e6:.3f} us/prediction"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
