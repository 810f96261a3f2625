"""The publisher against a fake link (the seam) and a real broker: order, acks, redelivery."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.config import BatchSection, MqttSection
from agent.delivery.mqtt import MqttLink, OutgoingMessage
from agent.delivery.publisher import PredictionRecord, Publisher
from agent.delivery.spool import Spool
from agent.metrics import Metrics
from agent.wire.predictions import PredictionBatchV1, PredictionV1
from tests.broker import Broker
from tests.mqttclient import Collector


class FakeLink:
    """In-memory stand-in for MqttLink: records publishes; acks on demand."""

    def __init__(self, auto_ack: bool = True) -> None:
        self.connected = False
        self.generation = 0
        self.auto_ack = auto_ack
        self.sent: list[OutgoingMessage] = []
        self.unacked: list[Callable[[], None]] = []
        self._listeners: list[Callable[[], None]] = []
        self.cond = threading.Condition()

    def add_connect_listener(self, fn: Callable[[], None]) -> None:
        self._listeners.append(fn)

    def connect(self) -> None:
        self.generation += 1
        self.connected = True
        for fn in self._listeners:
            fn()

    def disconnect(self) -> None:
        self.connected = False
        self.unacked.clear()

    def publish(self, msg: OutgoingMessage, on_ack: Callable[[], None] | None = None) -> bool:
        if not self.connected:
            return False
        with self.cond:
            self.sent.append(msg)
            self.cond.notify_all()
        if on_ack is not None:
            if self.auto_ack:
                on_ack()
            else:
                self.unacked.append(on_ack)
        return True

    def wait_sent(self, n: int, timeout: float = 10) -> list[OutgoingMessage]:
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
    for ack in link.unacked[:5]:  # the broker acknowledged only the first five
        ack()
    link.disconnect()
    link.auto_ack = True
    link.sent.clear()
    link.connect()
    sent = link.wait_sent(15)
    assert seqs(sent) == list(range(5, 20))
    pub.stop(5)
    assert spool.depth == 0


def test_inflight_window_is_respected(tmp_path: Path) -> None:
    link = FakeLink(auto_ack=False)
    link.connect()
    pub, _ = make(tmp_path, link, window=10)
    for i in range(40):
        pub.submit(record(i))
    link.wait_sent(10)
    assert len(link.sent) == 10
    for ack in list(link.unacked):
        ack()
    link.wait_sent(20)
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
