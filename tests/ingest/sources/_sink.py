"""Test helpers: a sink that collects emitted blocks, and a source runner thread."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import numpy.typing as npt

from agent.ingest.samples import SampleBlock
from agent.ingest.sources import Source, SourceContext
from agent.metrics import Metrics


def make_ctx() -> SourceContext:
    return SourceContext(metrics=Metrics())


class Sink:
    """An ``emit`` that keeps every block; tests wait on it with a condition."""

    def __init__(self) -> None:
        self.blocks: list[SampleBlock] = []
        self._cond = threading.Condition()

    def __call__(self, block: SampleBlock) -> None:
        with self._cond:
            self.blocks.append(block)
            self._cond.notify_all()

    @property
    def count(self) -> int:
        with self._cond:
            return sum(len(b) for b in self.blocks)

    def values(self) -> npt.NDArray[np.float32]:
        with self._cond:
            return np.concatenate([b.values for b in self.blocks])

    def ts(self) -> npt.NDArray[np.float64]:
        with self._cond:
            return np.concatenate([b.ts for b in self.blocks])

    def wait_for(self, predicate: Callable[[Sink], bool], timeout: float = 10.0) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self), timeout):
                raise TimeoutError(f"condition not met in {timeout}s; {len(self.blocks)} blocks")

    def wait_samples(self, n: int, timeout: float = 10.0) -> None:
        self.wait_for(lambda s: sum(len(b) for b in s.blocks) >= n, timeout)


@contextmanager
def running(source: Source, emit: Callable[[SampleBlock], None]) -> Iterator[threading.Event]:
    """Run ``source`` in a thread; on exit stop it and require it to end promptly."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            source.run(emit, stop)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(10)
        assert not thread.is_alive(), "source did not stop"
    if errors:
        raise errors[0]
