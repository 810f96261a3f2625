"""The command source: lines in, bad lines counted, restarts with backoff, clean termination."""

from __future__ import annotations

import itertools
import logging
import os
import random
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.backoff import Backoff, backoff_delay
from agent.config import CommandSource
from agent.errors import SourceError
from agent.ingest.sources import CommandProcess, build_source
from agent.ingest.sources.command import LineSplitter
from tests.ingest.sources._sink import Sink, make_ctx, running


def script(tmp_path: Path, body: str) -> list[str]:
    path = tmp_path / "sensor.py"
    path.write_text("import os, signal, subprocess, sys, time\n" + textwrap.dedent(body))
    return [sys.executable, str(path)]


def cfg(argv: list[str], **kw: Any) -> CommandSource:
    return CommandSource.model_validate({"argv": argv, **kw})


def process_gone(pid: int) -> bool:
    """Dead: no such process, or a zombie left to whoever reaps orphans here."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def wait_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process_gone(pid):
            return True
        time.sleep(0.02)  # another process's death has no event we can await
    return False


def logged_delays(caplog: pytest.LogCaptureFixture) -> list[float]:
    """The restart delays the source logged, in order."""
    delays = []
    for record in caplog.records:
        if "restarting in" in record.getMessage():
            assert isinstance(record.args, tuple)
            delay = record.args[-1]
            assert isinstance(delay, float)
            delays.append(delay)
    return delays


def test_samples_and_every_bad_line_reason(tmp_path: Path) -> None:
    argv = script(
        tmp_path,
        """
        out = sys.stdout.buffer
        out.write(b"[1, 1, 1]\\n")
        out.write(b"\\n")                                   # blank: ignored
        out.write(b"[1, 2\\n")                              # bad_json
        out.write(b"[1, 2, \\xff]\\n")                      # invalid_utf8
        out.write(b'["a", 2, 3]\\n')                        # non_numeric
        out.write(b"[1, 2]\\n")                             # wrong_shape
        out.write(b"[1, Infinity, 3]\\n")                   # not_finite
        out.write(b'{"values": [1, 2, 3], "ts": "x"}\\n')   # bad_timestamp
        out.write(b"[" + b"1, " * 100 + b"1]\\n")           # oversized
        out.write(b'{"values": [[2, 2, 2], [3, 3, 3]], "ts": [5, 6]}\\n')
        out.flush()
        time.sleep(60)
        """,
    )
    ctx = make_ctx()
    source = CommandProcess(cfg(argv, max_line_bytes=200), ctx)
    sink = Sink()
    with running(source, sink):
        sink.wait_samples(3)
    np.testing.assert_array_equal(sink.values(), [[1, 1, 1], [2, 2, 2], [3, 3, 3]])
    assert sink.ts()[1:].tolist() == [5, 6]
    assert ctx.metrics.counters_by_reason("samples_rejected") == {
        r: 1
        for r in (
            "bad_json",
            "invalid_utf8",
            "non_numeric",
            "wrong_shape",
            "not_finite",
            "bad_timestamp",
            "oversized",
        )
    }
    assert ctx.metrics.counters_by_reason("source_restarts") == {}


def test_stderr_goes_to_the_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    argv = script(
        tmp_path,
        """
        print("i2c bus 1: sensor at 0x68", file=sys.stderr, flush=True)
        print("[1, 2, 3]", flush=True)
        time.sleep(60)
        """,
    )
    source = CommandProcess(cfg(argv), make_ctx())
    sink = Sink()
    with caplog.at_level(logging.WARNING), running(source, sink):
        sink.wait_samples(1)
        deadline = time.monotonic() + 5
        while "sensor at 0x68" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.02)  # stderr is read on the source thread; nothing to await
    assert "command source sensor: i2c bus 1: sensor at 0x68" in caplog.text


def test_restarts_with_backoff_and_samples_keep_coming(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    argv = script(
        tmp_path,
        """
        print(f"[{os.getpid()}, 1, 2]")
        print('["oops", 1, 2]')
        sys.exit(3)
        """,
    )
    ctx = make_ctx()
    c = cfg(argv, restart_backoff_min_s=0.05, restart_backoff_max_s=0.2)
    source = CommandProcess(c, ctx, rng=random.Random(1))
    sink = Sink()
    with (
        caplog.at_level(logging.WARNING, logger="agent.ingest.sources.command"),
        running(source, sink),
    ):
        sink.wait_samples(5, timeout=20)
    pids = sink.values()[:, 0]
    assert len(set(pids.tolist())) == len(pids), "every sample came from a new process"
    assert ctx.metrics.counter("source_restarts", "sensor") >= 4
    assert ctx.metrics.counter("samples_rejected", "non_numeric") >= 4
    delays = logged_delays(caplog)
    assert delays[0] == 0.05
    assert 0.1 <= delays[2] <= 0.2, "the delay grew"
    assert all(d <= 0.2 for d in delays), "and is capped"
    assert "exited with code 3" in caplog.text


def test_backoff_resets_after_a_stable_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    argv = script(tmp_path, 'print("[1, 2, 3]")\n')
    c = cfg(argv, restart_backoff_min_s=0.05, restart_backoff_max_s=1.0)
    source = CommandProcess(c, make_ctx(), stable_after_s=0.0)
    sink = Sink()
    with (
        caplog.at_level(logging.WARNING, logger="agent.ingest.sources.command"),
        running(source, sink),
    ):
        sink.wait_samples(4, timeout=20)
    delays = logged_delays(caplog)
    assert len(delays) >= 3
    assert set(delays) == {0.05}


def test_backoff_delay_bounds() -> None:
    rng = random.Random(0)
    for failures in range(40):
        base = min(60.0, 1.0 * 2**failures)
        for _ in range(20):
            d = backoff_delay(failures, 1.0, 60.0, rng)
            assert max(1.0, base / 2) <= d <= base
    assert backoff_delay(0, 1.0, 60.0, rng) == 1.0


def test_stop_terminates_the_whole_process_group(tmp_path: Path) -> None:
    argv = script(
        tmp_path,
        """
        signal.signal(signal.SIGTERM, signal.SIG_IGN)          # a stubborn sensor script
        helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        print(f"[{os.getpid()}, {helper.pid}, 0]", flush=True)
        time.sleep(60)
        """,
    )
    source = CommandProcess(cfg(argv), make_ctx(), term_grace_s=0.3)
    sink = Sink()
    with running(source, sink) as stop:
        sink.wait_samples(1)
        t0 = time.monotonic()
        stop.set()
    assert time.monotonic() - t0 < 3.0
    pid, helper, _ = (int(v) for v in sink.values()[0])
    assert source.pid is None
    assert process_gone(pid), "the child was killed and reaped"
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # already reaped by the source
    assert wait_gone(helper), "its helper was killed too"


def test_polite_child_stops_on_sigterm_at_once(tmp_path: Path) -> None:
    argv = script(tmp_path, 'print("[1, 2, 3]", flush=True)\ntime.sleep(60)\n')
    source = CommandProcess(cfg(argv), make_ctx(), term_grace_s=5.0)
    sink = Sink()
    with running(source, sink) as stop:
        sink.wait_samples(1)
        pid = source.pid
        t0 = time.monotonic()
        stop.set()
    assert time.monotonic() - t0 < 1.0, "no waiting out the grace period"
    assert pid is not None and process_gone(pid)


def test_child_that_leaves_a_helper_behind_is_cleaned_up_on_exit(tmp_path: Path) -> None:
    argv = script(
        tmp_path,
        """
        helper = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(60)"], stdout=subprocess.DEVNULL
        )
        print(f"[{helper.pid}, 0, 0]", flush=True)
        """,
    )
    ctx = make_ctx()
    source = CommandProcess(cfg(argv, restart_backoff_min_s=5.0, restart_backoff_max_s=5.0), ctx)
    sink = Sink()
    with running(source, sink):
        sink.wait_samples(1)
        helper = int(sink.values()[0, 0])
        assert wait_gone(helper), "the orphaned helper was killed after the child exited"


def test_program_not_found_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not found"):
        build_source(cfg([str(tmp_path / "no-such-sensor")]), make_ctx())
    (tmp_path / "not-executable").write_text("#!/bin/sh\n")
    with pytest.raises(SourceError, match="not executable"):
        build_source(cfg([str(tmp_path / "not-executable")]), make_ctx())


def test_emit_may_block_without_losing_lines(tmp_path: Path) -> None:
    argv = script(tmp_path, 'for i in range(2000):\n    print(f"[{i}, 0, 0]")\ntime.sleep(60)\n')
    source = CommandProcess(cfg(argv), make_ctx())
    sink = Sink()
    gate = threading.Event()

    def slow_emit(block: Any) -> None:
        gate.wait(5)  # the pipeline's queue is full until the gate opens
        sink(block)

    with running(source, slow_emit):
        gate.set()
        sink.wait_samples(2000)
    np.testing.assert_array_equal(sink.values()[:, 0], np.arange(2000))


# ----------------------------------------------------------------------------- line splitting


@settings(max_examples=200, deadline=None)
@given(
    lines=st.lists(st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")), max_size=20),
    cuts=st.lists(st.integers(0, 400), max_size=10),
)
def test_line_splitter_is_independent_of_chunking(lines: list[bytes], cuts: list[int]) -> None:
    limit = 15
    stream = b"".join(line + b"\n" for line in lines)
    splitter = LineSplitter(limit)
    got: list[bytes | None] = []
    edges = [0, *sorted(c for c in cuts if c < len(stream)), len(stream)]
    for a, b in itertools.pairwise(edges):
        got += splitter.feed(stream[a:b])
    got += splitter.flush()
    assert got == [None if len(line) > limit else line for line in lines]


def test_line_splitter_never_buffers_more_than_the_limit() -> None:
    splitter = LineSplitter(10)
    assert splitter.feed(b"x" * 25) == [None]
    assert splitter.feed(b"y" * 1000) == []
    assert splitter.feed(b"zz\nok\npart") == [b"ok"]
    assert splitter.flush() == [b"part"]


def test_a_program_that_cannot_start_is_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    program = tmp_path / "sensor.sh"
    program.write_text('#!/bin/sh\necho "[1, 2, 3]"\nexec sleep 60\n')
    program.chmod(0o755)
    ctx = make_ctx()
    c = cfg([str(program)], restart_backoff_min_s=0.05, restart_backoff_max_s=0.05)
    source = CommandProcess(c, ctx)
    program.chmod(0o644)  # broken after start: e.g. a remounted volume
    sink = Sink()
    with (
        caplog.at_level(logging.WARNING, logger="agent.ingest.sources.command"),
        running(source, sink),
    ):
        deadline = time.monotonic() + 10
        while ctx.metrics.counter("source_restarts", "sensor") < 2:
            assert time.monotonic() < deadline, "no restart attempts"
            time.sleep(0.02)  # restarts are counted on the source thread; nothing to await
        program.chmod(0o755)
        sink.wait_samples(1)
    assert "could not be started" in caplog.text


def test_backoff_doubles_to_its_cap_and_resets() -> None:
    """The MQTT link's reconnect waits: each within [base/2, base], base doubling to the cap."""
    b = Backoff(0.5, 4.0, random.Random(3))
    delays = [b.next_delay() for _ in range(6)]
    for d, base in zip(delays, [0.5, 1.0, 2.0, 4.0, 4.0, 4.0], strict=True):
        assert max(0.5, base / 2) <= d <= base
    b.reset()
    assert b.next_delay() == 0.5
