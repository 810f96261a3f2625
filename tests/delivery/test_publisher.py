"""The publisher against a fake link (the seam) and a real broker: order, acks, redelivery."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from agent.config import BatchSection, MqttSection
from agent.delivery.mqtt import Message, MqttLink, OutgoingMessage
from agent.delivery.publisher import PredictionRecord, Publisher
from agent.delivery.spool import Spool
from agent.metrics import Metrics
from agent.wire.predictions import PredictionBatchV1, PredictionV1
from tests.broker import Broker
from tests.mqttclient import Collector


class FakeLink:
    """Stands in for ``MqttLink`` the way production uses it: bursts through ``publish_many``,
    and acknowledgements delivered from a network thread of its own (never from the thread
    that published), dropped when they belong to an older connection (``generation``).

    ``auto_ack``: every message is acknowledged (by the network thread) as it is sent; else
    they wait in ``unacked`` until ``ack(n)``. ``max_outstanding`` is the most messages ever
    sent and not yet acknowledged at once (the in-flight window the publisher kept)."""

    def __init__(self, auto_ack: bool = True) -> None:
        self.connected = False
        self.generation = 0
        self.prompt = True
        self.auto_ack = auto_ack
        self.sent: list[OutgoingMessage] = []
        self.unacked: list[tuple[int, Callable[[], None]]] = []
        self.outstanding = 0
        self.max_outstanding = 0
        self.bursts = 0
        self._listeners: list[Callable[[], None]] = []
        self.cond = threading.Condition()
        self._net: queue.SimpleQueue[tuple[int, Callable[[], None]]] = queue.SimpleQueue()
        threading.Thread(target=self._network, name="fake-network", daemon=True).start()

    def _network(self) -> None:
        while True:
            gen, on_ack = self._net.get()
            with self.cond:
                if gen != self.generation:
                    continue  # an ack of a connection that is gone
                self.outstanding -= 1
            on_ack()

    def add_connect_listener(self, fn: Callable[[], None]) -> None:
        self._listeners.append(fn)

    def prompt_acks(self, on: bool) -> None:
        self.prompt = on  # this fake acknowledges the same way either way

    def connect(self) -> None:
        with self.cond:
            self.generation += 1
            self.connected = True
            self.outstanding = 0
        for fn in self._listeners:
            fn()

    def disconnect(self) -> None:
        with self.cond:
            self.connected = False
            self.unacked.clear()

    def publish_many(self, items: Sequence[tuple[Message, Callable[[], None] | None]]) -> int:
        with self.cond:
            if not self.connected:
                return 0
            self.bursts += 1
            for msg, on_ack in items:
                self.sent.append(OutgoingMessage(msg.topic, msg.payload, msg.qos, msg.retain))
                if on_ack is None:
                    continue
                self.outstanding += 1
                self.max_outstanding = max(self.max_outstanding, self.outstanding)
                if self.auto_ack:
                    self._net.put((self.generation, on_ack))
                else:
                    self.unacked.append((self.generation, on_ack))
            self.cond.notify_all()
        return len(items)

    def ack(self, n: int | None = None) -> None:
        """Acknowledge the ``n`` oldest unacknowledged messages (all: None)."""
        with self.cond:
            n = len(self.unacked) if n is None else n
            todo, self.unacked = self.unacked[:n], self.unacked[n:]
        for item in todo:
            self._net.put(item)

    def wait_sent(self, n: int, timeout: float = 30) -> list[OutgoingMessage]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.sent) >= n, timeout), len(self.sent)
            return list(self.sent)


def record(i: int) -> PredictionRecord:
    return PredictionRecord(
        topic="edge/d/prediction/m",
        model_name="m",
        model_version="1.0.0",
        stream="s",
        ts=1000.0 + i,
        outputs={"values": [float(i)]},
        latency_ms=0.1,
        t_in=0.0,
    )


def wait_until(cond: Callable[[], bool], timeout: float = 30) -> None:
    """Watching state another thread changes, with no event to await: poll it."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.002)


def seqs(msgs: list[OutgoingMessage]) -> list[int]:
    return [int(json.loads(m.payload)["seq"]) for m in msgs]


_open_spools: list[Spool] = []


@pytest.fixture(autouse=True)
def _close_spools() -> Iterator[None]:
    """Every spool a test opened is closed after it (an unclosed sqlite3 connection is a
    ResourceWarning on Python 3.13, an error under this suite's warning filter)."""
    yield
    while _open_spools:
        _open_spools.pop().close()


def make(tmp_path: Path, link: FakeLink, **kw: object) -> tuple[Publisher, Spool]:
    spool = Spool(tmp_path / "q.db")
    _open_spools.append(spool)
    pub = Publisher(link, spool, "d", 1, Metrics(), **kw)  # type: ignore[arg-type]
    pub.start()
    return pub, spool


def test_live_publishing_in_sequence_and_spool_emptied(tmp_path: Path) -> None:
    link = FakeLink()
    link.connect()
    pub, spool = make(tmp_path, link)
    for i in range(500):
        pub.submit(record(i))
    sent = link.wait_sent(500)
    assert seqs(sent) == list(range(500))
    for m in sent[:3]:
        PredictionV1.model_validate_json(m.payload)
    pub.stop(5)
    assert spool.depth == 0


def test_inline_and_queued_hand_overs_from_many_threads_keep_one_order(tmp_path: Path) -> None:
    """Producers that spool and publish themselves when the publisher is idle (inline) and
    producers that queue, all at once: every prediction once, seq in sending order, each
    producer's predictions in its own order, the spool emptied."""
    link = FakeLink()
    link.connect()
    pub, spool = make(tmp_path, link)
    per, producers = 300, 4
    start = threading.Barrier(producers)

    def produce(k: int) -> None:
        start.wait()
        for i in range(0, per, 3):
            recs = [record(k * 10_000 + i + j) for j in range(3)]
            pub.submit_many(recs, inline=(i // 3 + k) % 2 == 0)

    threads = [threading.Thread(target=produce, args=(k,)) for k in range(producers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    sent = link.wait_sent(per * producers)
    assert seqs(sent) == list(range(per * producers))
    ts = [float(json.loads(m.payload)["ts"]) for m in sent]
    for k in range(producers):
        mine = [t for t in ts if k * 10_000 <= t - 1000.0 < (k + 1) * 10_000]
        assert mine == sorted(mine) and len(mine) == per
    pub.stop(5)
    assert spool.depth == 0


def test_an_idle_publisher_publishes_from_the_submitting_thread(tmp_path: Path) -> None:
    link = FakeLink()
    link.connect()
    pub, spool = make(tmp_path, link)
    pub.submit_many([record(0)], inline=True)
    assert seqs(link.sent) == [0]  # already sent when submit_many returns: no hand-over
    pub.submit_many([record(1)])  # the default hands over to the publisher thread
    assert seqs(link.wait_sent(2)) == [0, 1]
    pub.stop(5)
    assert spool.depth == 0


def test_offline_then_connect_delivers_backlog_in_order(tmp_path: Path) -> None:
    link = FakeLink()
    pub, spool = make(tmp_path, link)
    for i in range(300):
        pub.submit(record(i))
    pub.stop(5)
    assert link.sent == []
    assert spool.depth == 300
    spool.close()
    # a new publisher on the same spool (an agent restart) delivers it all once connected
    link.connect()
    pub2, spool2 = make(tmp_path, link)
    pub2.submit(record(300))
    sent = link.wait_sent(301)
    assert seqs(sent) == list(range(301))
    pub2.stop(5)
    assert spool2.depth == 0


def test_unacked_messages_are_resent_after_reconnect(tmp_path: Path) -> None:
    link = FakeLink(auto_ack=False)
    link.connect()
    pub, spool = make(tmp_path, link, window=50)
    for i in range(20):
        pub.submit(record(i))
    link.wait_sent(20)
    link.ack(5)  # the broker acknowledged only the first five
    wait_until(lambda: spool.depth == 15)
    link.disconnect()
    link.auto_ack = True
    link.sent.clear()
    link.connect()
    sent = link.wait_sent(15)
    assert seqs(sent) == list(range(5, 20))
    pub.stop(5)
    assert spool.depth == 0


def test_inflight_window_is_never_exceeded(tmp_path: Path) -> None:
    """At most ``window`` messages are sent and unacknowledged at any moment, however the
    acks (from the network thread) interleave with new predictions."""
    link = FakeLink(auto_ack=False)
    link.connect()
    pub, spool = make(tmp_path, link, window=10)
    for i in range(40):
        pub.submit(record(i))
    link.wait_sent(10)
    wait_until(lambda: spool.depth == 40)  # every prediction spooled, 10 of them sent
    assert len(link.sent) == 10
    for n in (3, 7, 10, 10, 10):
        link.ack(n)
        link.wait_sent(min(40, len(link.sent) + n))
    link.ack()
    wait_until(lambda: spool.depth == 0)
    assert seqs(link.sent) == list(range(40))
    assert link.max_outstanding == 10
    pub.stop(5)


def test_auto_acked_stream_keeps_the_window(tmp_path: Path) -> None:
    link = FakeLink()
    link.connect()
    pub, spool = make(tmp_path, link, window=8)
    for i in range(0, 2000, 50):
        pub.submit_many([record(i + j) for j in range(50)])
    link.wait_sent(2000)
    pub.stop(5)
    assert seqs(link.sent) == list(range(2000))
    assert 0 < link.max_outstanding <= 8
    assert spool.depth == 0


def test_back_pressure_blocks_producers_only_on_a_live_connection(tmp_path: Path) -> None:
    """With the broker not acknowledging, ``submit`` blocks once ``max_ahead`` messages wait
    unpublished behind the full window, and resumes when acks make room; while disconnected
    nothing blocks (the spool absorbs the outage)."""
    link = FakeLink(auto_ack=False)
    link.connect()
    pub, spool = make(tmp_path, link, window=5, max_ahead=20)
    i = 0
    while not pub._throttled:  # one at a time: the publisher sees each before the next
        pub.submit(record(i))
        i += 1
        wait_until(lambda n=i: spool.last_id == n)  # type: ignore[misc]
        assert i <= 5 + 21, "the publisher never throttled"
    assert i == 5 + 21  # the window (5 sent) plus one more than max_ahead waiting
    done = threading.Event()

    def one_more() -> None:
        pub.submit(record(i))
        done.set()

    producer = threading.Thread(target=one_more)
    producer.start()
    assert not done.wait(0.5)  # blocked: nothing acknowledged, nothing published
    deadline = time.monotonic() + 30
    while not done.wait(0.01):  # the broker acknowledges again: room, the producer goes on
        link.ack()
        assert time.monotonic() < deadline, "the producer stayed blocked"
    producer.join()
    link.disconnect()
    for j in range(200):  # offline: never blocks
        pub.submit(record(i + 1 + j))
    wait_until(lambda: spool.last_id == i + 201)
    pub.stop(1)


def test_batching_packs_predictions_and_keeps_sequence(tmp_path: Path) -> None:
    link = FakeLink()
    link.connect()
    pub, _ = make(tmp_path, link, batch=BatchSection(max_predictions=8, max_delay_ms=5))
    for i in range(20):
        pub.submit(record(i))
    pub.stop(5)
    got: list[int] = []
    for m in link.sent:
        b = PredictionBatchV1.model_validate_json(m.payload)
        assert len(b.batch) <= 8
        got += [p.seq for p in b.batch]
    assert got == list(range(20))


def test_real_broker_delivery_with_link(tmp_path: Path, broker: Broker) -> None:
    settings = MqttSection(host=broker.host, port=broker.port)
    link = MqttLink(settings, "pub-test")
    spool = Spool(tmp_path / "q.db")
    _open_spools.append(spool)
    pub = Publisher(link, spool, "d", 1, Metrics())
    with Collector(broker.host, broker.port, ["edge/d/#"]) as col:
        link.start()
        assert link.wait_connected(10)
        pub.start()
        for i in range(200):
            pub.submit(record(i))
        msgs = col.wait_for(lambda m: len(m) >= 200)
    assert [json.loads(m.payload)["seq"] for m in msgs] == list(range(200))
    pub.stop(5)
    link.stop()
    assert spool.depth == 0
