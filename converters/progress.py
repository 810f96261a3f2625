"""Progress of long build-host steps: a live line on a terminal, plain log lines otherwise.

``step("converting int8")`` wraps a step of unknown length (a spinner with elapsed seconds on
a TTY); ``Progress("verifying", total=n)`` counts through known work. When stderr is not a
terminal (CI, watch mode under systemd) both only log a start and a finish line, so logs stay
readable.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

log = logging.getLogger(__name__)

_SPINNER = "|/-\\"


def interactive(stream: TextIO | None = None) -> bool:
    """Whether progress should be drawn (the stream is a terminal)."""
    s = stream if stream is not None else sys.stderr
    try:
        return s.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """Counts work done; draws ``label [####    ] n/total`` on a terminal at most 10x a second."""

    def __init__(self, label: str, total: int | None = None, stream: TextIO | None = None) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self._stream = stream if stream is not None else sys.stderr
        self._tty = interactive(self._stream)
        self._start = time.monotonic()
        self._last_draw = 0.0

    def __enter__(self) -> Progress:
        self._start = time.monotonic()
        if not self._tty:
            log.info("%s: started%s", self.label, f" ({self.total} items)" if self.total else "")
        return self

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if self._tty and (now - self._last_draw >= 0.1 or self.done == self.total):
            self._last_draw = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = now - self._start
        if self.total:
            width = 24
            filled = int(width * min(self.done, self.total) / self.total)
            bar = "#" * filled + " " * (width - filled)
            text = f"\r{self.label} [{bar}] {self.done}/{self.total} {elapsed:5.1f}s"
        else:
            text = f"\r{self.label} {self.done} {elapsed:5.1f}s"
        self._stream.write(text)
        self._stream.flush()

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        elapsed = time.monotonic() - self._start
        if self._tty:
            self._draw(time.monotonic())
            self._stream.write(" failed\n" if exc_type else " done\n")
            self._stream.flush()
        elif exc_type is None:
            log.info("%s: done in %.1fs", self.label, elapsed)
        else:
            log.info("%s: failed after %.1fs", self.label, elapsed)


@contextmanager
def step(label: str, stream: TextIO | None = None) -> Iterator[None]:
    """A step of unknown length: a spinner with elapsed time on a terminal, log lines otherwise."""
    out = stream if stream is not None else sys.stderr
    if not interactive(out):
        start = time.monotonic()
        log.info("%s: started", label)
        try:
            yield
        except BaseException:
            log.info("%s: failed after %.1fs", label, time.monotonic() - start)
            raise
        log.info("%s: done in %.1fs", label, time.monotonic() - start)
        return
    stop = threading.Event()
    start = time.monotonic()

    def spin() -> None:
        i = 0
        while not stop.wait(0.1):
            out.write(f"\r{_SPINNER[i % 4]} {label} {time.monotonic() - start:5.1f}s")
            out.flush()
            i += 1

    t = threading.Thread(target=spin, name="progress", daemon=True)
    t.start()
    ok = False
    try:
        yield
        ok = True
    finally:
        stop.set()
        t.join()
        verdict = "done" if ok else "failed"
        out.write(f"\r  {label} {time.monotonic() - start:5.1f}s {verdict}\n")
        out.flush()
