"""Progress of long build-host steps: a live line on a terminal, plain log lines otherwise.

``step("converting int8")`` wraps a step of unknown length (a spinner with elapsed seconds on
a TTY); ``Progress("verifying", total=n)`` counts through known work: on a terminal a tqdm
bar with counts, rate and ETA, with log lines printed above it (never through it). When
stderr is not a terminal (CI, a pipe, watch mode under systemd; ``agent.terminal`` decides)
both log a start and a finish line, and a count with an ETA at most every ``LOG_EVERY_S``,
so logs stay readable and free of control codes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from agent.terminal import console, is_terminal

log = logging.getLogger(__name__)

_SPINNER = "|/-\\"
LOG_EVERY_S = 10.0


def interactive(stream: TextIO | None = None) -> bool:
    """Whether progress should be drawn (the stream is a terminal, not a dumb one)."""
    return is_terminal(stream if stream is not None else console())


class _AboveTheBar(logging.Handler):
    """Stands in for a console handler while a bar is drawn: each record is printed above
    the bar (``tqdm.write`` clears it, prints, draws it again), never through it."""

    def __init__(self, inner: logging.StreamHandler[TextIO]) -> None:
        super().__init__(inner.level)
        self.inner = inner
        self.setFormatter(inner.formatter)

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=self.inner.stream)
        except Exception:
            self.handleError(record)


def _swap_console_handlers(stream: TextIO, to_bar: bool) -> None:
    root = logging.getLogger()
    out: list[logging.Handler] = []
    for h in root.handlers:
        if to_bar and type(h) is logging.StreamHandler and h.stream is stream:
            out.append(_AboveTheBar(h))
        elif not to_bar and isinstance(h, _AboveTheBar):
            out.append(h.inner)
        else:
            out.append(h)
    root.handlers[:] = out


class Progress:
    """Counts work done: a tqdm bar (``label: 40%|####  | 40/100 [00:02<00:03, 19.9 it/s]``)
    on a terminal, log lines otherwise."""

    def __init__(
        self, label: str, total: int | None = None, stream: TextIO | None = None, unit: str = "it"
    ) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.done = 0
        self._stream = stream if stream is not None else console()
        self._tty = interactive(self._stream)
        self._start = time.monotonic()
        self._logged_at = self._start
        self._bar: Any = None

    def __enter__(self) -> Progress:
        self._start = self._logged_at = time.monotonic()
        if self._tty:
            from tqdm import tqdm

            self._bar = tqdm(
                total=self.total,
                desc=self.label,
                unit=self.unit,
                file=self._stream,
                mininterval=0.1,
                dynamic_ncols=True,
            )
            _swap_console_handlers(self._stream, to_bar=True)  # log lines above the bar
        else:
            log.info("%s: started%s", self.label, f" ({self.total} items)" if self.total else "")
        return self

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY_S and self.done != self.total:
            self._logged_at = now
            elapsed = now - self._start
            if self.total:
                eta = elapsed / max(self.done, 1) * (self.total - self.done)
                log.info("%s: %d/%d, %.0fs left", self.label, self.done, self.total, eta)
            else:
                log.info("%s: %d after %.0fs", self.label, self.done, elapsed)

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        elapsed = time.monotonic() - self._start
        if self._bar is not None:
            if exc_type is not None:
                self._bar.set_postfix_str("failed")
            self._bar.close()
            _swap_console_handlers(self._stream, to_bar=False)
        elif exc_type is None:
            log.info("%s: done in %.1fs", self.label, elapsed)
        else:
            log.info("%s: failed after %.1fs", self.label, elapsed)


@contextmanager
def step(label: str, stream: TextIO | None = None) -> Iterator[None]:
    """A step of unknown length: a spinner with elapsed time on a terminal, log lines otherwise."""
    out = stream if stream is not None else console()
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
