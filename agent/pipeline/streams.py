"""State per stream: one set of stages for each stream that needs its own.

A stateless model serves every stream from one interpreter. A *stateful* (streaming) model
keeps state between invokes (resource or variable tensors), so two streams through one
interpreter would mix their state: each stream gets an interpreter of its own, created when
the stream first appears, with its own state and its own reset, so every stream gives exactly
what a separate interpreter fed only that stream would.

``PerStream`` is that registry, generic over what it holds (a ``Model`` today; any per-stream
stage set: a shadow model beside the active one builds its own the same way). It is capped
(``window.max_streams``): a further stream is refused with ``SampleError('too_many_streams')``,
counted and dropped, never mixed into another stream's state. ``check_state_memory`` refuses
at start-up a cap whose interpreters could need more than ``model.stream_state_limit_mb``.

Not thread-safe: the pipeline calls it with its run lock held (one item at a time).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from agent.errors import SampleError, ShapeMismatch
from agent.model.runtime import Model

log = logging.getLogger(__name__)

T = TypeVar("T")
MIB = 1024 * 1024


class PerStream(Generic[T]):
    """One ``T`` per stream, made by ``make(stream)`` on the stream's first appearance."""

    def __init__(self, make: Callable[[str], T], cap: int, what: str = "interpreter") -> None:
        if cap < 1:
            raise ValueError(f"cap must be >= 1, got {cap}")
        self._make = make
        self.cap = cap
        self.what = what
        self._by_stream: dict[str, T] = {}

    def get(self, stream: str) -> T:
        """The stream's own ``T`` (made now if it is new); ``SampleError('too_many_streams')``
        when the cap is reached."""
        item = self._by_stream.get(stream)
        if item is None:
            if len(self._by_stream) >= self.cap:
                raise SampleError(
                    "too_many_streams",
                    f"stream {stream!r} would need a {self.what} beyond the {self.cap} of "
                    "window.max_streams",
                )
            item = self._by_stream[stream] = self._make(stream)
            log.info("stream %s: its own %s (%d of %d)", stream, self.what, len(self), self.cap)
        return item

    def drop(self, stream: str) -> None:
        """Forget a stream: its next window starts from a fresh state."""
        self._by_stream.pop(stream, None)

    def clear(self) -> None:
        self._by_stream.clear()

    def __contains__(self, stream: object) -> bool:
        return stream in self._by_stream

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._by_stream))

    def __len__(self) -> int:
        return len(self._by_stream)


def check_state_memory(model: Model, streams: int, limit_mb: float) -> int:
    """Per-stream interpreters of a stateful ``model`` for up to ``streams`` streams must fit
    in ``limit_mb`` MiB; returns the estimate per interpreter (bytes), ``ShapeMismatch`` (a
    start-up refusal naming both keys) when they do not fit."""
    each = model.memory_estimate()
    need = each * streams
    if need > limit_mb * MIB:
        fit = int(limit_mb * MIB // each)
        raise ShapeMismatch(
            f"{model.label} is stateful (it keeps state between invokes), so every stream gets "
            f"its own interpreter: {streams} stream(s) (window.max_streams) x ~{each / MIB:.2f} "
            f"MiB = {need / MIB:.1f} MiB is more than model.stream_state_limit_mb = {limit_mb:g}. "
            f"Lower window.max_streams to at most {fit} or raise model.stream_state_limit_mb; "
            "streams are never allowed to share (and mix) one interpreter's state."
        )
    return each


def stream_models(model: Model, cap: int, limit_mb: float) -> PerStream[Model] | None:
    """The per-stream interpreters a model needs: None for a stateless model (one shared
    interpreter), else a ``PerStream`` of clones (checked against the memory limit now)."""
    if not model.stateful:
        return None
    each = check_state_memory(model, cap, limit_mb)
    log.info(
        "%s is stateful: one interpreter per stream (up to %d, ~%.2f MiB each)",
        model.label,
        cap,
        each / MIB,
    )
    return PerStream(lambda stream: model.clone(f"{model.label} [{stream}]"), cap)
