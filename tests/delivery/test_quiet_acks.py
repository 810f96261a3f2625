"""Quiet acks against a real Mosquitto: at a steady rate the publishing thread takes the acks
of its earlier messages and the network thread is not woken for each PUBACK; every ack still
arrives (when the bursts stop, at once when someone waits for them), incoming messages are
not delayed, and a broker killed meanwhile is noticed at once.

The hold time (``MqttLink.quiet_hold_s``) is set far above every deadline here, so a test
that passes cannot have been rescued by the network thread's periodic turn."""

from __future__ import annotations

import array
import fcntl
import json
import termios
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import pytest

from agent.config import MqttSection, TlsSection
from agent.delivery.mqtt import MqttLink, OutgoingMessage, publish_once
from agent.delivery.publisher import PredictionRecord, Publisher
from agent.delivery.spool import Spool
from agent.metrics import Metrics
from tests.broker import Broker, TlsFiles
from tests.delivery.test_mqtt_link import running
from tests.mqttclient import Collector
from tests.tlsfiles import make_ca

HOLD_S = 600.0  # far beyond every deadline below
DEADLINE_S = 60.0


def _settings(broker: Broker, protocol: Literal["5", "3.1.1"] = "5") -> MqttSection:
    return MqttSection(
        host=broker.host,
        port=broker.port,
        protocol=protocol,
        reconnect_min_s=0.05,
        reconnect_max_s=0.2,
    )


@pytest.fixture
def long_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    """The network thread turns only when woken: no periodic turn rescues a late ack."""
    monkeypatch.setattr(MqttLink, "quiet_hold_s", HOLD_S)
    monkeypatch.setattr(MqttLink, "loop_timeout_s", HOLD_S)


def _wait(cond: Callable[[], bool], what: str, timeout: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)  # state of another thread, no event to await


class Acks:
    """Ack callbacks that record the thread they ran on, with a condition to wait on."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.got: list[tuple[int, str]] = []

    def callback(self, i: int) -> Callable[[], None]:
        def acked() -> None:
            with self.cond:
                self.got.append((i, threading.current_thread().name))
                self.cond.notify_all()

        return acked

    def wait(self, n: int, timeout: float = DEADLINE_S) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: len(self.got) >= n, timeout)

    def threads(self) -> set[str]:
        with self.cond:
            return {t for _, t in self.got}


def _queued(link: MqttLink) -> int:
    """Bytes the kernel holds for the link's socket, unread."""
    client = link._client
    sock = client.socket() if client is not None else None
    if sock is None:
        return 0
    buf = array.array("i", [0])
    try:
        fcntl.ioctl(sock.fileno(), termios.FIONREAD, buf)
    except OSError:
        return 0
    return buf[0]


class Steady:
    """Publishes one message at a time, each once the previous one was acknowledged: its
    PUBACK waits in the socket (or was read): a sensor at a steady rate, whose next
    prediction comes long after the broker answered the last. Message ``i`` gets ack
    callback ``i``; the observer sees every message before the next is sent."""

    def __init__(self, link: MqttLink, col: Collector, acks: Acks, topic: str) -> None:
        self.link, self.col, self.acks, self.topic = link, col, acks, topic
        self.sent = 0

    def __call__(self, n: int) -> None:
        for _ in range(n):
            i = self.sent
            msg = OutgoingMessage(self.topic, str(i).encode())
            assert self.link.publish_many([(msg, self.acks.callback(i))]) == 1
            self.sent += 1
            if self.topic.startswith(self.col.topics[0].rstrip("#")):
                self.col.wait_for(lambda m: len(m) > i)  # noqa: B023 (called here, in the loop)
            _wait(
                lambda: _queued(self.link) > 0 or len(self.acks.got) > i,  # noqa: B023
                f"message {i} was never acknowledged",
            )


@pytest.mark.parametrize(
    ("protocol", "topic"),
    [
        ("5", "steady/x"),
        ("5", "nobody/x"),  # PUBACK "no matching subscribers": 5 bytes
        ("3.1.1", "steady/x"),
    ],
)
def test_at_a_steady_rate_acks_do_not_wake_the_network_thread(
    broker: Broker, long_hold: None, protocol: Literal["5", "3.1.1"], topic: str
) -> None:
    link = MqttLink(_settings(broker, protocol), f"steady-{protocol}")
    acks = Acks()
    n = 100
    with Collector(broker.host, broker.port, ["steady/#"]) as col, running(link):
        link.prompt_acks(False)
        steady = Steady(link, col, acks, topic)
        steady(5)  # the network thread turns quiet
        _wait(lambda: link.quiet, "acks never turned quiet")
        turns = link.network_turns
        steady(n)
        turns = link.network_turns - turns
        # all but the last ack were taken by the publishing thread, each with the next burst
        assert acks.wait(5 + n - 1)
        assert threading.current_thread().name in acks.threads()
        # without quiet acks: one turn per PUBACK (n); left: races of a busy machine
        assert turns < n // 4, f"{turns} network-thread turns for {n} steady messages"
        link.prompt_acks(True)
        assert acks.wait(5 + n), "the last ack was not read when asked for"


def test_someone_waiting_for_acks_wakes_the_reader_at_once(broker: Broker, long_hold: None) -> None:
    """The last ack of a burst waits in the socket (nobody is woken for it) until
    ``prompt_acks(True)``, which has it read at once: not after the hold time."""
    link = MqttLink(_settings(broker), "prompt")
    acks = Acks()
    with Collector(broker.host, broker.port, ["prompt/#"]) as col, running(link):
        link.prompt_acks(False)
        steady = Steady(link, col, acks, "prompt/x")
        steady(5)
        _wait(lambda: link.quiet, "acks never turned quiet")
        for _ in range(100):  # a burst may take its own ack too, when the broker is quick
            steady(1)
            if len(acks.got) < steady.sent:
                break  # the last ack waits in the socket, unread
        else:
            pytest.fail("every burst took its own ack: nothing left to wait for")
        link.prompt_acks(True)
        assert acks.wait(steady.sent), "the waited-for ack was not read"
        assert not link.quiet


def test_acks_after_the_last_burst_arrive_without_anyone_asking(broker: Broker) -> None:
    """With the default hold time the network thread reads the last acks itself once the
    bursts stop."""
    link = MqttLink(_settings(broker), "tail")
    acks = Acks()
    n = 50
    with Collector(broker.host, broker.port, ["tail/#"]) as col, running(link):
        link.prompt_acks(False)
        Steady(link, col, acks, "tail/x")(n)
        assert acks.wait(n), f"{len(acks.got)} of {n} acks arrived"
        _wait(lambda: not link.quiet, "still quiet long after the last burst")


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_an_incoming_message_is_not_delayed_by_quiet_acks(
    broker: Broker, long_hold: None, protocol: Literal["5", "3.1.1"]
) -> None:
    """The smallest PUBLISH there is (a one-letter topic, no payload, QoS 0) on a subscribed
    topic wakes the network thread while acks are quiet and no burst follows."""
    link = MqttLink(_settings(broker, protocol), f"incoming-{protocol}")
    got = threading.Event()
    link.subscribe("q", 1, lambda topic, payload: got.set())
    acks = Acks()
    with Collector(broker.host, broker.port, ["inc/#"]) as col, running(link):
        link.prompt_acks(False)
        Steady(link, col, acks, "inc/x")(5)
        _wait(lambda: link.quiet, "acks never turned quiet")
        # a last burst without an ack to come: it takes the last PUBACK, and the PUBLISH
        # below arrives alone (not on top of a PUBACK nobody read)
        assert link.publish_many([(OutgoingMessage("inc/x", b"0", qos=0), None)]) == 1
        _wait(lambda: _queued(link) == 0 and len(acks.got) == 5, "the last PUBACK was not read")
        publish_once(_settings(broker), "sender", [OutgoingMessage("q", b"", qos=0)])
        assert got.wait(DEADLINE_S), "an incoming message waited for the hold time"


def _rec(i: int) -> PredictionRecord:
    return PredictionRecord(
        topic="edge/d/prediction/m",
        model_name="m",
        model_version="1",
        stream="s",
        ts=float(i),
        outputs={"v": i},
        latency_ms=0.1,
        t_in=0.0,
    )


def test_a_broker_killed_while_acks_are_quiet_is_noticed_and_everything_resent(
    tmp_path: Path, long_hold: None
) -> None:
    """The publisher at a steady rate turns acks quiet; the broker dies: the network thread
    sees the end of the connection at once (not after the hold time or a keepalive), and
    what was not acknowledged is resent in order on the next connection."""
    # a persistent broker, stopped with SIGTERM: the observer's session outlives it
    broker = Broker(tmp_path / "broker", persistent=True)
    link = MqttLink(_settings(broker), "killed")
    spool = Spool(tmp_path / "q.db")
    pub = Publisher(link, spool, "d", 1, Metrics())
    with (
        broker,
        Collector(broker.host, broker.port, ["edge/d/#"], session="watch-killed") as col,
        running(link),
    ):
        pub.start()
        for i in range(20):
            pub.submit_many([_rec(i)], inline=True)
            col.wait_for(lambda m, i=i: len(m) > i)  # type: ignore[misc]
        _wait(lambda: link.quiet, "the publisher's steady rate never turned acks quiet")
        gen = link.generation
        broker.stop(graceful=True)
        _wait(lambda: not link.connected, "a dead broker went unnoticed", timeout=20)
        for i in range(20, 30):  # spooled while disconnected
            pub.submit_many([_rec(i)], inline=True)
        broker.start()
        _wait(lambda: link.connected and link.generation > gen, "no reconnect")
        for i in range(30, 40):
            pub.submit_many([_rec(i)], inline=True)
        col.wait_for(lambda m: {json.loads(x.payload)["seq"] for x in m} >= set(range(40)))
        pub.stop(10)  # waits for the acks: they are read at once (not after the hold time)
        assert spool.depth == 0, "the publisher stopped with messages unacknowledged"
    spool.close()
    seqs = [json.loads(m.payload)["seq"] for m in col.messages]
    assert sorted(set(seqs)) == list(range(40))  # at least once, nothing lost
    after = seqs[seqs.index(20) :]
    assert after == sorted(after)  # resent in order


def test_tls_keeps_the_network_thread_reading_every_ack(tmp_path: Path) -> None:
    """TLS records hide packet sizes: acks are never quiet there, and all still arrive."""
    ca = make_ca(tmp_path / "pki")
    tls = TlsFiles(ca["ca_file"], ca["server_cert"], ca["server_key"])
    with Broker(tmp_path / "broker", tls=tls) as broker:
        settings = MqttSection(
            host=broker.host, port=broker.port, tls=TlsSection(enabled=True, ca_file=ca["ca_file"])
        )
        link = MqttLink(settings, "tls-acks")
        acks = Acks()
        n = 20
        with Collector(broker.host, broker.plain_port, ["tls/#"]) as col, running(link):
            link.prompt_acks(False)
            for i in range(n):
                assert link.publish_many([(OutgoingMessage("tls/x", b"x"), acks.callback(i))])
                col.wait_for(lambda m, i=i: len(m) > i)  # type: ignore[misc]
                assert not link.quiet
            assert acks.wait(n)
        assert acks.threads() == {"mqtt-link"}
