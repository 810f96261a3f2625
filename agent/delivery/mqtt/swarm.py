"""Many MQTT clients served by one thread: paho's external-loop API on one selector.

The fleet simulator (``agent.fleet.simulator``) runs thousands of devices, each a real MQTT
client with its own id, session and last will. A paho network thread per client would cost a
thread stack and a wake-up per client; instead every client's socket sits in one
``selectors.DefaultSelector`` (epoll) and one thread calls ``loop_read`` when a socket is
readable, ``loop_write`` when paho has asked for write readiness (``on_socket_register_write``)
and ``loop_misc`` once a second for keep-alives. Timed work (``call_at``) runs on the same
thread, so the simulator's device logic never races paho: everything one client does happens
on this thread.

It lives in the MQTT seam package (``agent.delivery.mqtt``, the only one importing paho).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import resource
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

log = logging.getLogger(__name__)

MISC_EVERY_S = 1.0

OnConnect = Callable[["SwarmClient"], None]
OnMessage = Callable[["SwarmClient", str, bytes], None]
OnLost = Callable[["SwarmClient"], None]


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's open-file limit towards ``wanted`` (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return int(soft)


@dataclass
class Will:
    """A client's last will: published by the broker when the client drops."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


class SwarmClient:
    """One connection of the swarm (a fresh paho client per connection, as ``MqttLink``)."""

    def __init__(
        self,
        swarm: Swarm,
        client_id: str,
        will: Will | None,
        on_connect: OnConnect,
        on_message: OnMessage,
        on_lost: OnLost,
    ) -> None:
        self.swarm = swarm
        self.client_id = client_id
        self.connected = False
        self._on_connect = on_connect
        self._on_message = on_message
        self._on_lost = on_lost
        c = self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv311,
            userdata=self,
        )
        c.max_inflight_messages_set(100)
        c.max_queued_messages_set(0)
        if will is not None:
            c.will_set(will.topic, will.payload, will.qos, will.retain)
        c.on_connect = self._connected
        c.on_message = self._message
        c.on_socket_open = swarm._sock_open
        c.on_socket_close = swarm._sock_close
        c.on_socket_register_write = swarm._want_write
        c.on_socket_unregister_write = swarm._done_write

    # paho callbacks (swarm thread)
    def _connected(self, c: paho.Client, u: Any, f: Any, rc: Any, p: Any) -> None:
        if not rc.is_failure:
            self.connected = True
            self._on_connect(self)

    def _message(self, c: paho.Client, u: Any, msg: paho.MQTTMessage) -> None:
        self._on_message(self, msg.topic, bytes(msg.payload))

    # used by the owner (on the swarm thread)
    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        if self.connected:
            self._client.publish(topic, payload, qos, retain)

    def subscribe(self, filters: list[tuple[str, int]]) -> None:
        self._client.subscribe(filters)

    def drop(self) -> None:
        """Vanish without DISCONNECT (a power cut): the broker publishes the last will."""
        self.connected = False
        sock = self._client.socket()
        if sock is not None:
            self.swarm._forget(sock)
            with contextlib.suppress(OSError):
                sock.close()

    def disconnect(self) -> None:
        """A clean DISCONNECT (no last will)."""
        if self.connected:
            self._client.disconnect()
            self.connected = False

    # driven by the swarm
    def _connect(self, host: str, port: int, keepalive: int) -> None:
        self._client.connect(host, port, keepalive)

    def _read(self) -> None:
        rc = self._client.loop_read()
        if rc != paho.MQTT_ERR_SUCCESS:
            self._lost()

    def _write(self) -> None:
        rc = self._client.loop_write()
        if rc != paho.MQTT_ERR_SUCCESS:
            self._lost()

    def _misc(self) -> None:
        if self._client.socket() is not None and self._client.loop_misc() != paho.MQTT_ERR_SUCCESS:
            self._lost()

    def _lost(self) -> None:
        was = self.connected
        self.drop()
        if was or self in self.swarm._clients:
            self.swarm._clients.discard(self)
            self._on_lost(self)


class Swarm:
    """One thread, one selector, many ``SwarmClient``s and a timer heap."""

    def __init__(self, host: str, port: int, keepalive: int = 60) -> None:
        self.host = host
        self.port = port
        self.keepalive = keepalive
        self._sel = selectors.DefaultSelector()
        self._owners: dict[int, SwarmClient] = {}
        self._clients: set[SwarmClient] = set()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._pending: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self.connect_errors = 0

    # ------------------------------------------------------------ scheduling

    def call_at(self, when: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the swarm thread at ``when`` (``time.monotonic``); swarm thread only."""
        heapq.heappush(self._timers, (when, next(self._seq), fn))

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        self.call_at(time.monotonic() + delay, fn)

    def call_soon_threadsafe(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the swarm thread as soon as it wakes (from any thread)."""
        with self._lock:
            self._pending.append(fn)
        with contextlib.suppress(OSError):  # full (a wake-up is pending anyway) or closed
            self._wake_w.send(b"x")

    # ------------------------------------------------------------ clients

    def client(
        self,
        client_id: str,
        *,
        will: Will | None,
        on_connect: OnConnect,
        on_message: OnMessage,
        on_lost: OnLost,
    ) -> SwarmClient:
        """A new connection, connected now (a blocking TCP connect; CONNECT is queued)."""
        c = SwarmClient(self, client_id, will, on_connect, on_message, on_lost)
        try:
            c._connect(self.host, self.port, self.keepalive)
        except OSError:
            self.connect_errors += 1
            on_lost(c)
            return c
        self._clients.add(c)
        return c

    @property
    def size(self) -> int:
        return len(self._clients)

    # paho external-loop callbacks
    def _sock_open(self, client: paho.Client, owner: SwarmClient, sock: Any) -> None:
        self._owners[sock.fileno()] = owner
        self._sel.register(sock, selectors.EVENT_READ, sock.fileno())

    def _sock_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._forget(sock)

    def _forget(self, sock: Any) -> None:
        try:
            fd = sock.fileno()
        except OSError:
            return
        if fd in self._owners:
            del self._owners[fd]
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(sock)

    def _want_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if sock.fileno() in self._owners:
            self._sel.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, sock.fileno())

    def _done_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if sock.fileno() in self._owners:
            self._sel.modify(sock, selectors.EVENT_READ, sock.fileno())

    # ------------------------------------------------------------ the loop

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="swarm", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.call_soon_threadsafe(lambda: None)
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> None:
        next_misc = time.monotonic() + MISC_EVERY_S
        while not self._stop.is_set():
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                _, _, fn = heapq.heappop(self._timers)
                self._safely(fn)
            if now >= next_misc:
                for c in list(self._clients):
                    self._safely(c._misc)
                next_misc = now + MISC_EVERY_S
            timeout = next_misc - now
            if self._timers:
                timeout = min(timeout, self._timers[0][0] - now)
            for key, events in self._sel.select(max(0.0, timeout)):
                if key.data is None:
                    self._drain_wake()
                    continue
                owner = self._owners.get(key.data)
                if owner is None:
                    continue
                if events & selectors.EVENT_READ:
                    self._safely(owner._read)
                if events & selectors.EVENT_WRITE and key.data in self._owners:
                    self._safely(owner._write)
        for c in list(self._clients):
            self._safely(c.disconnect)
            self._safely(c._write)
            self._safely(c.drop)
        self._clients.clear()
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        with self._lock:
            pending, self._pending = self._pending, []
        for fn in pending:
            self._safely(fn)

    @staticmethod
    def _safely(fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:  # one broken client must not stop the others
            log.exception("swarm: error in %r", fn)
