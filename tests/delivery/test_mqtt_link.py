"""``MqttLink`` against a real Mosquitto: a broker that stops reading never blocks a thread
that publishes, an ack that arrives before its callback is registered still counts, acks never
cross connections, and the birth message follows the subscriptions' SUBACKs."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import agent.delivery.mqtt.client as mqtt_client
from agent.config import MqttSection
from agent.delivery.mqtt import MqttLink, OutgoingMessage, publish_once
from agent.delivery.publisher import PredictionRecord, Publisher
from agent.delivery.spool import Spool
from agent.metrics import Metrics
from tests.broker import Broker
from tests.mqttclient import Collector


def _settings(broker: Broker) -> MqttSection:
    return MqttSection(
        host=broker.host, port=broker.port, reconnect_min_s=0.05, reconnect_max_s=0.2
    )


@contextlib.contextmanager
def running(link: MqttLink) -> Iterator[MqttLink]:
    link.start()
    try:
        assert link.wait_connected(30)
        yield link
    finally:
        link.stop()


@contextlib.contextmanager
def frozen(broker: Broker) -> Iterator[None]:
    """The broker process stopped (SIGSTOP): connections stay open, nothing is read."""
    assert broker.proc is not None
    pid = broker.proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):  # killed while frozen
            os.kill(pid, signal.SIGCONT)


def _wait(cond: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)  # state of another thread, no event to await


def _big(i: int) -> PredictionRecord:
    return PredictionRecord(
        topic="edge/d/prediction/m",
        model_name="m",
        model_version="1",
        stream="s",
        ts=float(i),
        outputs={"blob": "x" * 100_000},
        latency_ms=0.1,
        t_in=0.0,
    )


def test_a_broker_that_stops_reading_never_blocks_an_inline_producer(
    tmp_path: Path, broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """30 MB of predictions towards a broker that reads nothing (far more than the socket
    buffers hold): the source thread publishing inline returns from every submit; the
    network thread holds the rest and delivers it all, in order, once the broker reads."""
    monkeypatch.setattr(mqtt_client._Client, "write_timeout_s", 3600.0)  # never give up here
    link = MqttLink(_settings(broker), "stall")
    spool = Spool(tmp_path / "q.db")
    pub = Publisher(link, spool, "d", 1, Metrics())
    n = 300
    with Collector(broker.host, broker.port, ["edge/d/#"]) as col, running(link):
        pub.start()
        done = threading.Event()

        def source() -> None:  # a sensor at a low rate: it publishes inline
            for i in range(n):
                pub.submit_many([_big(i)], inline=True)
            done.set()

        with frozen(broker):
            t = threading.Thread(target=source, name="source-stalled")
            t.start()
            assert done.wait(120), "a source thread blocked on the stalled socket"
            assert link.connected
        msgs = col.wait_for(lambda m: len(m) >= n, timeout=120)
        t.join()
        pub.stop(10)
        spool.close()  # an open sqlite3 connection is a ResourceWarning on Python 3.13
    assert [json.loads(m.payload)["seq"] for m in msgs[:n]] == list(range(n))


def test_a_socket_stalled_past_the_write_timeout_is_closed_and_redelivered(
    tmp_path: Path, broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mqtt_client._Client, "write_timeout_s", 1.0)
    link = MqttLink(_settings(broker), "stall-timeout")
    spool = Spool(tmp_path / "q.db")
    pub = Publisher(link, spool, "d", 1, Metrics())
    n = 200
    with Collector(broker.host, broker.port, ["edge/d/#"]) as col, running(link):
        pub.start()
        with frozen(broker):
            for i in range(n):
                pub.submit_many([_big(i)], inline=True)
            _wait(lambda: not link.connected, "the stalled connection was not closed")
        msgs = col.wait_for(lambda m: {json.loads(x.payload)["seq"] for x in m} >= set(range(n)))
        pub.stop(10)
        spool.close()
    seqs = [json.loads(m.payload)["seq"] for m in msgs]
    assert sorted(set(seqs)) == list(range(n))  # at least once, nothing lost
    assert link.reconnects >= 1


def test_an_ack_before_its_callback_is_registered_still_counts(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On paho's path (TLS sockets: not a ``_TcpBuffer``), ``publish_many`` registers
    callbacks after the burst is written: a PUBACK handled in between is kept (``_early``)
    and fires the callback at registration, exactly once."""
    link = MqttLink(_settings(broker), "early")
    original = mqtt_client._burst
    monkeypatch.setattr("agent.delivery.mqtt.link._TcpBuffer", _NotTheSocket)

    @contextlib.contextmanager
    def slow_burst(client: object) -> Iterator[None]:
        with original(client):  # type: ignore[arg-type]
            yield
        # written: wait until the network thread has handled the PUBACKs
        _wait(lambda: len(link._early) >= 3, "no PUBACK arrived")

    acked: list[int] = []
    with running(link):
        monkeypatch.setattr("agent.delivery.mqtt.link._burst", slow_burst)
        msgs = [OutgoingMessage(f"early/{i}", b"x") for i in range(3)]
        callbacks: list[Callable[[], None]] = [
            lambda i=i: acked.append(i)  # type: ignore[misc]
            for i in range(3)
        ]
        sent = link.publish_many(list(zip(msgs, callbacks, strict=True)))
        assert sent == 3
        assert sorted(acked) == [0, 1, 2]
        assert not link._early


class _NotTheSocket:
    """Stands for ``_TcpBuffer`` in the link's type check: nothing is one, so paho's path."""


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_our_own_packets_are_acked_once_each_and_paho_still_gets_its_own(
    broker: Broker, protocol: str
) -> None:
    """Plain TCP: the link encodes the PUBLISH packets itself and takes their PUBACKs off the
    stream by packet id (each callback exactly once, none left registered); what paho
    published itself (a QoS 1 message through ``publish``) and an incoming subscription
    message still reach paho, in between, on both protocol versions."""
    settings = MqttSection(
        host=broker.host,
        port=broker.port,
        reconnect_min_s=0.05,
        reconnect_max_s=0.2,
        protocol=protocol,  # type: ignore[arg-type]
    )
    link = MqttLink(settings, f"own-{protocol}")
    got: list[bytes] = []
    heard = threading.Event()

    def handler(topic: str, payload: bytes) -> None:
        got.append(payload)
        heard.set()

    link.subscribe("own/in", 1, handler)
    acked: list[int] = []
    paho_acked = threading.Event()
    with (
        Collector(broker.host, broker.port, ["own/out/#"]) as col,
        running(link),
    ):
        big = b"y" * 70_000  # a 3-byte remaining length, split over several reads
        msgs = [OutgoingMessage(f"own/out/{i}", big if i == 7 else b"x%d" % i) for i in range(50)]
        callbacks: list[Callable[[], None]] = [
            lambda i=i: acked.append(i)  # type: ignore[misc]
            for i in range(50)
        ]
        assert link.publish(OutgoingMessage("own/out/paho", b"p"), paho_acked.set)
        assert link.publish_many(list(zip(msgs, callbacks, strict=True))) == 50
        publish_once(settings, "own-feeder", [OutgoingMessage("own/in", b"hello")])
        _wait(lambda: len(acked) == 50, f"acks: {sorted(acked)}")
        assert paho_acked.wait(30)
        assert heard.wait(30)
        col.wait_for(lambda m: len(m) >= 51)
        sock = link._client.socket() if link._client else None
        assert isinstance(sock, mqtt_client._TcpBuffer)
        assert sock.acks == {}
    assert sorted(acked) == list(range(50))
    assert got == [b"hello"]


def test_acks_never_cross_connections(broker: Broker) -> None:
    """A message sent on a connection that dies unacknowledged never gets its callback, even
    when the next connection reuses its message id and acknowledges that one."""
    link = MqttLink(_settings(broker), "gens")
    old_acked = threading.Event()
    new_acked = threading.Event()
    with running(link):
        gen = link.generation
        with frozen(broker):
            assert link.publish_many([(OutgoingMessage("gens/a", b"a"), old_acked.set)]) == 1
            broker.stop()  # killed while frozen: the connection dies, the PUBACK never sent
        broker.start()
        _wait(lambda: link.connected and link.generation > gen, "no new connection")
        assert link.publish_many([(OutgoingMessage("gens/b", b"b"), new_acked.set)]) == 1
        assert new_acked.wait(30)
    assert not old_acked.is_set()


def _setter(event: threading.Event) -> Callable[[str, bytes], None]:
    return lambda topic, payload: event.set()


def test_birth_comes_after_the_subscriptions_are_acknowledged(broker: Broker) -> None:
    """Whoever sees 'online' may publish to the device at once, and it arrives."""
    for attempt in range(10):
        got = threading.Event()
        link = MqttLink(
            _settings(broker),
            f"birth-{attempt}",
            birth=[OutgoingMessage(f"dev{attempt}/status", b"online", 1, False)],
        )
        link.subscribe(f"dev{attempt}/in", 1, _setter(got))
        with Collector(broker.host, broker.port, [f"dev{attempt}/status"]) as col:
            link.start()
            try:
                col.wait_for(lambda m: len(m) >= 1)
                publish_once(
                    _settings(broker),
                    f"sender-{attempt}",
                    [OutgoingMessage(f"dev{attempt}/in", b"1")],
                )
                assert got.wait(30), f"attempt {attempt}: the message sent on 'online' was lost"
            finally:
                link.stop()
