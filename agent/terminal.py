"""What may be written to a stream: colours and terminal control codes only to a terminal.

One rule for every command line (edge-agent, edge-fleet, edge-convert):

- ``is_terminal(stream)``: the stream is a TTY and ``TERM`` is not ``dumb``: cursor movement,
  screen clearing and ``\\r`` redraws are allowed. Otherwise (a pipe, a file, journald) write
  plain lines: no control codes at all.
- ``use_color(stream)``: a terminal and ``NO_COLOR`` unset or empty (https://no-color.org);
  ``FORCE_COLOR`` (non-empty) turns colour on even into a pipe, as many tools do.
- ``paint(text, color, stream)``: ``text`` in an ANSI colour when ``use_color``, else as is.
- ``CLEAR_SCREEN``: the sequence a ``--watch`` redraw starts with, on a terminal only.
- ``console()``: a text stream on a *copy* of file descriptor 2, made once. Log handlers and
  progress bars write there, so they still reach the user while fd 2 itself is briefly
  pointed at a pipe to catch a native library's output (``agent.model.native_stderr``).

At the bottom of the import layers (standard library only), so the fleet tool, the agent's
command line and the converters can all use it.
"""

from __future__ import annotations

import io
import os
import sys
import threading
from collections.abc import Mapping
from typing import TextIO

CLEAR_SCREEN = "\033[2J\033[H"
_COLORS = {"red": 31, "green": 32, "yellow": 33, "blue": 34, "bold": 1, "dim": 2}


def _env(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def is_terminal(stream: TextIO | None = None, environ: Mapping[str, str] | None = None) -> bool:
    """``stream`` (default stdout) is an interactive terminal that understands control codes."""
    s = sys.stdout if stream is None else stream
    try:
        tty = s.isatty()
    except (AttributeError, ValueError):
        return False
    return tty and _env(environ).get("TERM", "") != "dumb"


def use_color(stream: TextIO | None = None, environ: Mapping[str, str] | None = None) -> bool:
    """Colour for ``stream``: a terminal and no ``NO_COLOR``; ``FORCE_COLOR`` wins over both."""
    env = _env(environ)
    if env.get("NO_COLOR"):
        return False
    if env.get("FORCE_COLOR"):
        return True
    return is_terminal(stream, env)


def paint(
    text: str, color: str, stream: TextIO | None = None, environ: Mapping[str, str] | None = None
) -> str:
    """``text`` in ``color`` (red, green, yellow, blue, bold, dim) when ``use_color``."""
    if not use_color(stream, environ):
        return text
    return f"\033[{_COLORS[color]}m{text}\033[0m"


_CONSOLE: TextIO | None = None
_CONSOLE_LOCK = threading.Lock()


def console() -> TextIO:
    """The user's stderr, on a copy of fd 2 made at the first call (see the module doc);
    ``sys.stderr`` itself where there is no real fd 2 (a test harness capturing it)."""
    global _CONSOLE  # noqa: PLW0603 (one per process, made on first use)
    with _CONSOLE_LOCK:
        if _CONSOLE is None or _CONSOLE.closed:
            try:
                fd = os.dup(sys.stderr.fileno())
            except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
                return sys.stderr
            _CONSOLE = os.fdopen(fd, "w", buffering=1, encoding="utf-8", errors="backslashreplace")
        return _CONSOLE
