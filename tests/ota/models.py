"""Small float TFLite models for the OTA tests, built once per session with TensorFlow.

All take one window, shape (1, 32, 3) float32 (``narrow`` takes (1, 16, 3)), and give (1, 2):

    dense(seed)   tanh(x W1) W2 with seeded weights; ~100 KB, so a download takes several chunks
    nan_model()   sqrt(-1 - sum(x^2)): NaN for every input
    fragile()     sqrt(0.05 - mean(x^2)): finite for quiet input (zeros), NaN for a real signal
    narrow()      dense on a 16-sample window: does not fit the configured 32-sample window
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import numpy as np

WINDOW, CHANNELS, OUTPUTS = 32, 3, 2


def _tf() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    return tf


def _convert(fn: Callable[[Any], Any], window: int = WINDOW) -> bytes:
    tf = _tf()
    f = tf.function(fn, input_signature=[tf.TensorSpec([1, window, CHANNELS], tf.float32)])
    conv = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()], f)
    return bytes(conv.convert())


def _weights(seed: int, window: int, hidden: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((window * CHANNELS, hidden)) * 0.2).astype(np.float32)
    w2 = (rng.standard_normal((hidden, OUTPUTS)) * 0.2).astype(np.float32)
    return w1, w2


@functools.cache
def dense(seed: int = 1, window: int = WINDOW, hidden: int = 256) -> bytes:
    tf = _tf()
    w1, w2 = _weights(seed, window, hidden)

    def fn(x: Any) -> Any:
        h = tf.tanh(tf.matmul(tf.reshape(x, [1, window * CHANNELS]), w1))
        return tf.matmul(h, w2)

    return _convert(fn, window)


def dense_reference(seed: int, windows: np.ndarray, hidden: int = 256) -> np.ndarray:
    """What ``dense(seed)`` outputs for ``windows`` (n, 32, 3), computed with NumPy."""
    w1, w2 = _weights(seed, WINDOW, hidden)
    flat = windows.reshape(len(windows), -1).astype(np.float32)
    out: np.ndarray = np.tanh(flat @ w1) @ w2
    return out


@functools.cache
def nan_model() -> bytes:
    tf = _tf()

    def fn(x: Any) -> Any:
        s = tf.reduce_sum(tf.square(x), axis=[1, 2], keepdims=False)
        return tf.sqrt(-1.0 - tf.reshape(s, [1, 1])) * tf.ones([1, OUTPUTS])

    return _convert(fn)


@functools.cache
def fragile() -> bytes:
    tf = _tf()

    def fn(x: Any) -> Any:
        m = tf.reduce_mean(tf.square(x), axis=[1, 2], keepdims=False)
        return tf.sqrt(0.05 - tf.reshape(m, [1, 1])) * tf.ones([1, OUTPUTS])

    return _convert(fn)


@functools.cache
def narrow() -> bytes:
    return dense(seed=5, window=16)
