"""``python -m bench.fidelity``: reference kernels vs XNNPACK on the same inputs.

Not a speed figure: how far the default (XNNPACK) kernels move a quantized model's outputs
from the reference kernels (``model.reference_kernels = true``, bit-exact with TFLite's C
library). Prints, per model, how many of N random windows differ, the largest difference in
output units and in LSB (the output's quantization step), and in how many windows the two
disagree about ``score > 0.9``. docs/fidelity.md quotes a run.
"""

from __future__ import annotations

import argparse

import numpy as np

from agent.model.loading import demo_model_bytes
from agent.model.runtime import load_model


def compare(name: str, content: bytes, windows: int, seed: int = 0) -> str:
    ref = load_model(content, reference_kernels=True, label=f"{name} (reference)")
    xnn = load_model(content, reference_kernels=False, label=f"{name} (XNNPACK)")
    rng = np.random.default_rng(seed)
    shape = ref.inputs[0].shape
    step = ref.outputs[0].scale
    worst, differ, cross = 0.0, 0, 0
    for _ in range(windows):
        x = rng.normal(0, 1.5, shape).astype(np.float32)
        a, b = ref.run([x])[0], xnn.run([x])[0]
        d = float(np.abs(a - b).max())
        worst = max(worst, d)
        differ += d > 0
        cross += bool(((a > 0.9) != (b > 0.9)).any())
    lsb = f" = {worst / step:.0f} LSB (step {step:.6g})" if step else ""
    return (
        f"{name}: {windows} windows, {differ} differ, max |diff| {worst:.6g}{lsb}; "
        f"'> 0.9' decided differently in {cross}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.fidelity", description=__doc__)
    ap.add_argument("--windows", type=int, default=2000)
    ap.add_argument("--zoo", action="store_true", help="also the test model zoo (needs TF)")
    args = ap.parse_args(argv)
    print(compare("builtin:demo (int8)", demo_model_bytes(), args.windows))
    if args.zoo:
        from tests.modelzoo import tiny_classifier

        for mode in ("int8", "uint8"):
            print(compare(f"tiny_classifier {mode}", tiny_classifier(mode).content, args.windows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
