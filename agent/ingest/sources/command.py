"""The command source: spawn a program and read JSON samples from its standard output.

This is the adapter for any I2C / serial / vendor-SDK sensor script: it prints one JSON
sample (or several) per line, in any form ``agent.ingest.sources.parse`` accepts. Its stderr is
forwarded to our log (rate-limited). Lines longer than ``max_line_bytes`` are counted as
``oversized`` and skipped without ever being buffered whole.

When the program exits or dies it is restarted after a capped, jittered exponential backoff
(``restart_backoff_min_s`` .. ``restart_backoff_max_s``), reset once a run has lasted
``stable_after_s``; every restart counts in ``source_restarts{reason=<source name>}``.

The program runs in its own session (process group). On stop, and after it exits, the whole
group gets SIGTERM, then SIGKILL after a short grace, and the program is reaped: no zombies
and no orphaned helpers. Python children get ``PYTHONUNBUFFERED=1`` so their lines arrive as
they are printed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import selectors
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from agent.backoff import backoff_delay
from agent.config import CommandSource as CommandConfig
from agent.errors import SampleError, SourceError
from agent.ingest.samples import SampleBlock
from agent.ingest.sources.base import Emit, SourceContext
from agent.ingest.sources.parse import parse_json

log = logging.getLogger(__name__)

POLL_S = 0.1
"""Longest the reader waits before looking at ``stop`` and the child's state again."""
TERM_GRACE_S = 2.0
STABLE_AFTER_S = 30.0
READ_CHUNK = 65536
STDERR_LINE_BYTES = 2048
MAX_DRAIN_READS = 64


_SYSTEMD_ONLY_VARS = (
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
)
"""systemd hands these to the agent alone (``NotifyAccess=main`` rejects others' messages)."""


def child_environ(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a process we start (a sensor script): without the notify socket and
    watchdog variables, which are ours alone (``NotifyAccess=main`` would reject its messages).
    """
    env = os.environ if environ is None else environ
    return {k: v for k, v in env.items() if k not in _SYSTEMD_ONLY_VARS}


class LineSplitter:
    """Cuts a byte stream into lines of at most ``max_bytes``; a longer line becomes None.

    Never holds more than ``max_bytes`` of an unfinished line: the rest of an oversized line
    is dropped as it arrives.
    """

    def __init__(self, max_bytes: int) -> None:
        self._max = max_bytes
        self._buf = b""
        self._skipping = False  # inside an oversized line, already reported

    def feed(self, data: bytes) -> list[bytes | None]:
        lines = (self._buf + data).split(b"\n")
        self._buf = lines.pop()
        out: list[bytes | None] = []
        for line in lines:
            if self._skipping:
                self._skipping = False  # the end of the oversized line
                continue
            out.append(None if len(line) > self._max else line)
        if len(self._buf) > self._max:
            self._buf = b""
            if not self._skipping:
                self._skipping = True
                out.append(None)
        return out

    def flush(self) -> list[bytes | None]:
        """The unfinished last line, at end of stream."""
        rest, self._buf = self._buf, b""
        skipping, self._skipping = self._skipping, False
        return [rest] if rest and not skipping else []


def _exited(proc: subprocess.Popen[bytes]) -> bool:
    """Has the child exited? Does not reap it, so its process group id stays ours."""
    if proc.returncode is not None:
        return True
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> bool:
    """Signal the child's process group; False when the group no longer exists."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:  # the child moved itself into a group we do not own
        pass
    if proc.returncode is None:
        proc.send_signal(sig)
    return True


def _group_alive(pgid: int) -> bool:
    """Does process group ``pgid`` have a member that is not a zombie?

    Zombies count for ``killpg`` but are harmless: orphans are reaped by init, whenever it
    gets to it. Without /proc, any member counts.
    """
    proc_dir = Path("/proc")
    if not proc_dir.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True
    for entry in proc_dir.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue  # it just exited
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != b"Z":
            return True
    return False


def terminate(proc: subprocess.Popen[bytes], grace_s: float = TERM_GRACE_S) -> None:
    """SIGTERM the child's group, SIGKILL what is left after ``grace_s``, reap the child."""
    deadline = time.monotonic() + grace_s
    try:
        _signal_group(proc, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
        # Helpers it left behind keep the group (and its id) alive: give them the same grace.
        while time.monotonic() < deadline and _group_alive(proc.pid):
            time.sleep(0.02)  # a process group has no exit event to wait on
        _signal_group(proc, signal.SIGKILL)
        proc.wait()
    finally:
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def _how(proc: subprocess.Popen[bytes]) -> str:
    code = proc.returncode
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


class CommandProcess:
    """Runs ``argv`` and emits what it prints; restarts it with backoff until stopped."""

    def __init__(
        self,
        cfg: CommandConfig,
        ctx: SourceContext,
        *,
        stable_after_s: float = STABLE_AFTER_S,
        term_grace_s: float = TERM_GRACE_S,
        rng: random.Random | None = None,
    ) -> None:
        if shutil.which(cfg.argv[0]) is None:
            raise SourceError(
                f"command source {cfg.name}: program {cfg.argv[0]!r} not found or not executable"
            )
        self.name = cfg.name
        self.cfg = cfg
        self.ctx = ctx
        self.stable_after_s = stable_after_s
        self.term_grace_s = term_grace_s
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not crypto
        self.pid: int | None = None
        """Process id of the running child (None between runs)."""
        self.restarts = 0

    def run(self, emit: Emit, stop: threading.Event) -> None:
        cfg = self.cfg
        failures = 0
        while not stop.is_set():
            started = time.monotonic()
            why = self._run_once(emit, stop)
            if stop.is_set():
                return
            ran = time.monotonic() - started
            if ran >= self.stable_after_s:
                failures = 0
            delay = backoff_delay(
                failures, cfg.restart_backoff_min_s, cfg.restart_backoff_max_s, self._rng
            )
            failures += 1
            log.warning(
                "command source %s: %s %s after %.1fs; restarting in %.2fs",
                self.name,
                cfg.argv[0],
                why,
                ran,
                delay,
            )
            if stop.wait(delay):
                return
            self.restarts += 1
            self.ctx.metrics.inc("source_restarts", reason=self.name)

    def _run_once(self, emit: Emit, stop: threading.Event) -> str:
        """Run the program until it ends or ``stop``; say how it ended."""
        try:
            proc = subprocess.Popen(
                self.cfg.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                env={**child_environ(), "PYTHONUNBUFFERED": "1"},
            )
        except OSError as exc:
            return f"could not be started ({exc})"
        self.pid = proc.pid
        log.info("command source %s: started %s (pid %d)", self.name, self.cfg.argv, proc.pid)
        try:
            self._pump(proc, emit, stop)
        finally:
            terminate(proc, self.term_grace_s)
            self.pid = None
        return _how(proc)

    def _pump(self, proc: subprocess.Popen[bytes], emit: Emit, stop: threading.Event) -> None:
        assert proc.stdout is not None and proc.stderr is not None
        out, err = proc.stdout.fileno(), proc.stderr.fileno()
        splitters = {
            out: LineSplitter(self.cfg.max_line_bytes),
            err: LineSplitter(STDERR_LINE_BYTES),
        }
        drains = 0
        with selectors.DefaultSelector() as sel:
            sel.register(out, selectors.EVENT_READ)
            sel.register(err, selectors.EVENT_READ)
            while not stop.is_set():
                exited = _exited(proc)
                drains += exited
                # Once it has exited, take what is left in the pipes (bounded: a helper it
                # left behind could keep writing) and go.
                ready = sel.select(0 if exited else POLL_S) if sel.get_map() else []
                if exited and (not ready or drains > MAX_DRAIN_READS):
                    return
                if not ready and not sel.get_map():
                    stop.wait(POLL_S)  # both pipes closed, the child still running
                for key, _ in ready:
                    data = os.read(key.fd, READ_CHUNK)
                    lines = splitters[key.fd].feed(data) if data else splitters[key.fd].flush()
                    if not data:
                        sel.unregister(key.fd)
                    if key.fd == out:
                        self._samples(lines, emit)
                    else:
                        self._stderr(lines)

    def _samples(self, lines: list[bytes | None], emit: Emit) -> None:
        blocks: list[SampleBlock] = []
        for line in lines:
            try:
                if line is None:
                    raise SampleError(
                        "oversized", f"line longer than {self.cfg.max_line_bytes} bytes"
                    )
                if line.strip():
                    blocks.append(parse_json(self.name, line, self.cfg.channels))
            except SampleError as exc:
                self.ctx.reject(self.name, exc)
        if len(blocks) == 1:
            emit(blocks[0])
        elif blocks:  # everything one read brought, as one block
            ts = np.concatenate([b.ts for b in blocks])
            emit(SampleBlock(self.name, ts, np.concatenate([b.values for b in blocks])))

    def _stderr(self, lines: list[bytes | None]) -> None:
        for line in lines:
            text = "(line too long)" if line is None else line.decode("utf-8", "replace")
            if text.strip():
                self.ctx.warn.warning(
                    f"{self.name}:stderr", "command source %s: %s", self.name, text.rstrip()
                )
