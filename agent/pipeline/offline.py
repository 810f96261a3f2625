"""``edge-agent predict --stream``: a recording through the agent's own windowing, offline.

A long ``(n, channels)`` recording is cut into windows exactly as ``run`` cuts a stream
(``agent.ingest.window.Windower``: window k covers samples ``[k * hop, k * hop + length)``),
encoded as ``run`` encodes them (``agent.ingest.preprocess.Encoder``: the model input's own
scale and zero point; a recording already in the input's integer type, e.g. int8 features,
is fed as it is), and run one window after the other on ONE interpreter, so a stateful
(streaming) model carries its state from window to window as it does on a device. One
JSON-able dict per window: its number, its first sample and the outputs (float32 values
exactly: their shortest round-trip repr).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.config import PreprocessSection
from agent.errors import SampleError, ShapeMismatch
from agent.ingest.preprocess import Encoder, Preprocessor, check_model_input
from agent.ingest.samples import SampleBlock
from agent.ingest.window import Windower
from agent.model.modelinfo import json_values, read_inputs
from agent.model.runtime import INT_RANGES, Model, load_model

log = logging.getLogger(__name__)

Array = npt.NDArray[Any]


class _AsIs:
    """A windower transform that copies integer features into the input's own type."""

    def __init__(self, dtype: np.dtype[Any]) -> None:
        self.dtype = dtype

    def __call__(self, src: Array, out: Array) -> None:
        np.copyto(out, src, casting="unsafe")


def read_recording(path: Path, feed_dtype: str) -> tuple[Array, bool]:
    """The recording as float32 ``(n, channels)`` and whether it is already in the model
    input's integer type (then fed as it is, not quantized again)."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        raw = np.load(path, allow_pickle=False)
        if raw.dtype.name == feed_dtype and feed_dtype in INT_RANGES:
            return _two_d(raw.astype(np.float32), path), True
    data = read_inputs(path)
    if isinstance(data, dict):
        if len(data) != 1:
            raise SampleError(
                "bad_input_file", f"{path}: --stream takes one array, got {sorted(data)}"
            )
        data = next(iter(data.values()))
    return _two_d(data, path), False


def _two_d(x: Array, path: Path) -> Array:
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[0] == 0:
        raise SampleError(
            "bad_input_file",
            f"{path}: --stream takes a recording of shape (samples, channels), got {x.shape}",
        )
    return np.ascontiguousarray(x, np.float32)


def stream_windows(
    model: Model, x: Array, hop: int | None, as_is: bool
) -> Iterator[tuple[int, int, Array]]:
    """(window number, first sample, encoded window reshaped for the model) of ``x``."""
    feed = model.feed
    channels = int(x.shape[1])
    size = int(np.prod([d for d in feed.shape if d > 0]))
    if size % channels:
        raise ShapeMismatch(
            f"model input {feed.name!r} {tuple(feed.shape)} holds {size} values, not a whole "
            f"number of samples of {channels} channel(s) (the recording's second dimension)"
        )
    length = size // channels
    shape = check_model_input(feed, length, channels)
    step = length if hop is None else hop
    if not 1 <= step <= length:
        raise ShapeMismatch(f"--hop {step} must be between 1 and the window length {length}")
    transform = (
        _AsIs(np.dtype(feed.dtype))
        if as_is
        else Encoder(Preprocessor(PreprocessSection(), channels), feed)
    )
    windower = Windower(length, step, channels, transform=transform)
    block = SampleBlock("recording", np.arange(len(x), dtype=np.float64), x, time.perf_counter())
    windows = windower.push(block)
    for i in range(len(windows)):
        k = windows.first + i
        yield k, k * step, windows.data[i].reshape(shape)


def predict_stream(
    model_content: bytes,
    input_path: Path,
    *,
    runtime: str = "auto",
    signature: str | None = None,
    num_threads: int = 1,
    reference_kernels: bool = False,
    hop: int | None = None,
    label: str = "model",
) -> Iterator[dict[str, Any]]:
    """One dict per window of the recording at ``input_path`` (see the module docstring).
    ``hop`` defaults to the window length (windows side by side)."""
    model = load_model(
        model_content,
        runtime=runtime,
        signature=signature,
        num_threads=num_threads,
        reference_kernels=reference_kernels,
        label=label,
    )
    x, as_is = read_recording(Path(input_path), model.feed.dtype)
    names = [t.name for t in model.outputs]
    for k, first, window in stream_windows(model, x, hop, as_is):
        outs = model.run_native(window)
        yield {
            "window": k,
            "sample": first,
            "outputs": {n: json_values(o) for n, o in zip(names, outs, strict=True)},
        }
