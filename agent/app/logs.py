"""Logging set-up for the entry points (the only place that configures handlers).

- ``text`` (default): ``time LEVEL logger: message``; under systemd (stderr is the journal)
  each line starts with its syslog priority instead of a time, ``<4>`` for a warning, so
  ``journalctl -p warning`` shows the agent's warnings (journald strips the prefix and keeps
  its own timestamp);
- ``json``: one JSON object per line, for log shippers; under systemd with the same prefix
  (journald stores the bare JSON).

The handler writes to ``agent.terminal.console()``, a copy of file descriptor 2, so the
runtime's C++ lines, which ``agent.model.native_stderr`` catches by pointing fd 2 at a pipe
for a moment, come back through logging instead of looping into it.
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import TextIO

from agent.terminal import console

# syslog priorities (sd-daemon(3)): what journald reads from a "<N>" line prefix
SYSLOG_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


def syslog_priority(levelno: int) -> int:
    """The syslog priority of a logging level (levels in between round to the more severe)."""
    for level in sorted(SYSLOG_PRIORITY, reverse=True):
        if levelno >= level:
            return SYSLOG_PRIORITY[level]
    return 7


def under_journal(environ: Mapping[str, str] | None = None, stream: TextIO | None = None) -> bool:
    """True when our stderr is systemd's journal stream: ``JOURNAL_STREAM`` names its
    ``device:inode`` (systemd.exec(5)); without it, ``INVOCATION_ID`` (any systemd unit) and a
    stderr that is not a terminal."""
    env = os.environ if environ is None else environ
    out = sys.stderr if stream is None else stream
    journal = env.get("JOURNAL_STREAM")
    try:
        fd = out.fileno()
        st = os.fstat(fd)
    except (OSError, ValueError, io.UnsupportedOperation):
        return False
    if journal:
        dev, _, ino = journal.partition(":")
        return f"{st.st_dev}:{st.st_ino}" == f"{dev}:{ino}"
    return bool(env.get("INVOCATION_ID")) and not os.isatty(fd)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for journald and log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        obj = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return json.dumps(obj, ensure_ascii=False)


class PriorityFormatter(logging.Formatter):
    """Wraps a formatter: ``<N>`` before every line of the record (a traceback's lines too,
    since journald reads each line as an entry of its own)."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self._inner = inner

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in self._inner.format(record).split("\n"))


def setup_logging(
    level: str = "info", fmt: str = "text", environ: Mapping[str, str] | None = None
) -> None:
    """Configure the root logger: text or JSON, journald priorities when under systemd."""
    journal = under_journal(environ)
    handler = logging.StreamHandler(console())
    formatter: logging.Formatter
    if fmt == "json":
        formatter = JsonFormatter()
    elif journal:
        formatter = logging.Formatter("%(levelname)s %(name)s: %(message)s")  # journald times
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        formatter.converter = time.gmtime
    handler.setFormatter(PriorityFormatter(formatter) if journal else formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
