"""``MqttLink``: the agent's long-lived, self-reconnecting connection.

It owns the connection and **owns reconnecting**: one thread connects, runs paho's network
loop until the connection drops, waits ``agent.backoff``, and connects again. Each connection
gets a *fresh* paho client with a clean session, so nothing paho kept in memory from an old
connection is replayed behind our back: the store-and-forward spool (``agent.delivery.spool``)
is the one source of truth for what still has to be delivered.

paho callbacks never block and never do work: they convert to our types and hand off (an
``on_ack`` callback, a subscription handler, a listener) — those must be quick too.

Acks at a steady rate (``prompt_acks``): while the publisher has nothing waiting on acks, the
network thread is not woken for each PUBACK; the thread that publishes the next burst reads
them (``agent.delivery.mqtt.client._Client``, quiet acks). Subscription handlers, listeners,
keepalive and disconnect handling stay on the network thread, and incoming messages still
wake it at once.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Sequence
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.backoff import Backoff
from agent.config import MqttSection
from agent.delivery.mqtt.client import (
    AckMode,
    _burst,
    _Client,
    _connect,
    _make_client,
    _TcpBuffer,
)
from agent.delivery.mqtt.messages import (
    AckCallback,
    Listener,
    Message,
    MessageHandler,
    OutgoingMessage,
)
from agent.errors import PublishError

log = logging.getLogger(__name__)


class MqttLink:
    """A long-lived, self-reconnecting MQTT connection.

    ``publish`` returns False when there is no connection: the caller keeps the message (in the
    spool) and sends it again after a reconnect. ``on_ack`` fires when the broker acknowledged
    a QoS>0 message (or a QoS 0 one was written), on the network thread, or (after
    ``prompt_acks(False)``) on a thread calling ``publish_many``, right before a later burst.
    """

    quiet_hold_s = 0.5
    """With ``prompt_acks(False)``: how long after the last ``publish_many`` acks may still
    wait for the next one (the network thread reads them after that). Also the longest the
    network thread sleeps then, for paho's keepalive (``keepalive_s`` is at least 5 s)."""

    loop_timeout_s = 1.0
    """The longest the network thread sleeps in ``select`` otherwise (paho's keepalive)."""

    def __init__(
        self,
        settings: MqttSection,
        client_id: str,
        *,
        will: OutgoingMessage | None = None,
        password: str | None = None,
        birth: Sequence[OutgoingMessage] = (),
    ) -> None:
        self.settings = settings
        self.client_id = client_id
        self._v5 = settings.protocol == "5"
        self._will = will
        self._password = password
        self._birth = list(birth)
        self._subs: dict[str, tuple[int, MessageHandler]] = {}
        self._on_connect: list[Listener] = []
        self._on_disconnect: list[Listener] = []
        self._lock = threading.Lock()
        self._client: _Client | None = None
        self._session: paho.Client | None = None  # the client from its CONNACK on
        self._generation = 0
        self._pending: dict[tuple[int, int], AckCallback] = {}
        self._early: set[tuple[int, int]] = set()
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._backoff = Backoff(settings.reconnect_min_s, settings.reconnect_max_s)
        self._acks = AckMode(self.quiet_hold_s)
        self.reconnects = 0
        self.last_error: str | None = None

    # ------------------------------------------------------------------ public API

    def add_connect_listener(self, fn: Listener) -> None:
        """``fn()`` runs on the network thread after every successful (re)connect."""
        self._on_connect.append(fn)

    def add_disconnect_listener(self, fn: Listener) -> None:
        """``fn()`` runs when a connection is lost (not on a clean ``stop``)."""
        self._on_disconnect.append(fn)

    def subscribe(self, topic_filter: str, qos: int, handler: MessageHandler) -> None:
        with self._lock:
            self._subs[topic_filter] = (qos, handler)
            client = self._session  # else the next CONNACK subscribes it
        if client is not None:
            self._subscribe_on(client, topic_filter, qos, handler)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="mqtt-link", daemon=True)
        self._thread.start()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def generation(self) -> int:
        """Increments with every connection: acks of an older connection are stale."""
        return self._generation

    def thread_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def prompt_acks(self, on: bool) -> None:
        """Whether someone waits on acks now (any thread; on by default).

        On: the network thread reads every ack as it arrives (and at once if some wait).
        Off (the publisher at a steady rate: nothing waits on them): acks may wait for the
        next ``publish_many``, which reads them on its own thread, and for at most
        ``quiet_hold_s`` after the last one; the network thread then no longer wakes for
        each PUBACK. Incoming messages are never delayed by it. Plain TCP only (TLS: the
        network thread reads every ack).
        """
        self._acks.prompt = on
        if on:
            client = self._client
            if client is not None:
                client.read_acks_now()

    @property
    def quiet(self) -> bool:
        """A lone PUBACK does not wake the network thread now (``prompt_acks``)."""
        client = self._client
        return client is not None and client.quiet

    @property
    def network_turns(self) -> int:
        """Turns of the network loop (``select`` returns) on the current connection."""
        client = self._client
        return 0 if client is None else client.turns

    def publish(self, msg: OutgoingMessage, on_ack: AckCallback | None = None) -> bool:
        """Send ``msg`` on the current connection; False when there is none."""
        with self._lock:
            client = self._client if self._connected.is_set() else None
            gen = self._generation
        if client is None:
            return False
        info = client.publish(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            return False
        if on_ack is not None:
            key = (gen, info.mid)
            with self._lock:
                early = key in self._early
                if early:
                    self._early.discard(key)
                else:
                    self._pending[key] = on_ack
            if early:
                on_ack()
        return True

    def publish_many(self, items: Sequence[tuple[Message, AckCallback | None]]) -> int:
        """Send ``items`` in order as one burst; returns how many were sent (a prefix).

        Same contract as ``publish`` per message, cheaper per message: the burst is written
        with TCP_CORK set (one segment for many small PUBLISH packets instead of one each,
        flushed at once when the burst ends: no Nagle delay), and the callbacks are
        registered under one lock acquisition.
        """
        with self._lock:
            client = self._client if self._connected.is_set() else None
            gen = self._generation
        if client is None or not items:
            return 0
        sock = client.socket()
        if type(sock) is _TcpBuffer:  # plain TCP: our own packets, our own PUBACKs
            client.before_burst()  # quiet acks: takes the acks already received
            n = sock.publish(items, client._mid_generate, self._v5)
            client.after_burst()  # and wakes the loop if the socket did not take it all
            return n
        sent: list[tuple[int, AckCallback]] = []
        n = 0
        publish, ok = client.publish, paho.MQTT_ERR_SUCCESS
        with _burst(client):
            for msg, on_ack in items:
                info = publish(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain)
                if info.rc != ok:
                    break
                n += 1
                if on_ack is not None:
                    sent.append((info.mid, on_ack))
        early: list[AckCallback] = []
        with self._lock:
            for mid, on_ack in sent:
                key = (gen, mid)
                if key in self._early:
                    self._early.discard(key)
                    early.append(on_ack)
                else:
                    self._pending[key] = on_ack
        for on_ack in early:
            on_ack()
        return n

    def stop(self, final: Sequence[OutgoingMessage] = (), timeout: float = 2.0) -> None:
        """Publish ``final`` (e.g. retained 'offline'), wait for their acks, disconnect."""
        self._stop.set()
        self.prompt_acks(True)
        with self._lock:
            client = self._client if self._connected.is_set() else None
        if client is not None:
            infos = [client.publish(m.topic, m.payload, qos=m.qos, retain=m.retain) for m in final]
            deadline = time.monotonic() + timeout
            for info in infos:
                remaining = deadline - time.monotonic()
                if remaining > 0 and info.rc == paho.MQTT_ERR_SUCCESS:
                    try:
                        info.wait_for_publish(remaining)
                    except RuntimeError:
                        break
            client.disconnect()
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------------ internals

    def _subscribe_on(
        self, client: paho.Client, topic_filter: str, qos: int, handler: MessageHandler
    ) -> int | None:
        """Subscribe on ``client``; the message id its SUBACK will carry (None: not sent)."""

        def on_message(c: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
            try:
                handler(message.topic, bytes(message.payload))
            except Exception:  # a handler bug must not kill the network thread
                log.exception("handler for %s failed", topic_filter)

        client.message_callback_add(topic_filter, on_message)
        rc, mid = client.subscribe(topic_filter, qos)
        return mid if rc == paho.MQTT_ERR_SUCCESS else None

    def _callbacks(self, client: paho.Client, gen: int) -> None:
        awaiting: set[int] = set()  # SUBACKs this connection waits for before its birth
        born = False

        def birth(c: paho.Client) -> None:
            nonlocal born
            born = True
            for m in self._birth:
                c.publish(m.topic, m.payload, qos=m.qos, retain=m.retain)
            self._backoff.reset()
            self.last_error = None
            self._connected.set()
            log.info("MQTT connected to %s:%s", self.settings.host, self.settings.port)
            for fn in self._on_connect:
                fn()

        def on_connect(
            c: paho.Client,
            userdata: Any,
            flags: Any,
            reason: ReasonCode,
            props: Properties | None,
        ) -> None:
            if reason.is_failure:
                self.last_error = f"broker refused the connection: {reason}"
                log.warning(
                    "MQTT %s:%s refused: %s", self.settings.host, self.settings.port, reason
                )
                return
            with self._lock:
                subs = dict(self._subs)
                self._session = c  # later subscribe() calls go straight to it
            # birth once every subscription is acknowledged: whoever sees 'online' may
            # publish to our topics, and those messages must find the subscription in place
            for topic_filter, (qos, handler) in subs.items():
                mid = self._subscribe_on(c, topic_filter, qos, handler)
                if mid is not None:
                    awaiting.add(mid)
            if not awaiting:
                birth(c)

        def on_subscribe(
            c: paho.Client, userdata: Any, mid: int, reasons: list[ReasonCode], props: Any
        ) -> None:
            if any(r.is_failure for r in reasons):
                log.error("MQTT: the broker refused a subscription (%s)", reasons)
            if mid in awaiting:
                awaiting.discard(mid)
                if not awaiting and not born:
                    birth(c)

        def on_publish(
            c: paho.Client, userdata: Any, mid: int, reason: ReasonCode, props: Properties
        ) -> None:
            if reason.is_failure:
                return  # refused by the broker: stays in the spool, resent on reconnect
            key = (gen, mid)
            with self._lock:
                cb = self._pending.pop(key, None)
                if cb is None:
                    self._early.add(key)
            if cb is not None:
                cb()

        client.on_connect = on_connect
        client.on_subscribe = on_subscribe
        client.on_publish = on_publish

    def _run(self) -> None:
        first = True
        while not self._stop.is_set():
            if not first:
                delay = self._backoff.next_delay()
                log.debug("MQTT reconnect in %.2fs", delay)
                if self._stop.wait(delay):
                    break
                self.reconnects += 1
            first = False
            with self._lock:
                self._generation += 1
                gen = self._generation
                self._pending.clear()
                self._early.clear()
            try:
                client = _make_client(self.settings, self.client_id, self._password)
            except PublishError as exc:
                self.last_error = str(exc)
                log.error("%s", exc)
                continue
            if self._will is not None:
                w = self._will
                client.will_set(w.topic, w.payload, qos=w.qos, retain=w.retain)
            self._callbacks(client, gen)
            try:
                _connect(client, self.settings)
            except (OSError, ssl.SSLError, ValueError) as exc:
                self.last_error = (
                    f"cannot connect to {self.settings.host}:{self.settings.port}: {exc}"
                )
                log.warning("MQTT %s", self.last_error)
                continue
            client.allow_quiet_acks(self._acks)
            with self._lock:
                self._client = client
            try:
                client.loop_forever(self.loop_timeout_s, retry_first_connection=False)
            except (OSError, ssl.SSLError) as exc:
                self.last_error = f"connection failed: {exc}"
            finally:
                was_connected = self._connected.is_set()
                self._connected.clear()
                with self._lock:
                    self._client = None
                    self._session = None
                client.close_wake()
            if was_connected and not self._stop.is_set():
                log.warning("MQTT connection to %s:%s lost", self.settings.host, self.settings.port)
                for fn in self._on_disconnect:
                    fn()
