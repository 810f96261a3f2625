"""The TFLite runtime's own stderr lines, into logging.

LiteRT's C++ code writes lines such as ``INFO: Created TensorFlow Lite XNNPACK delegate for
CPU.`` straight to file descriptor 2 when an interpreter is created: past Python's logging, so
they break JSON logs and carry no syslog priority. Python has no switch for that logger's
level, so ``native_stderr_to_logging`` points fd 2 at a pipe while an interpreter is being
built, and a thread reads the pipe and logs each line on the ``litert`` logger (level from its
``INFO:`` / ``WARNING:`` / ``ERROR:`` prefix). Our own log handler writes to a copy of fd 2
taken when logging was set up (``agent.app.logs``), so it is not caught in the pipe.

fd 2 is process-wide: captures are serialised by a lock (interpreters are built rarely: at
start, for an OTA smoke test, for on-demand calls); anything another thread writes to fd 2
during one is logged the same way rather than lost.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from collections.abc import Iterator

log = logging.getLogger("litert")

_LOCK = threading.Lock()
_LEVELS = {
    b"INFO": logging.INFO,
    b"WARNING": logging.WARNING,
    b"ERROR": logging.ERROR,
    b"FATAL": logging.CRITICAL,
    b"VERBOSE": logging.DEBUG,
}

# absl / glog (TensorFlow's C++): "W0000 00:00:1712.5  123 file.cc:45] text" or
# "2024-01-02 03:04:05.678: W tensorflow/core/file.cc:45] text"
_GLOG = re.compile(rb"^(?:\d{4}-\d\d-\d\d [\d:.]+: )?([IWEF])(?:\d{4} [\d:.]+\s+\d+)? [^\]]*\] ")
_GLOG_LEVELS = {
    b"I": logging.INFO,
    b"W": logging.WARNING,
    b"E": logging.ERROR,
    b"F": logging.CRITICAL,
}


def parse_line(line: bytes) -> tuple[int, str] | None:
    """(level, text) of one line a native library wrote; None for a blank one."""
    text = line.rstrip(b"\r\n")
    if not text.strip():
        return None
    m = _GLOG.match(text)
    if m:
        return _GLOG_LEVELS[m.group(1)], text[m.end() :].decode("utf-8", "backslashreplace")
    head, sep, rest = text.partition(b": ")
    level = _LEVELS.get(head.strip()) if sep else None
    if level is None:
        level, rest = logging.WARNING, text
    return level, rest.decode("utf-8", "backslashreplace")


def _pump(fd: int, logger: logging.Logger) -> None:
    buf = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            _emit(logger, line)
    if buf:
        _emit(logger, buf)


def _emit(logger: logging.Logger, line: bytes) -> None:
    parsed = parse_line(line)
    if parsed is not None:
        logger.log(parsed[0], "%s", parsed[1])


@contextlib.contextmanager
def native_stderr_to_logging(
    enabled: bool = True, logger: logging.Logger | None = None
) -> Iterator[None]:
    """While inside, fd 2 goes to ``logger`` (default ``litert``; see the module doc). Does
    nothing when not ``enabled`` or when fd 2 cannot be redirected."""
    if not enabled:
        yield
        return
    with _LOCK:
        try:
            saved = os.dup(2)
        except OSError:
            yield
            return
        r, w = os.pipe()
        reader = threading.Thread(
            target=_pump, args=(r, logger or log), name="native-stderr", daemon=True
        )
        reader.start()
        try:
            os.dup2(w, 2)
            os.close(w)
            yield
        finally:
            os.dup2(saved, 2)  # the pipe's last writer closes: the reader sees EOF
            os.close(saved)
            reader.join(timeout=5.0)
            with contextlib.suppress(OSError):
                os.close(r)
