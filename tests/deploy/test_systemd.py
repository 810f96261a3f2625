"""agent.app.systemd against a real AF_UNIX datagram socket set as NOTIFY_SOCKET."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.app.systemd import (
    Heartbeat,
    Notifier,
    WatchdogPinger,
    watchdog_interval,
)
from agent.ingest.sources.command import child_environ
from tests.deploy.notify_listener import Message, NotifyListener

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def listener() -> Iterator[NotifyListener]:
    lst = NotifyListener()
    try:
        yield lst
    finally:
        lst.close()


@pytest.fixture
def notifier(listener: NotifyListener) -> Iterator[Notifier]:
    with Notifier(listener.env) as n:
        yield n


class Gate:
    """A health check the test flips, counting the answers it gave."""

    def __init__(self) -> None:
        self.healthy = True
        self.raises = False
        self.unhealthy_answers = 0
        self._cond = threading.Condition()

    def __call__(self) -> bool:
        with self._cond:
            answer = self.healthy and not self.raises
            if not answer:
                self.unhealthy_answers += 1
            self._cond.notify_all()
            if self.raises:
                raise RuntimeError("health check broke")
            return answer

    def wait_unhealthy_answers(self, n: int, timeout: float = 5.0) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: self.unhealthy_answers >= n, timeout)


# ----------------------------------------------------------------------------- Notifier


def test_ready_status_stopping_arrive_in_order(
    listener: NotifyListener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", listener.env)
    with Notifier.from_environ() as n:
        assert n.enabled
        assert n.ready("model demo 0.0.0 loaded, pipeline running")
        assert n.status("42 windows/s\nqueue 0")
        assert n.extend_timeout(2.5)
        assert n.stopping()
    got = [listener.recv() for _ in range(4)]
    assert [m.raw for m in got] == [
        b"READY=1\nSTATUS=model demo 0.0.0 loaded, pipeline running",
        b"STATUS=42 windows/s queue 0",
        b"EXTEND_TIMEOUT_USEC=2500000",
        b"STOPPING=1",
    ]
    assert {m.pid for m in got} == {os.getpid()}  # what systemd checks for NotifyAccess=main


def test_socket_path_address() -> None:
    with tempfile.TemporaryDirectory(prefix="sdn-", dir="/tmp") as d:  # short: sun_path is 108
        path = os.path.join(d, "notify")
        lst = NotifyListener(path)
        try:
            with Notifier(path) as n:
                assert n.watchdog()
                assert n.watchdog_trigger()
            assert lst.recv().raw == b"WATCHDOG=1"
            assert lst.recv().raw == b"WATCHDOG=trigger"
        finally:
            lst.close()


def test_reloading_carries_monotonic_time(listener: NotifyListener, notifier: Notifier) -> None:
    assert notifier.reloading()
    fields = listener.recv().fields
    assert fields["RELOADING"] == "1"
    assert int(fields["MONOTONIC_USEC"]) > 0


def test_nothing_happens_without_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    n = Notifier.from_environ()
    assert not n.enabled
    assert not n.ready("x")
    assert not n.status("x")
    assert not n.watchdog()
    assert not n.stopping()
    gate = Gate()
    pinger = WatchdogPinger(n, gate, status=lambda: "x")
    assert pinger.watchdog_enabled  # WATCHDOG_USEC is set, but there is no socket to ping
    assert not pinger.start()
    pinger.stop()
    assert gate.unhealthy_answers == 0 and pinger.pings == 0


def test_unusable_socket_names_disable_and_sends_never_raise(listener: NotifyListener) -> None:
    assert not Notifier("vsock:2:1234").enabled
    assert not Notifier("").enabled
    with Notifier("@edge-agent-test-nobody-listens") as n:
        assert n.enabled
        assert not n.ready()  # ECONNREFUSED is logged, not raised
    with Notifier(listener.env) as n, pytest.raises(ValueError, match="KEY=value"):
        n.notify("READY=1\nSTATUS=x")
    with pytest.raises(ValueError, match="KEY=value"):
        Notifier(None).notify("READY")  # caught even when disabled


def test_watchdog_interval_reads_usec_and_pid() -> None:
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "77"}, pid=77) == 30.0
    # Inherited from a parent: not ours to ping.
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "78"}, pid=77) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "x"}) is None


def test_child_environ_keeps_the_socket_to_ourselves() -> None:
    env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1", "WATCHDOG_PID": "2", "PATH": "/bin"}
    assert child_environ(env) == {"PATH": "/bin"}
    assert env["NOTIFY_SOCKET"] == "@x"  # a copy


def test_pinger_pings_at_half_the_watchdog_interval(notifier: Notifier) -> None:
    env = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    pinger = WatchdogPinger(notifier, Gate(), environ=env)
    assert pinger.watchdog_enabled and pinger.period_s == 15.0


def test_heartbeat_ages_and_starts_fresh() -> None:
    now = [100.0]
    hb = Heartbeat(clock=lambda: now[0])
    assert hb.fresh(5.0)  # a grace period for the first round
    now[0] = 106.0
    assert not hb.fresh(5.0)
    hb.beat()
    now[0] = 107.0
    assert hb.age() == 1.0 and hb.fresh(5.0)


# ----------------------------------------------------------------------------- WatchdogPinger


def test_pings_only_while_healthy(listener: NotifyListener, notifier: Notifier) -> None:
    gate = Gate()
    pinger = WatchdogPinger(notifier, gate, interval_s=0.02)
    assert pinger.start()
    try:
        for _ in range(3):
            assert listener.recv().raw == b"WATCHDOG=1"

        gate.healthy = False
        gate.wait_unhealthy_answers(1)
        listener.pending()  # pings sent before that answer
        gate.wait_unhealthy_answers(5)
        assert listener.pending() == [], "a ping went out while the pipeline was stalled"
        assert pinger.stalled and pinger.withheld >= 5

        gate.healthy = True
        assert listener.recv().raw == b"WATCHDOG=1"
        assert not pinger.stalled
    finally:
        pinger.stop()


def test_a_health_check_that_raises_counts_as_stalled(
    listener: NotifyListener, notifier: Notifier
) -> None:
    gate = Gate()
    gate.raises = True
    pinger = WatchdogPinger(notifier, gate, interval_s=0.02)
    assert pinger.start()
    try:
        gate.wait_unhealthy_answers(3)
        assert listener.pending() == []
        assert pinger.stalled and pinger.pings == 0
    finally:
        pinger.stop()


def test_status_is_sent_when_it_changes(listener: NotifyListener, notifier: Notifier) -> None:
    texts = iter(["starting", "starting", "running 10/s"])
    last = "running 10/s"

    def status() -> str:
        return next(texts, last)

    # No WATCHDOG_USEC: the pinger runs for the status alone.
    pinger = WatchdogPinger(notifier, Gate(), status=status, status_interval_s=0.02, environ={})
    assert not pinger.watchdog_enabled
    assert pinger.start()
    try:
        assert listener.recv().raw == b"STATUS=starting"
        assert listener.recv().raw == b"STATUS=running 10/s"
        assert all(m.raw != b"WATCHDOG=1" for m in listener.collect(0.1))
    finally:
        pinger.stop()


# ----------------------------------------------------------------------------- a whole process


def _wait_for_stall(listener: NotifyListener, deadline_s: float = 15.0) -> list[Message]:
    """Messages up to a STATUS saying stalled that is followed by a quiet watchdog."""
    seen: list[Message] = []
    pings = 0
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        msg = listener.recv(timeout=max(0.01, end - time.monotonic()))
        seen.append(msg)
        fields = msg.fields
        if "WATCHDOG" in fields:
            pings += 1
        if pings >= 3 and fields.get("STATUS", "").endswith("stalled=True"):
            window = listener.collect(0.6)  # 12 ping periods
            seen += window
            if not any("WATCHDOG" in m.fields for m in window):
                return seen
            # A slow machine stalled the healthy phase; the real fault is still to come.
    raise AssertionError(f"pings never stopped; got {[m.raw for m in seen][-10:]}")


@pytest.mark.parametrize("mode", ["hung-inference", "dead-network"])
def test_process_stops_pinging_when_its_pipeline_breaks(
    listener: NotifyListener, mode: str
) -> None:
    env = dict(os.environ, NOTIFY_SOCKET=listener.env, WATCHDOG_USEC="100000")
    # systemd sets WATCHDOG_PID to the main pid: exec keeps the shell's pid ($$).
    proc = subprocess.Popen(
        [
            "/bin/sh",
            "-c",
            'WATCHDOG_PID=$$ exec "$0" -m tests.deploy.watchdog_child "$1"',
            sys.executable,
            mode,
        ],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
    )
    try:
        first = listener.recv(timeout=30)
        assert first.raw == f"READY=1\nSTATUS=mode={mode} starting".encode()
        seen = _wait_for_stall(listener)
        assert proc.stdin is not None
        proc.stdin.close()
        last = listener.recv(timeout=10)
        assert last.raw == b"STOPPING=1\nSTATUS=bye"
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert {m.pid for m in [first, *seen, last]} == {proc.pid}
