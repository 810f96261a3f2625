"""The MQTT source: parsing and counting with a fake subscriber, then once with a real broker."""

from __future__ import annotations

import struct
import threading
import uuid
from typing import Any

import numpy as np
import pytest

from agent.config import MqttSection, MqttSource
from agent.delivery.mqtt import MqttLink
from agent.errors import SourceError
from agent.ingest.sources import MessageHandler, MqttSubscription, SourceContext, build_source
from tests.broker import Broker
from tests.ingest.sources._sink import Sink, make_ctx, running
from tests.mqttclient import publish


class FakeSubscriber:
    """Records subscriptions; tests deliver messages by calling the handler."""

    def __init__(self) -> None:
        self.subs: dict[str, tuple[int, MessageHandler]] = {}
        self.subscribed = threading.Event()

    def subscribe(self, topic_filter: str, qos: int, handler: MessageHandler) -> None:
        self.subs[topic_filter] = (qos, handler)
        self.subscribed.set()


def cfg(**kw: Any) -> MqttSource:
    return MqttSource.model_validate({"topic": "sensors/imu", **kw})


def subscribed(c: MqttSource) -> tuple[MqttSubscription, FakeSubscriber, SourceContext, Sink]:
    fake = FakeSubscriber()
    ctx = SourceContext(metrics=make_ctx().metrics, subscriber=fake)
    source = MqttSubscription(c, ctx)
    return source, fake, ctx, Sink()


def test_run_subscribes_and_emits_until_stopped() -> None:
    source, fake, _, sink = subscribed(cfg(qos=1))
    with running(source, sink) as stop:
        assert fake.subscribed.wait(5)
        qos, handler = fake.subs["sensors/imu"]
        assert qos == 1
        handler("sensors/imu", b"[1, 2, 3]")
        handler("sensors/imu", b'{"values": [[4, 5, 6], [7, 8, 9]], "ts": [1, 2]}')
        assert sink.count == 3  # the handler emits synchronously
        stop.set()
        handler("sensors/imu", b"[1, 2, 3]")  # after stop: ignored
    assert sink.count == 3
    np.testing.assert_array_equal(sink.values(), [[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    assert {b.stream for b in sink.blocks} == {"sensor"}


def test_wildcard_filter_makes_a_stream_per_topic() -> None:
    source, _, _, sink = subscribed(cfg(topic="sensors/+/raw", name="imu"))
    handler = source.handler(sink, threading.Event())
    handler("sensors/a/raw", b"[1, 2, 3]")
    handler("sensors/b/raw", b"[1, 2, 3]")
    assert [b.stream for b in sink.blocks] == ["imu:sensors/a/raw", "imu:sensors/b/raw"]


@pytest.mark.parametrize(
    ("topic", "per_topic"),
    [("a/#", True), ("#", True), ("+", True), ("a/b", False), ("a+b/c#", False)],
)
def test_stream_naming(topic: str, per_topic: bool) -> None:
    source, _, _, sink = subscribed(cfg(topic=topic))
    source.handler(sink, threading.Event())("a/b", b"[1, 2, 3]")
    assert sink.blocks[0].stream == ("sensor:a/b" if per_topic else "sensor")


BAD_JSON_PAYLOADS = [
    (b"x" * 70_000, "oversized"),
    (b"[1, 2, \xff]", "invalid_utf8"),
    (b"[1, 2", "bad_json"),
    (b'["a", 2, 3]', "non_numeric"),
    (b"[1, 2]", "wrong_shape"),
    (b"[1, NaN, 3]", "not_finite"),
    (b'{"values": [1, 2, 3], "ts": "now"}', "bad_timestamp"),
]


@pytest.mark.parametrize(("payload", "reason"), BAD_JSON_PAYLOADS)
def test_bad_json_payload_is_counted_and_the_source_goes_on(payload: bytes, reason: str) -> None:
    source, _, ctx, sink = subscribed(cfg())
    handler = source.handler(sink, threading.Event())
    handler("sensors/imu", b"[1, 1, 1]")
    handler("sensors/imu", payload)
    handler("sensors/imu", b"[2, 2, 2]")
    assert ctx.metrics.counters_by_reason("samples_rejected") == {reason: 1}
    np.testing.assert_array_equal(sink.values(), [[1, 1, 1], [2, 2, 2]])


def test_binary_payloads() -> None:
    source, _, ctx, sink = subscribed(cfg(format="binary", dtype="int16", max_payload_bytes=64))
    handler = source.handler(sink, threading.Event())
    handler("sensors/imu", struct.pack("<6h", 1, 2, 3, -4, -5, -6))
    handler("sensors/imu", struct.pack("<4h", 1, 2, 3, 4))  # wrong_shape
    handler("sensors/imu", b"\x00" * 66)  # oversized
    handler("sensors/imu", struct.pack("<3h", 7, 8, 9))
    np.testing.assert_array_equal(sink.values(), [[1, 2, 3], [-4, -5, -6], [7, 8, 9]])
    assert ctx.metrics.counters_by_reason("samples_rejected") == {"wrong_shape": 1, "oversized": 1}


def test_binary_float_nan_is_not_finite() -> None:
    source, _, ctx, sink = subscribed(cfg(format="binary", dtype="float64"))
    source.handler(sink, threading.Event())("t", struct.pack("<3d", 1, float("nan"), 2))
    assert ctx.metrics.counter("samples_rejected", "not_finite") == 1
    assert sink.count == 0


def test_needs_an_mqtt_link() -> None:
    with pytest.raises(SourceError, match="no MQTT link"):
        build_source(cfg(), make_ctx())


# ----------------------------------------------------------------------------- real broker


def test_real_broker_through_mqtt_link(broker: Broker) -> None:
    topic = f"test/{uuid.uuid4().hex[:8]}/imu"
    link = MqttLink(MqttSection(host=broker.host, port=broker.port), f"src-{uuid.uuid4().hex[:6]}")
    ctx = SourceContext(metrics=make_ctx().metrics, subscriber=link)
    source = build_source(cfg(topic=topic, qos=1), ctx)
    sink = Sink()
    # A retained probe arrives as soon as the subscription is active: no guessing when.
    publish(broker.host, broker.port, topic, b"[0, 0, 0]", retain=True)
    link.start()
    try:
        with running(source, sink):
            sink.wait_samples(1)
            publish(broker.host, broker.port, topic, b"", retain=True)  # clear the retained
            publish(broker.host, broker.port, topic, b"[1, 2, NaN]")
            publish(broker.host, broker.port, topic, b"not json")
            publish(broker.host, broker.port, topic, b"[[1, 2, 3], [4, 5, 6]]")
            sink.wait_samples(3)
    finally:
        link.stop()
    np.testing.assert_array_equal(sink.values(), [[0, 0, 0], [1, 2, 3], [4, 5, 6]])
    # Clearing the retained message delivers an empty payload to live subscribers: bad_json.
    assert ctx.metrics.counters_by_reason("samples_rejected") == {
        "not_finite": 1,
        "bad_json": 2,
    }
