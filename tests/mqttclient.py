"""An independent MQTT observer for tests: plain paho, collecting what arrives.

Tests check the agent with a client that shares none of the agent's code.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    t: float

    def json(self) -> Any:
        return json.loads(self.payload)


@dataclass
class Collector:
    """Subscribes to ``topics`` on a broker and keeps every message, with a condition to wait on."""

    host: str
    port: int
    topics: list[str]
    session: str | None = None
    """A client id for a persistent session (MQTT 3.1.1, clean_session=False): with a
    persistent broker, messages published while this observer is away are kept for it."""
    messages: list[Received] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _client: mqtt.Client | None = None

    def __enter__(self) -> Collector:
        subscribed = threading.Event()
        if self.session:
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=self.session,
                clean_session=False,
                protocol=mqtt.MQTTv311,
            )
        else:
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2, client_id=f"test-{uuid.uuid4().hex[:8]}"
            )
        client.reconnect_delay_set(min_delay=1, max_delay=1)

        def on_connect(c: mqtt.Client, u: object, f: object, rc: object, p: object) -> None:
            c.subscribe([(t, 1) for t in self.topics])

        def on_subscribe(c: mqtt.Client, u: object, mid: int, rc: object, p: object) -> None:
            subscribed.set()

        def on_message(c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
            with self._cond:
                self.messages.append(
                    Received(msg.topic, bytes(msg.payload), bool(msg.retain), time.time())
                )
                self._cond.notify_all()

        client.on_connect = on_connect
        client.on_subscribe = on_subscribe
        client.on_message = on_message
        client.connect(self.host, self.port)
        client.loop_start()
        if not subscribed.wait(10):
            raise TimeoutError("test subscriber could not subscribe")
        self._client = client
        return self

    def __exit__(self, *exc: object) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()

    def wait_for(
        self, predicate: Callable[[list[Received]], bool], timeout: float = 20.0
    ) -> list[Received]:
        """Block until ``predicate(messages)`` is true; raise with what arrived otherwise."""
        with self._cond:
            ok = self._cond.wait_for(lambda: predicate(self.messages), timeout)
            if not ok:
                tail = [(m.topic, m.payload[:200]) for m in self.messages[-5:]]
                raise TimeoutError(
                    f"condition not met in {timeout}s; {len(self.messages)} messages, last: {tail}"
                )
            return list(self.messages)

    def wait_connected(self, timeout: float = 20.0) -> None:
        """After a broker restart: wait until this observer is connected again."""
        assert self._client is not None
        deadline = time.monotonic() + timeout
        while not self._client.is_connected():
            if time.monotonic() > deadline:
                raise TimeoutError("observer did not reconnect")
            time.sleep(0.02)  # paho offers no event for 'reconnected'

    def on(self, topic_suffix: str) -> list[Received]:
        with self._cond:
            return [m for m in self.messages if m.topic.endswith(topic_suffix)]


def publish(host: str, port: int, topic: str, payload: bytes | str, retain: bool = False) -> None:
    """Publish one message at QoS 1 and wait for the broker's acknowledgement."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}")
    client.connect(host, port)
    client.loop_start()
    try:
        info = client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()
