"""Detection: a stream of per-window scores -> events (``[postprocess] type = "detection"``).

What wake-word and keyword-spotting users know from Edge Impulse's continuous mode and
pymicro-wakeword's sliding window, made exact:

- **Sliding mean.** Per stream, the scores of the last ``average`` windows are averaged
  (a ring and a running sum in float64, re-summed once per lap). Nothing is decided, and
  nothing published, before ``average`` windows of the stream have been seen (warm-up).
- **Threshold, strictly.** A label is *on* while its mean is strictly greater than its
  threshold (``mean > threshold``; per-label ``thresholds`` override the default).
- **Rising edges.** An event is published when a label turns on (off -> on), not while it
  stays on and not when it turns off.
- **Refractory period.** A rising edge within ``refractory`` windows after the label's last
  event makes no event (and, being an edge, is not replayed when the period ends).
- **Heartbeat** (optional): after ``heartbeat`` windows of a stream without a message, a
  heartbeat with the current means is published.

An event carries the label, its mean (the value that crossed), its peak (the highest single
window score among the averaged windows), the threshold, and the samples the averaged windows
cover: ``[start_sample, end_sample)`` in the stream's own sample numbering (the agent's
windowing: window ``k`` starts at sample ``k * hop``). When several labels rise in the same
window, the one with the highest mean is the event's ``label`` and the others are listed in
``others``. The payload schemas are ``agent.wire.detection``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.errors import InferenceError

Array = npt.NDArray[Any]
Payload = dict[str, Any]


class _StreamState:
    """One stream's history: the last N score vectors and where each window starts."""

    __slots__ = ("above", "last_event", "pos", "quiet", "ring", "seen", "starts", "total")

    def __init__(self, n: int, k: int) -> None:
        self.ring = np.zeros((n, k), np.float64)
        self.total = np.zeros(k, np.float64)
        self.starts = [0] * n  # first sample of the window in each ring slot
        self.pos = 0  # the slot the next window goes to (the oldest once the ring is full)
        self.seen = 0  # windows seen on this stream
        self.above = [False] * k
        self.last_event = [-(1 << 62)] * k  # ``seen`` at each label's last event
        self.quiet = 0  # windows since the last message on this stream


class DetectionPostprocessor:
    """Rising edges of a sliding mean over ``average`` windows -> event payloads."""

    kind = "detection"

    def __init__(
        self,
        index: int,
        name: str,
        labels: Sequence[str],
        *,
        average: int,
        thresholds: Sequence[float],
        ignore: Sequence[str] = (),
        refractory: int = 0,
        heartbeat: int = 0,
        window_length: int = 1,
        max_streams: int = 1024,
        round_: Callable[[float], float] = float,
    ) -> None:
        if average < 1 or window_length < 1 or len(thresholds) != len(labels):
            raise ValueError("average and window_length must be >= 1, one threshold per label")
        self.index = index
        self.name = name
        self.labels = list(labels)
        self.average = average
        self.thresholds = [float(t) for t in thresholds]
        skip = set(ignore)
        self.watched = [i for i, label in enumerate(self.labels) if label not in skip]
        self.refractory = refractory
        self.heartbeat = heartbeat
        self.window_length = window_length
        self.max_streams = max_streams
        self._r = round_
        self._streams: dict[str, _StreamState] = {}

    def reset(self) -> None:
        self._streams.clear()

    def _state(self, stream: str) -> _StreamState:
        st = self._streams.get(stream)
        if st is None:
            if len(self._streams) >= self.max_streams:
                del self._streams[next(iter(self._streams))]
            st = self._streams[stream] = _StreamState(self.average, len(self.labels))
        return st

    def __call__(
        self, outputs: Sequence[Array], window: Array, stream: str, sample: int = 0
    ) -> Payload | None:
        scores = outputs[self.index].ravel()
        if scores.size != len(self.labels):
            raise InferenceError(
                InferenceError.OUTPUT_SIZE,
                f"output {self.name!r} has {scores.size} values, expected {len(self.labels)}",
            )
        if not math.isfinite(float(scores.sum(dtype=np.float64))):
            raise InferenceError(
                InferenceError.NON_FINITE,
                f"non-finite output {self.name!r} (NaN or Inf) for stream {stream!r}",
            )
        st = self._state(stream)
        n = self.average
        row = st.ring[st.pos]
        st.total -= row
        row[:] = scores
        st.total += row
        st.starts[st.pos] = sample
        st.pos += 1
        if st.pos == n:
            st.pos = 0
            st.total = st.ring.sum(axis=0)  # once per lap: no drift
        st.seen += 1
        if st.seen < n:
            return None  # warm-up: no decision before N windows
        means: list[float] = (st.total / n).tolist()
        rising: list[int] = []
        for k in self.watched:
            on = means[k] > self.thresholds[k]
            if on and not st.above[k] and st.seen - st.last_event[k] > self.refractory:
                rising.append(k)
            st.above[k] = on
        start, end = st.starts[st.pos], sample + self.window_length
        if rising:
            for k in rising:
                st.last_event[k] = st.seen
            st.quiet = 0
            return self._event(st, means, rising, start, end)
        st.quiet += 1
        if self.heartbeat and st.quiet >= self.heartbeat:
            st.quiet = 0
            r = self._r
            return {
                "type": "heartbeat",
                "means": {self.labels[k]: r(means[k]) for k in self.watched},
                "start_sample": start,
                "end_sample": end,
            }
        return None

    def _event(
        self, st: _StreamState, means: list[float], rising: list[int], start: int, end: int
    ) -> Payload:
        r = self._r
        peaks: list[float] = st.ring.max(axis=0).tolist()
        rising.sort(key=lambda k: -means[k])  # the strongest first; ties keep output order
        hits = [
            {
                "label": self.labels[k],
                "mean": r(means[k]),
                "peak": r(peaks[k]),
                "threshold": self.thresholds[k],
            }
            for k in rising
        ]
        return {
            "type": "event",
            **hits[0],
            "start_sample": start,
            "end_sample": end,
            "windows": self.average,
            "others": hits[1:],
        }
