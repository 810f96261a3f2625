#!/usr/bin/env python3
"""Build agent/model/demo/model.tflite: the tiny int8 anomaly classifier the agent ships.

The model takes one window of the agent's embedded synthetic source -- shape (1, 32, 3),
raw values, no normalisation -- and returns the scores of ["normal", "anomaly"] (int8 in,
int8 out). It is trained here, seeded, in seconds, on windows of the same signal the
synthetic source makes by default:

    channel c = amplitude * sin(2 pi f_c t + c pi / 3) + N(0, noise_std),  t = n / 50 Hz
    f = [1.0, 0.5, 2.0] Hz, amplitude 1.0, noise_std 0.1

An anomaly adds +3.0 to every channel for 20 consecutive samples; a window is labelled
"anomaly" when it overlaps an anomaly by at least 8 samples.

    .venv/bin/python scripts/make_demo_model.py               # writes agent/model/demo/model.tflite
    .venv/bin/python scripts/make_demo_model.py --out /tmp/m.tflite --epochs 5

Conversion goes through converters.convert.convert_keras (the project's one converter path).
The generator functions below need only NumPy: tests import them to check the shipped model.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "agent" / "model" / "demo" / "model.tflite"

LABELS = ("normal", "anomaly")
WINDOW = 32
CHANNELS = 3
RATE_HZ = 50.0
FREQUENCIES_HZ = (1.0, 0.5, 2.0)
AMPLITUDE = 1.0
NOISE_STD = 0.1
ANOMALY_MAGNITUDE = 3.0
ANOMALY_SAMPLES = 20
MIN_OVERLAP = 8
SEED = 20240601

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]


def signal(start: int, n: int, rng: np.random.Generator) -> F32:
    """``n`` samples of the clean-plus-noise signal from sample index ``start``: (n, 3)."""
    t = np.arange(start, start + n, dtype=np.float64) / RATE_HZ
    omega = 2.0 * np.pi * np.asarray(FREQUENCIES_HZ)
    phase = np.arange(CHANNELS) * (np.pi / 3.0)
    values = AMPLITUDE * np.sin(t[:, None] * omega + phase)
    values += rng.normal(0.0, NOISE_STD, size=values.shape)
    return values.astype(np.float32)


def windows(n: int, seed: int, anomaly_fraction: float = 0.5) -> tuple[F32, I64]:
    """``n`` labelled windows (n, 32, 3) at random points of the signal, and their labels.

    About ``anomaly_fraction`` of them touch an anomaly, placed anywhere from overlapping the
    window by 1 sample to lying inside it, so near-threshold overlaps (7 vs 8) are common.
    """
    rng = np.random.default_rng(seed)
    x = np.empty((n, WINDOW, CHANNELS), np.float32)
    y = np.zeros(n, np.int64)
    for i in range(n):
        x[i] = signal(int(rng.integers(0, 10_000_000)), WINDOW, rng)
        if rng.random() < anomaly_fraction:
            start = int(rng.integers(1 - ANOMALY_SAMPLES, WINDOW))
            lo, hi = max(start, 0), min(start + ANOMALY_SAMPLES, WINDOW)
            x[i, lo:hi] += ANOMALY_MAGNITUDE
            y[i] = int(hi - lo >= MIN_OVERLAP)
    return x, y


def build_keras(seed: int, batch_size: int | None = 1) -> Any:
    """Conv1D over 8 samples (an anomaly's minimum overlap) -> max over time -> 2 classes."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)
    keras = tf.keras
    inp = keras.Input((WINDOW, CHANNELS), batch_size=batch_size, name="window")
    h = keras.layers.Conv1D(8, MIN_OVERLAP, activation="relu")(inp)
    h = keras.layers.GlobalMaxPooling1D()(h)
    h = keras.layers.Dense(8, activation="relu")(h)
    out = keras.layers.Dense(len(LABELS), activation="softmax", name="scores")(h)
    return keras.Model(inp, out)


def train(seed: int, epochs: int, n_train: int) -> Any:
    """Train with any batch size, return the same weights in a batch-1 model (what runs)."""
    import tensorflow as tf

    x, y = windows(n_train, seed)
    trainer = build_keras(seed, batch_size=None)
    trainer.compile(
        optimizer=tf.keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy"
    )
    trainer.fit(x, y, batch_size=64, epochs=epochs, verbose=0, shuffle=True)
    model = build_keras(seed, batch_size=1)
    model.set_weights(trainer.get_weights())
    return model


def evaluate(content: bytes, seed: int, n: int = 2000) -> dict[str, float]:
    """Accuracy of the converted model on fresh windows, run through agent.model.runtime."""
    from agent.model.runtime import load_model

    model = load_model(content, reference_kernels=True)
    x, y = windows(n, seed)
    pred = np.array([int(np.argmax(model.run1(w[None])[0])) for w in x])
    normal = y == 0
    return {
        "accuracy": float(np.mean(pred == y)),
        "false_alarm_rate": float(np.mean(pred[normal] == 1)),
        "miss_rate": float(np.mean(pred[~normal] == 0)),
    }


def make(out: Path, seed: int = SEED, epochs: int = 12, n_train: int = 6000) -> dict[str, Any]:
    """Train, convert to int8 (int8 I/O), evaluate, write ``out``; returns a summary."""
    from converters.convert import convert_keras

    t0 = time.monotonic()
    model = train(seed, epochs, n_train)
    rep, _ = windows(300, seed + 1)
    content = convert_keras(model, "int8", rep, io_type="int8")
    scores = evaluate(content, seed + 2)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(content)
    tmp.replace(out)
    return {
        "path": str(out),
        "bytes": len(content),
        "seconds": round(time.monotonic() - t0, 1),
        **scores,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the model")
    parser.add_argument("--seed", type=int, default=SEED, help="training seed")
    parser.add_argument("--epochs", type=int, default=12, help="training epochs")
    parser.add_argument("--train-windows", type=int, default=6000, help="training windows")
    args = parser.parse_args(argv)
    summary = make(args.out, args.seed, args.epochs, args.train_windows)
    for key, value in summary.items():
        print(f"{key:18s} {value}")
    if summary["accuracy"] < 0.95:
        print("accuracy below 0.95: not good enough for the demo", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
