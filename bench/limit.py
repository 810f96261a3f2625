"""The limit: a bare interpreter loop (set input, invoke, read output), as its own process.

Same runtime (ai-edge-litert), same model bytes, same thread count as the agent; nothing
else in the process but Python, NumPy and the runtime, so its RSS is the floor the agent's
memory is compared with, and its time to "loaded and invoked once" the floor of start-up.

    .venv/bin/python -m bench.limit MODEL [--seconds 2] [--threads 1] [--startup]

Prints ``ready`` as soon as the model has run once, then (unless ``--startup``) loops for
``--seconds`` and prints one JSON line: invokes/s, median µs per invoke, RSS.
"""

from __future__ import annotations

import argparse
import json
import time

T_START = time.perf_counter()

import numpy as np  # noqa: E402  (timed from the first line)
from ai_edge_litert.interpreter import Interpreter  # noqa: E402


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description="bare interpreter loop")
    ap.add_argument("model")
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--startup", action="store_true", help="exit once the model has run once")
    args = ap.parse_args()
    with open(args.model, "rb") as f:
        content = f.read()
    interp = Interpreter(model_content=content, num_threads=args.threads)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    out = interp.get_output_details()[0]
    rng = np.random.default_rng(0)
    info = np.iinfo(inp["dtype"]) if np.dtype(inp["dtype"]).kind in "iu" else None
    if info is not None:
        x = rng.integers(info.min, info.max, inp["shape"], dtype=inp["dtype"])
    else:
        x = rng.standard_normal(inp["shape"]).astype(inp["dtype"])
    set_tensor, invoke, get_tensor = interp.set_tensor, interp.invoke, interp.get_tensor
    i_idx, o_idx = inp["index"], out["index"]
    set_tensor(i_idx, x)
    invoke()
    get_tensor(o_idx)
    loaded = time.perf_counter() - T_START
    print("ready", flush=True)
    if args.startup:
        print(json.dumps({"import_load_s": loaded}), flush=True)
        return
    # warm up, then time batches of invokes so the median is of per-invoke costs
    deadline = time.perf_counter() + min(0.5, args.seconds / 4)
    while time.perf_counter() < deadline:
        set_tensor(i_idx, x)
        invoke()
        get_tensor(o_idx)
    per_batch = 1
    t0 = time.perf_counter()
    set_tensor(i_idx, x)
    invoke()
    get_tensor(o_idx)
    one = time.perf_counter() - t0
    per_batch = max(1, int(0.01 / max(one, 1e-7)))  # batches of ~10 ms
    batches: list[float] = []
    n = 0
    t_begin = time.perf_counter()
    end = t_begin + args.seconds
    while True:
        t0 = time.perf_counter()
        for _ in range(per_batch):
            set_tensor(i_idx, x)
            invoke()
            get_tensor(o_idx)
        t1 = time.perf_counter()
        batches.append((t1 - t0) / per_batch)
        n += per_batch
        if t1 >= end:
            break
    elapsed = time.perf_counter() - t_begin
    print(
        json.dumps(
            {
                "rate": n / elapsed,
                "invoke_us_p50": float(np.median(batches)) * 1e6,
                "invokes": n,
                "rss_mb": _rss_mb(),
                "import_load_s": loaded,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
