"""What a package's manifest does to the inputs of a one-shot ``edge-agent predict``.

The streaming pipeline cuts windows and normalises them as the manifest decided
(``agent.model.compat.resolve``); ``predict`` on a package does the same to the file's
examples, so a user feeds raw samples, ``(window, channels)`` per example, as the sensor gives
them, and gets what the device would compute.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from agent.errors import ShapeMismatch
from agent.ingest.preprocess import Preprocessor
from agent.model.compat import check_model_input
from agent.model.runtime import Array, TensorInfo
from agent.release.manifest import Manifest

Prepare = Callable[[TensorInfo, Array], Array]


def package_inputs(m: Manifest) -> Prepare | None:
    """``prepare(tensor, array)`` for ``predict_file``: data laid out as the source model took
    it is mapped to the .tflite's layout (``Manifest.layout``); raw windows are normalised and
    laid out the way the model's input takes them. None when the manifest asks for neither."""
    layouts = {lay.input: lay for lay in m.layout or []}
    spec = m.preprocess
    if layouts:

        def relayout(t: TensorInfo, arr: Array) -> Array:
            lay = layouts.get(t.name)
            if lay is None:
                return arr
            try:
                return lay.to_model(np.asarray(arr, np.float32), list(t.shape))
            except ValueError as exc:
                raise ShapeMismatch(f"{m.name} {m.version}: {exc}") from exc

        return relayout
    if spec is None:
        return None
    stats = spec.mean or spec.min
    channels = spec.channels or (len(stats) if stats else None)
    window = spec.window

    def prepare(t: TensorInfo, arr: Array) -> Array:
        x = np.asarray(arr, np.float32)
        if channels is None:
            return x
        per = window * channels
        if x.shape[-1] != channels or x.size % per != 0:
            raise ShapeMismatch(
                f"{m.name} {m.version} takes windows of {window} samples x {channels} "
                f"channel(s): the input file's array has shape {x.shape} (give ({window}, "
                f"{channels}) or (N, {window}, {channels}))"
            )
        if spec.normalize != "none":
            x = Preprocessor(spec.preprocess_section(), channels)(x)
        target = check_model_input(t, window, channels)
        return x.reshape((-1, *target[1:]))

    return prepare
