"""Micro-benchmark of the NumPy stages: window + preprocess + postprocess, µs per window.

No model runs: each window gets a canned int8-style 2-class output (multiples of 1/256, as the
runtime returns dequantised int8 outputs). Blocks are built before timing (sources build them).
A naive per-sample loop (deque, np.array per window, (x-mean)/std, argmax, dict) is timed on
the same stream for comparison.

    .venv/bin/python bench/stages.py [--length 32 --hop 16 --channels 3 --windows 20000]
"""

from __future__ import annotations

import argparse
import collections
import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from agent.config import ClassificationPost, PreprocessSection
from agent.ingest.preprocess import Preprocessor, check_model_input
from agent.ingest.samples import SampleBlock
from agent.ingest.window import StreamWindowers
from agent.model.postprocess import build_postprocessor


class _Tensor:
    def __init__(self, name: str, shape: tuple[int, ...]) -> None:
        self.name = name
        self.shape = shape


def _outputs(n: int) -> list[list[npt.NDArray[np.float32]]]:
    rng = np.random.default_rng(1)
    q = rng.integers(0, 256, n)
    return [[np.array([[v / 256, (256 - v) / 256]], np.float32)] for v in q]


def _blocks(samples: int, block: int, channels: int) -> list[SampleBlock]:
    rng = np.random.default_rng(0)
    values = rng.standard_normal((samples, channels)).astype(np.float32)
    ts = np.arange(samples, dtype=np.float64) * 0.001
    return [
        SampleBlock("s", ts[i : i + block], values[i : i + block]) for i in range(0, samples, block)
    ]


def _best(fn: Callable[[], int], repeat: int) -> tuple[float, int]:
    best = float("inf")
    n = 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        n = fn()
        best = min(best, time.perf_counter() - t0)
    return best, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--length", type=int, default=32)
    ap.add_argument("--hop", type=int, default=16)
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--windows", type=int, default=20000)
    ap.add_argument("--blocks", default="1,16,256,4096", help="block sizes in samples")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    length, hop, ch = args.length, args.hop, args.channels
    samples = length + hop * (args.windows - 1)
    pre_cfg = PreprocessSection(normalize="standard", mean=[0.1] * ch, std=[2.0] * ch)
    post_cfg = ClassificationPost(labels=["idle", "move"], threshold=0.6)
    shape = check_model_input(_Tensor("x", (1, length, ch)), length, ch)
    canned = _outputs(args.windows)
    mean = np.array(pre_cfg.mean, np.float32)
    std = np.array(pre_cfg.std, np.float32)

    print(f"window {length}x{ch}, hop {hop}, {args.windows} windows, 2-class int8-style output")
    print(f"{'block':>6} {'window+pre':>11} {'post':>7} {'total':>7} {'naive':>7}  µs/window")
    for block in (int(b) for b in args.blocks.split(",")):
        blocks = _blocks(samples, block, ch)

        def stages(with_post: bool = True, blocks: list[SampleBlock] = blocks) -> int:
            pre = Preprocessor(pre_cfg, ch)
            sw = StreamWindowers(length, hop, ch, transform=pre)
            post = build_postprocessor(post_cfg, [_Tensor("p", (1, 2))])
            n = 0
            for b in blocks:
                ws = sw.push(b)
                for i in range(len(ws)):
                    x = ws.data[i].reshape(shape)
                    if with_post:
                        post(canned[n], x, b.stream)
                    n += 1
            return n

        def post_only() -> int:
            post = build_postprocessor(post_cfg, [_Tensor("p", (1, 2))])
            x = np.zeros(shape, np.float32)
            for out in canned:
                post(out, x, "s")
            return len(canned)

        def naive(blocks: list[SampleBlock] = blocks) -> int:
            buf: collections.deque[npt.NDArray[np.float32]] = collections.deque(maxlen=length)
            labels = ["idle", "move"]
            n = seen = 0
            for b in blocks:
                for row in b.values:
                    buf.append(row)
                    seen += 1
                    if seen >= length and (seen - length) % hop == 0:
                        x = (np.array(buf) - mean) / std
                        s = canned[n][0][0]
                        k = int(np.argmax(s))
                        _ = x, {"label": labels[k], "score": float(s[k])}
                        n += 1
            return n

        t_all, n = _best(stages, args.repeat)
        t_win, _ = _best(lambda: stages(False), args.repeat)
        t_post, _ = _best(post_only, args.repeat)
        t_naive, n_naive = _best(naive, 1)
        assert n == n_naive == args.windows, (n, n_naive)
        us = 1e6 / n
        print(
            f"{block:>6} {t_win * us:>11.2f} {t_post * us:>7.2f} {t_all * us:>7.2f} "
            f"{t_naive * us:>7.2f}"
        )


if __name__ == "__main__":
    main()
