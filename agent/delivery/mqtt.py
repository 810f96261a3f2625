"""The MQTT seam: the only module that imports paho.

``MqttLink`` owns the connection and **owns reconnecting**: one thread connects, runs paho's
network loop until the connection drops, waits a capped, jittered exponential backoff, and
connects again. Each connection gets a *fresh* paho client with a clean session, so nothing
paho kept in memory from an old connection is replayed behind our back: the store-and-forward
spool (``agent.delivery.spool``) is the one source of truth for what still has to be delivered.

paho callbacks never block and never do work: they convert to our types and hand off (an
``on_ack`` callback, a subscription handler, a listener) — those must be quick too.

TCP_NODELAY is set on every socket: paho leaves Nagle on, and Nagle plus delayed ACK adds
~40 ms per hop to small QoS 1 messages.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.backoff import Backoff
from agent.config import MqttSection
from agent.errors import PublishError

log = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes], None]
AckCallback = Callable[[], None]
Listener = Callable[[], None]


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


class Message(Protocol):
    """What ``publish_many`` sends: an ``OutgoingMessage`` or anything shaped like one."""

    @property
    def topic(self) -> str: ...

    @property
    def payload(self) -> bytes: ...

    @property
    def qos(self) -> int: ...

    @property
    def retain(self) -> bool: ...


def _nodelay(client: paho.Client, userdata: Any, sock: Any) -> None:
    with contextlib.suppress(OSError, AttributeError):  # unix sockets, websockets
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


_CORK: int | None = getattr(socket, "TCP_CORK", None)  # Linux


class _TcpBuffer:
    """The plain TCP socket paho talks to, with a buffer in each direction.

    Every socket call drops and re-takes the GIL, and with a busy inference thread each
    re-take can wait; paho makes several per message. So:

    - reads: paho reads a packet in three ``recv`` calls (command byte, length, body); they
      are served from one read of up to 64 KiB. ``pending()`` is the hook paho's loop uses for
      TLS: while read-ahead bytes wait it reads them instead of sleeping in ``select``.
    - writes: between ``hold()`` and ``release()`` (a burst of publishes, ``publish_many``)
      ``send`` only appends to a buffer, and ``release`` writes the burst with one call.
      Outside a burst a ``send`` goes out at once. Everything is written in the order it was
      sent, by one thread at a time; a send never returns short, so paho's own queue stays
      empty.
    - no thread but the network thread ever waits for the socket: a write takes what the
      socket accepts now and leaves the rest in the buffer, and the network thread (paho's
      loop: ``_Client.want_write``/``loop_write``) writes it when the socket is writable. So a
      broker that stops reading never blocks a source thread publishing inline, the
      publisher thread, or the systemd watchdog. When the buffer has not moved for
      ``timeout_s`` the network thread closes the connection (paho reports it lost; the
      spool resends what was not acknowledged).
    """

    def __init__(self, sock: socket.socket, timeout_s: float) -> None:
        self.tcp = sock
        self.fileno = sock.fileno
        self._timeout = timeout_s
        self._rbuf = b""
        self._rpos = 0
        self._lock = threading.Lock()  # guards _out and _hold
        self._writer = threading.Lock()  # held by the thread writing _out to the socket
        self._out = bytearray()
        self._hold = 0
        self._stalled_since: float | None = None  # monotonic time the buffer last moved

    # ---------------------------------------------------------------- reading (network thread)

    def recv(self, n: int) -> bytes:
        buf, pos = self._rbuf, self._rpos
        if pos < len(buf):
            end = min(pos + n, len(buf))
            self._rpos = end
            return buf[pos:end]
        data = self.tcp.recv(max(n, 65536))
        if len(data) <= n:
            self._rbuf, self._rpos = b"", 0
            return data
        self._rbuf, self._rpos = data, n
        return data[:n]

    def pending(self) -> int:
        return len(self._rbuf) - self._rpos

    # ---------------------------------------------------------------- writing (any thread)

    def send(self, data: bytes | bytearray) -> int:
        with self._lock:
            self._out += data
            if self._hold:
                return len(data)
        self.flush()
        return len(data)

    def hold(self) -> None:
        with self._lock:
            self._hold += 1

    def release(self) -> None:
        with self._lock:
            self._hold -= 1
            if self._hold:
                return
        try:  # noqa: SIM105 (contextlib.suppress: 3 Python calls more per burst)
            self.flush()
        except OSError:  # the connection is closed: paho will notice
            pass

    def pending_out(self) -> bool:
        """Bytes wait for the socket (and no burst is holding them)."""
        with self._lock:
            return bool(self._out) and not self._hold

    def flush(self, wait: bool = False) -> None:
        """Write what the socket takes now, in order, never waiting for it. A thread that
        finds another one writing leaves its bytes to it (the writer looks again after
        letting go); what the socket does not take waits for the network thread.

        ``wait`` (the network thread only): wait for a thread that is writing to let go
        first. A writer never waits on the socket (non-blocking sends), so this is short;
        without it the network thread, woken by a writable socket while another thread's
        write is still under way (or preempted on a busy machine), would spin through
        ``select`` until that write ends.
        """
        if wait:
            self._writer.acquire()
            self._writer.release()
        while self._writer.acquire(blocking=False):
            try:
                while True:
                    with self._lock:
                        if not self._out or self._hold:
                            if not self._out:
                                self._stalled_since = None
                            break
                        chunk = bytes(self._out)
                    try:
                        n = self.tcp.send(chunk)
                    except BlockingIOError:
                        n = 0
                    except OSError:
                        self._fail("write failed")
                    with self._lock:
                        del self._out[:n]
                        if n < len(chunk):  # the socket is full: the network thread goes on
                            if n or self._stalled_since is None:
                                self._stalled_since = time.monotonic()
                            return
            finally:
                self._writer.release()
            with self._lock:
                if not self._out or self._hold:
                    return

    def check_stall(self) -> None:
        """Close the connection when buffered bytes have not moved for ``timeout_s``."""
        with self._lock:
            since = self._stalled_since
        if since is not None and self._out and time.monotonic() - since > self._timeout:
            log.warning("MQTT socket: could not write for %.0fs; closing it", self._timeout)
            with self._lock:
                self._out.clear()
                self._stalled_since = None
            with contextlib.suppress(OSError):
                self.tcp.shutdown(socket.SHUT_RDWR)  # paho's select/recv sees it

    def _fail(self, why: str) -> NoReturn:
        with self._lock:
            self._out.clear()
        with contextlib.suppress(OSError):
            self.tcp.shutdown(socket.SHUT_RDWR)  # the network thread's select/recv sees it
        raise ConnectionError(f"MQTT socket: {why}")

    # ---------------------------------------------------------------- the rest

    def close(self) -> None:
        self.tcp.close()

    def setblocking(self, flag: bool) -> None:
        self.tcp.setblocking(flag)

    def setsockopt(self, level: int, option: int, value: int) -> None:
        self.tcp.setsockopt(level, option, value)


class _Client(paho.Client):
    """paho's client, with ``_TcpBuffer`` on plain TCP connections (TLS buffers on its own).

    Its network loop also writes what the buffer holds when the socket becomes writable, and
    closes a connection whose socket has taken nothing for ``write_timeout_s``.
    """

    write_timeout_s = 30.0
    _net_ident: int | None = None
    """``threading.get_ident()`` of the thread running this client's network loop."""

    def loop_forever(
        self, timeout: float = 1.0, retry_first_connection: bool = False
    ) -> MQTTErrorCode:
        self._net_ident = threading.get_ident()
        return super().loop_forever(timeout, retry_first_connection)

    def _create_socket(self) -> Any:
        sock = super()._create_socket()
        if type(sock) is socket.socket:
            return _TcpBuffer(sock, self.write_timeout_s)
        return sock

    def want_write(self) -> bool:
        # called on every loop turn and after every publish: paho's own queue is read here
        # directly (what paho's want_write reads), one Python call less each time
        if self._out_packet:
            return True
        sock = self._sock
        return isinstance(sock, _TcpBuffer) and sock.pending_out()

    def loop_write(self) -> MQTTErrorCode:
        sock = self._sock
        # paho calls this on the network thread (its loop), and on the publishing thread
        # after every publish; inside a burst the buffer is held and ``release`` writes it
        # all, so there is nothing to flush then
        if isinstance(sock, _TcpBuffer) and not sock._hold:
            try:  # noqa: SIM105 (contextlib.suppress: 3 Python calls more per loop turn)
                sock.flush(wait=threading.get_ident() == self._net_ident)
            except OSError:  # closed: the read side reports it
                pass
        return super().loop_write()

    def loop_misc(self) -> MQTTErrorCode:
        sock = self._sock
        if isinstance(sock, _TcpBuffer):
            sock.check_stall()
        return super().loop_misc()


@contextlib.contextmanager
def _burst(client: paho.Client) -> Iterator[None]:
    """Write a burst of packets cheaply: in one write, with one wake-up of the network loop.

    - On a ``_TcpBuffer`` the burst is held and written at once. On other sockets (TLS) it
      is corked instead: TCP_NODELAY makes every small PUBLISH its own segment; corking
      coalesces them and uncorking sends the rest at once, so nothing waits for Nagle.
    - paho wakes its network loop (a byte on an internal socketpair) on every publish so that
      it writes what the socket did not take; the burst needs that at most once, at its end,
      and only when something is left (never with ``_TcpBuffer``, whose send takes all).
    """
    sock = client.socket()
    buffered = sock if isinstance(sock, _TcpBuffer) else None
    cork = buffered is None and _CORK is not None and isinstance(sock, socket.socket)
    if buffered is not None:
        buffered.hold()
    elif cork:
        assert isinstance(sock, socket.socket) and _CORK is not None
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, _CORK, 1)
    wake: socket.socket | None = getattr(client, "_sockpairW", None)
    if wake is not None:
        client._sockpairW = None
    try:
        yield
    finally:
        if buffered is not None:
            buffered.release()
        elif cork:
            assert isinstance(sock, socket.socket) and _CORK is not None
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, _CORK, 0)
        if wake is not None:
            client._sockpairW = wake
            if client.want_write():  # paho holds bytes the socket did not take yet
                with contextlib.suppress(OSError):
                    wake.send(b"\0")


def _make_client(settings: MqttSection, client_id: str, password: str | None) -> paho.Client:
    v5 = settings.protocol == "5"
    client = _Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
        clean_session=None if v5 else True,
        reconnect_on_failure=False,
    )
    client.on_socket_open = _nodelay
    # paho's own in-flight cap walks every unacknowledged message on each PUBACK (O(window)
    # per ack: ~125 µs at a window of 1000, the bottleneck of the whole agent). The window is
    # enforced by our publisher instead (settings.max_inflight), so paho gets none.
    client.max_inflight_messages_set(0)
    client.max_queued_messages_set(0)
    if settings.username:
        client.username_pw_set(settings.username, password)
    tls = settings.tls
    if tls.enabled:
        try:
            client.tls_set(
                ca_certs=str(tls.ca_file) if tls.ca_file else None,
                certfile=str(tls.cert_file) if tls.cert_file else None,
                keyfile=str(tls.key_file) if tls.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise PublishError(PublishError.TLS, f"TLS setup failed: {exc}") from exc
        if tls.insecure:
            client.tls_insecure_set(True)
    return client


def _connect(client: paho.Client, settings: MqttSection) -> None:
    if settings.protocol == "5":
        client.connect(settings.host, settings.port, settings.keepalive_s, clean_start=True)
    else:
        client.connect(settings.host, settings.port, settings.keepalive_s)


class MqttLink:
    """A long-lived, self-reconnecting MQTT connection.

    ``publish`` returns False when there is no connection: the caller keeps the message (in the
    spool) and sends it again after a reconnect. ``on_ack`` fires when the broker acknowledged
    a QoS>0 message (or a QoS 0 one was written), on the network thread.
    """

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
        self._will = will
        self._password = password
        self._birth = list(birth)
        self._subs: dict[str, tuple[int, MessageHandler]] = {}
        self._on_connect: list[Listener] = []
        self._on_disconnect: list[Listener] = []
        self._lock = threading.Lock()
        self._client: paho.Client | None = None
        self._session: paho.Client | None = None  # the client from its CONNACK on
        self._generation = 0
        self._pending: dict[tuple[int, int], AckCallback] = {}
        self._early: set[tuple[int, int]] = set()
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._backoff = Backoff(settings.reconnect_min_s, settings.reconnect_max_s)
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
            with self._lock:
                self._client = client
            try:
                client.loop_forever(retry_first_connection=False)
            except (OSError, ssl.SSLError) as exc:
                self.last_error = f"connection failed: {exc}"
            finally:
                was_connected = self._connected.is_set()
                self._connected.clear()
                with self._lock:
                    self._client = None
                    self._session = None
            if was_connected and not self._stop.is_set():
                log.warning("MQTT connection to %s:%s lost", self.settings.host, self.settings.port)
                for fn in self._on_disconnect:
                    fn()


def _start_short_lived(client: paho.Client, settings: MqttSection) -> str:
    """Connect a one-off client and start its network thread; returns 'host:port'."""
    where = f"{settings.host}:{settings.port}"
    try:
        _connect(client, settings)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise PublishError(
            PublishError.CONNECT, f"cannot connect to MQTT broker {where}: {exc}"
        ) from exc
    client.loop_start()
    return where


def publish_once(
    settings: MqttSection,
    client_id: str,
    messages: Sequence[OutgoingMessage],
    timeout_s: float = 10.0,
    password: str | None = None,
) -> None:
    """Connect, publish ``messages``, wait until every QoS>0 one is acknowledged, disconnect."""
    client = _make_client(settings, client_id, password)
    connected = threading.Event()
    refused: list[str] = []

    def on_connect(
        c: paho.Client, u: Any, flags: Any, reason: ReasonCode, props: Properties | None
    ) -> None:
        if reason.is_failure:
            refused.append(str(reason))
        connected.set()

    client.on_connect = on_connect
    where = _start_short_lived(client, settings)
    try:
        if not connected.wait(timeout_s) or refused:
            raise PublishError(
                PublishError.REFUSED,
                f"MQTT broker {where} did not accept us: {refused or 'timeout'}",
            )
        deadline = time.monotonic() + timeout_s
        infos = [
            (m, client.publish(m.topic, m.payload, qos=m.qos, retain=m.retain)) for m in messages
        ]
        for m, info in infos:
            remaining = max(0.0, deadline - time.monotonic())
            if info.rc != paho.MQTT_ERR_SUCCESS:
                raise PublishError(
                    PublishError.PUBLISH,
                    f"publish to {m.topic} failed: {paho.error_string(info.rc)}",
                )
            info.wait_for_publish(remaining)
            if not info.is_published():
                raise PublishError(
                    PublishError.PUBLISH,
                    f"publish to {m.topic} was not acknowledged in {timeout_s}s",
                )
    finally:
        client.disconnect()
        client.loop_stop()


def collect_retained(
    settings: MqttSection,
    client_id: str | None,
    topic_filters: Sequence[str],
    settle_s: float = 0.5,
    timeout_s: float = 10.0,
    password: str | None = None,
) -> dict[str, bytes]:
    """Snapshot the retained messages under ``topic_filters``.

    Retained messages arrive right after SUBACK; we stop once none has arrived for ``settle_s``.
    """
    client = _make_client(settings, client_id or f"edge-{uuid.uuid4().hex[:10]}", password)
    got: dict[str, bytes] = {}
    lock = threading.Lock()
    subscribed = threading.Event()
    last = [time.monotonic()]

    def on_connect(
        c: paho.Client, u: Any, flags: Any, reason: ReasonCode, props: Properties | None
    ) -> None:
        if not reason.is_failure:
            c.subscribe([(t, 1) for t in topic_filters])

    def on_subscribe(c: paho.Client, u: Any, mid: int, reasons: Any, props: Any) -> None:
        last[0] = time.monotonic()
        subscribed.set()

    def on_message(c: paho.Client, u: Any, msg: paho.MQTTMessage) -> None:
        if msg.retain:
            with lock:
                got[msg.topic] = bytes(msg.payload)
                last[0] = time.monotonic()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    where = _start_short_lived(client, settings)
    try:
        if not subscribed.wait(timeout_s):
            raise PublishError(
                PublishError.SUBSCRIBE, f"could not subscribe on {where} within {timeout_s}s"
            )
        quiet = threading.Event()
        while not quiet.wait(settle_s / 5):
            with lock:
                if time.monotonic() - last[0] >= settle_s:
                    break
        with lock:
            return dict(got)
    finally:
        client.disconnect()
        client.loop_stop()
