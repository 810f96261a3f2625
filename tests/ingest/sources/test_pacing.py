"""``StopSignal``: the sources' stop flag keeps ``threading.Event``'s contract for what they use
(``wait`` with and without a timeout, ``is_set``, several waiters), with its cheaper wait."""

from __future__ import annotations

import threading

import pytest

from agent.ingest.sources.pacing import StopSignal


def test_a_timed_wait_returns_false_until_set_then_true_at_once() -> None:
    stop = StopSignal()
    assert stop.wait(0.001) is False
    assert stop.wait(0) is False
    assert stop.wait(-1.0) is False  # a deadline already passed: no sleep, no error
    assert not stop.is_set()
    stop.set()
    stop.set()  # idempotent
    assert stop.is_set()
    assert stop.wait(0) is True
    assert stop.wait(10) is True
    assert stop.wait() is True


def test_every_waiter_wakes_when_it_is_set() -> None:
    stop = StopSignal()
    started = threading.Barrier(5)
    woke: list[bool] = []
    lock = threading.Lock()

    def waiter() -> None:
        started.wait()
        got = stop.wait(None if len(woke) % 2 else 600)  # untimed and timed waiters
        with lock:
            woke.append(got)

    threads = [threading.Thread(target=waiter) for _ in range(4)]
    for t in threads:
        t.start()
    started.wait()
    stop.set()
    for t in threads:
        t.join(60)
        assert not t.is_alive()
    assert woke == [True] * 4


def test_it_cannot_be_cleared() -> None:
    stop = StopSignal()
    with pytest.raises(TypeError):
        stop.clear()
