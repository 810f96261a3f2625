"""The benchmark models, generated with the project's converter and cached in bench/out/models.

Random weights (timing only; nothing is downloaded):

    tiny      int8 Conv1D sensor classifier, window 32 x 3 -> 2 classes   (tens of µs)
    tiny-b    the same architecture, other weights (the model a hot swap switches to)
    kws       keyword-spotting-sized int8 CNN, 50 MFCC frames x 10 -> 12   (about 0.1 ms)
    mnv2-96   MobileNetV2 alpha 0.35, 96x96x3, int8, 1000 classes
    mnv2-224  MobileNetV2 alpha 1.0, 224x224x3, int8, 1000 classes

The pipeline feeds windows of ``length`` samples x ``channels``: an image is a window of
``height * width`` samples of 3 channels, so the image models start with a Reshape layer.
Each model is converted by ``converters.convert.convert_keras`` (full int8 with int8 I/O,
calibrated on random data) in a subprocess (TensorFlow stays out of the orchestrator), once:
the file name carries a hash of the spec and the TensorFlow version.

    .venv/bin/python -m bench.models [NAME ...]      # build what is missing, print the paths
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.procs import OUT, run_json

MODELS_DIR = OUT / "models"
DATA_DIR = OUT / "data"
_GENERATOR_VERSION = 1


@dataclass(frozen=True)
class ModelSpec:
    name: str
    length: int
    channels: int
    hop: int
    classes: int
    calibration: int
    seed: int
    what: str

    @property
    def window_values(self) -> int:
        return self.length * self.channels

    def key(self) -> str:
        from converters.convert import tensorflow_version

        raw = json.dumps([asdict(self), tensorflow_version(), _GENERATOR_VERSION])
        return hashlib.sha256(raw.encode()).hexdigest()[:12]

    def path(self) -> Path:
        return MODELS_DIR / f"{self.name}-{self.key()}.tflite"


SPECS: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        ModelSpec("tiny", 32, 3, 16, 2, 64, 1, "int8 Conv1D sensor classifier, 32x3 -> 2"),
        ModelSpec("tiny-b", 32, 3, 16, 2, 64, 2, "tiny with other weights (swap target)"),
        ModelSpec("kws", 50, 10, 25, 12, 64, 1, "int8 keyword-spotting CNN, 50x10 -> 12"),
        ModelSpec("mnv2-96", 96 * 96, 3, 96 * 96, 1000, 16, 1, "MobileNetV2 0.35 96x96 int8"),
        ModelSpec("mnv2-224", 224 * 224, 3, 224 * 224, 1000, 8, 1, "MobileNetV2 1.0 224x224 int8"),
    )
}


def _keras(spec: ModelSpec) -> Any:
    import tensorflow as tf

    layers = tf.keras.layers
    tf.keras.utils.set_random_seed(spec.seed)
    inp = tf.keras.Input((spec.length, spec.channels), name="window")
    if spec.name.startswith("tiny"):
        x = layers.Conv1D(16, 5, activation="relu")(inp)
        x = layers.Conv1D(16, 5, activation="relu")(x)
        x = layers.GlobalAveragePooling1D()(x)
    elif spec.name == "kws":
        x = layers.Reshape((spec.length, spec.channels, 1))(inp)
        x = layers.Conv2D(64, (10, 4), strides=(2, 2), padding="same", activation="relu")(x)
        for _ in range(2):
            x = layers.DepthwiseConv2D((3, 3), padding="same", activation="relu")(x)
            x = layers.Conv2D(64, 1, activation="relu")(x)
        x = layers.GlobalAveragePooling2D()(x)
    else:
        side = round(spec.length**0.5)
        alpha = 0.35 if side == 96 else 1.0
        x = layers.Reshape((side, side, spec.channels))(inp)
        base = tf.keras.applications.MobileNetV2(
            input_shape=(side, side, spec.channels), alpha=alpha, weights=None, classes=1000
        )
        return tf.keras.Model(inp, base(x))
    out = layers.Dense(spec.classes, activation="softmax")(x)
    return tf.keras.Model(inp, out)


def representative(spec: ModelSpec, n: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(spec.seed)
    shape = (n or spec.calibration, spec.length, spec.channels)
    return rng.uniform(-1.0, 1.0, shape).astype(np.float32)


def build(spec: ModelSpec) -> bytes:
    """Convert ``spec``'s Keras model to full-int8 .tflite bytes (TensorFlow needed)."""
    from converters.convert import convert_keras

    return convert_keras(_keras(spec), "int8", representative(spec), io_type="int8")


def ensure(names: list[str]) -> dict[str, Path]:
    """The cached model files for ``names``, building the missing ones in a subprocess."""
    missing = [n for n in names if not SPECS[n].path().exists()]
    if missing:
        print(f"building model(s) {', '.join(missing)} (cached in {MODELS_DIR})", file=sys.stderr)
        run_json(["-m", "bench.models", *missing], timeout=900)
    return {n: SPECS[n].path() for n in names}


def samples(spec: ModelSpec, windows: int) -> Path:
    """A replay file (.npy, (n, channels) float32) holding exactly ``windows`` windows."""
    n = spec.length + spec.hop * (windows - 1)
    path = DATA_DIR / f"{spec.name}-{spec.length}x{spec.channels}-h{spec.hop}-w{windows}.npy"
    if not path.exists():
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(7)
        data = rng.uniform(-1.0, 1.0, (n, spec.channels)).astype(np.float32)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, data)
        tmp.replace(path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description="build the benchmark models that are missing")
    ap.add_argument("names", nargs="*", default=list(SPECS))
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    MODELS_DIR.mkdir(parents=True, exist_ok=True)
    built = {}
    for name in args.names:
        spec = SPECS[name]
        path = spec.path()
        if not path.exists():
            t0 = time.monotonic()
            data = build(spec)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
            print(f"{name}: {len(data)} bytes in {time.monotonic() - t0:.1f}s", file=sys.stderr)
        built[name] = str(path)
    print(json.dumps(built))


if __name__ == "__main__":
    main()
