"""Target 9: full-int8 conversion + verification of MobileNetV2 0.35/96 on this machine.

Runs as its own process (``python -m bench.convert JOBDIR``), timed from process start: import
TensorFlow, build the Keras model (``weights=None``: random weights, nothing downloaded) and
save it as ``.keras`` (what a training run hands over), then ``converters.build.
convert_and_verify`` from that file: float32 reference + full-int8 conversion calibrated on
``CALIBRATION`` samples, and verification of the int8 model against the float32 one on the
same samples with the agent's runtime. The whole process must finish in 60 s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

T0 = time.perf_counter()

from bench.context import Context  # noqa: E402
from bench.procs import PYTHON, REPO  # noqa: E402
from bench.report import Row  # noqa: E402

CALIBRATION = 32


def job(workdir: Path) -> dict[str, float]:
    import numpy as np

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    t_import = time.perf_counter()
    tf.keras.utils.set_random_seed(1)
    # logits, not softmax: with random weights a softmax over 1000 classes is ~0.001 for every
    # class, a range smaller than one int8 step, and the verification rightly refuses it
    model = tf.keras.applications.MobileNetV2(
        input_shape=(96, 96, 3),
        alpha=0.35,
        weights=None,
        classes=1000,
        classifier_activation=None,
    )
    rng = np.random.default_rng(0)
    data = rng.uniform(-1, 1, (CALIBRATION, 96, 96, 3)).astype(np.float32)
    # Random weights shrink the activations layer by layer (the logits span ~1e-10): a model
    # no conversion can be verified on. Set every BatchNormalization's statistics from the
    # calibration data (one forward pass in training mode, momentum 0), as if trained.
    for layer in model.layers:
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            layer.momentum = 0.0
    model(data, training=True)
    keras_file = workdir / "mobilenet_v2_0.35_96.keras"
    model.save(keras_file)
    calib = workdir / "calibration.npy"
    np.save(calib, data)
    t_model = time.perf_counter()

    from converters.build import convert_and_verify
    from converters.settings import BuildSettings

    settings = BuildSettings(name="mnv2", mode="int8", calibration=calib)
    converted = convert_and_verify(keras_file, settings)
    t_done = time.perf_counter()
    report = converted.report
    return {
        "import_s": t_import - T0,
        "model_s": t_model - t_import,
        "convert_verify_s": t_done - t_model,
        "total_s": t_done - T0,
        "size": float(len(converted.model)),
        "agreement": float(report.outputs[0].top1_agreement or 0.0) if report else -1.0,
    }


def run(ctx: Context) -> list[Row]:
    if ctx.smoke:
        return []  # a real conversion takes tens of seconds: only in the full run
    workdir = ctx.workdir / ctx.run_id("convert")
    workdir.mkdir(parents=True)
    t0 = time.monotonic()
    proc = subprocess.run(
        [PYTHON, "-m", "bench.convert", str(workdir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        check=False,
    )
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"conversion job failed:\n{proc.stderr[-3000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    return [
        Row(
            "8 convert+verify MNv2 0.35/96",
            "s",
            wall,
            {},
            None,
            "<= 60 s",
            wall <= 60,
            f"whole process: TF import {r['import_s']:.1f} s, build+save Keras model "
            f"{r['model_s']:.1f} s, float32 + int8 conversion ({CALIBRATION} calibration "
            f"samples) and verification {r['convert_verify_s']:.1f} s; int8 model "
            f"{r['size'] / 1e6:.2f} MB, top-1 agreement with float32 {r['agreement']:.2f}",
        )
    ]


if __name__ == "__main__":
    print(json.dumps(job(Path(sys.argv[1]))))
