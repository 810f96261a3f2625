"""Small example data and models, trained in seconds: for tests, benchmarks and the tutorial.

``signal_dataset`` makes windows of a 3-class synthetic signal (sines of three frequencies in
noise, random phase and amplitude), separable by a tiny Conv1D network.
``train_classifier`` trains that network. Nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

CLASS_NAMES = ("slow", "medium", "fast")
_FREQS = (1.0, 3.0, 6.0)  # cycles per window


@dataclass(frozen=True)
class SignalSet:
    """Windows and their class labels."""

    x: npt.NDArray[np.float32]  # (n, window, channels)
    y: npt.NDArray[np.int64]  # (n,)


def signal_dataset(
    n: int, *, window: int = 32, channels: int = 3, noise: float = 0.3, seed: int = 0
) -> SignalSet:
    """``n`` labelled windows; the same seed gives the same data."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(_FREQS), n)
    t = np.arange(window, dtype=np.float64) / window
    freqs = np.asarray(_FREQS)[y][:, None, None]
    phase = rng.uniform(0, 2 * np.pi, (n, 1, channels))
    amp = rng.uniform(0.5, 1.5, (n, 1, channels))
    x = amp * np.sin(2 * np.pi * freqs * t[None, :, None] + phase)
    x += noise * rng.standard_normal(x.shape)
    return SignalSet(x.astype(np.float32), y.astype(np.int64))


def build_classifier(window: int = 32, channels: int = 3, classes: int = 3) -> Any:
    """An untrained Conv1D classifier with one input named ``window``."""
    import keras

    return keras.Sequential(
        [
            keras.Input((window, channels), name="window"),
            keras.layers.Conv1D(8, 5, activation="relu"),
            keras.layers.Conv1D(8, 3, activation="relu"),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(classes, activation="softmax"),
        ],
        name="signal_classifier",
    )


def train_classifier(data: SignalSet, *, epochs: int = 20, seed: int = 0) -> Any:
    """Train ``build_classifier`` on ``data`` (a few seconds on two cores)."""
    import keras

    keras.utils.set_random_seed(seed)
    model = build_classifier(data.x.shape[1], data.x.shape[2], len(_FREQS))
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(data.x, data.y, epochs=epochs, batch_size=32, verbose=0)
    return model
