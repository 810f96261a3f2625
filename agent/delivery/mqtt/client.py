"""The paho client as the agent uses it: a buffered socket, bursts, quiet acks, construction.

``_TcpBuffer`` is the plain TCP socket paho talks to; ``_Client`` lets paho's network loop
write what the buffer holds, and lets a publishing thread take the acks of its earlier
messages (quiet acks: ``_Client``'s docstring); ``_burst`` writes many PUBLISH packets at
once. TCP_NODELAY is set on every socket: paho leaves Nagle on, and Nagle plus delayed ACK
adds ~40 ms per hop to small QoS 1 messages.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from agent.config import MqttSection
from agent.delivery.mqtt.messages import AckCallback, Message
from agent.errors import PublishError

log = logging.getLogger(__name__)


def _nodelay(client: paho.Client, userdata: Any, sock: Any) -> None:
    with contextlib.suppress(OSError, AttributeError):  # unix sockets, websockets
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


_CORK: int | None = getattr(socket, "TCP_CORK", None)  # Linux

_MAX_REMAINING = 268_435_455  # MQTT's largest remaining length (4 length bytes)


def _topic_field(topic: str) -> bytes:
    """A PUBLISH packet's topic name field; ValueError for a topic paho would refuse."""
    raw = topic.encode("utf-8")
    if not raw or len(raw) > 65535 or b"+" in raw or b"#" in raw:
        raise ValueError(f"invalid topic to publish to: {topic!r}")
    return len(raw).to_bytes(2, "big") + raw


def _fixed_header(first: int, size: int) -> bytes:
    """The fixed header: the first byte, then the remaining length (1 to 4 bytes)."""
    if size < 128:
        return bytes((first, size))
    out = bytearray((first,))
    while True:
        b = size & 127
        size >>= 7
        if size:
            out.append(b | 128)
        else:
            out.append(b)
            return bytes(out)


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
    - our own PUBLISH packets (``publish``, the predictions' path) are encoded here from a
      cached per-topic header and their PUBACKs are taken off the incoming stream here, by
      packet id, before paho parses anything: per message, paho's ``publish`` (~20 Python
      calls and three objects, a ``Condition`` among them) and its PUBACK handling (~45
      calls: packet decoding, properties and reason-code objects, callbacks) become a few
      bytes operations. Everything else (CONNACK, SUBACK, PINGRESP, incoming PUBLISHes, the
      PUBACKs of what paho itself published) reaches paho unchanged and in order: the
      incoming stream is cut at packet boundaries, and an incomplete packet waits here
      until its last byte arrives. Packet ids come from paho's own counter, so the two
      never collide.
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
        self._partial = b""  # the start of an incoming packet whose end has not arrived
        self._framing = True  # False after a malformed length: paho gets the bytes as they are
        self.acks: dict[int, AckCallback] = {}
        """Packet id -> callback for the QoS 1 messages ``publish`` sent and not yet acked."""
        self.refused = 0
        """PUBACKs with a failure reason code (MQTT 5): the message stays unacknowledged."""
        self._topics: dict[str, bytes] = {}

    # ---------------------------------------------------------------- reading (network thread)

    def recv(self, n: int) -> bytes:
        buf, pos = self._rbuf, self._rpos
        if pos < len(buf):
            end = min(pos + n, len(buf))
            self._rpos = end
            return buf[pos:end]
        data = self.tcp.recv(max(n, 65536))
        if data and self._framing:
            data = self._split(self._partial + data if self._partial else data)
            if not data:  # only our PUBACKs, or a packet's first part: nothing for paho yet
                raise BlockingIOError
        if len(data) <= n:
            self._rbuf, self._rpos = b"", 0
            return data
        self._rbuf, self._rpos = data, n
        return data[:n]

    def pending(self) -> int:
        return len(self._rbuf) - self._rpos

    def take_acks(self) -> bool | None:
        """On a publishing thread (quiet acks; the caller holds ``_Client._reading``): read
        what the socket holds, without waiting, and fire the callbacks of our
        PUBACKs in it. True when something is left for the network thread (bytes for paho,
        part of a packet, the end of the stream, an error); None when nothing was there."""
        if self._rpos < len(self._rbuf) or self._partial or not self._framing:
            return True  # the network thread's to read
        try:
            data = self.tcp.recv(65536)
        except BlockingIOError:
            return None
        except OSError:  # the network thread's select/recv sees it too
            return True
        if not data:  # the end of the stream
            return True
        rest = self._split(data)
        if rest:
            self._rbuf, self._rpos = rest, 0
        return bool(rest or self._partial)

    def _split(self, buf: bytes) -> bytes:
        """``buf`` less our PUBACKs (their callbacks run here) and less a trailing incomplete
        packet (kept for the next read): what paho gets, whole packets in their order."""
        acks = self.acks
        n = len(buf)
        i = start = 0
        kept: list[bytes] = []
        fired: list[AckCallback] = []
        while i + 2 <= n:
            j = i + 2
            b = buf[i + 1]
            size = b & 127
            if b & 128:  # a multi-byte remaining length (not a PUBACK)
                mult = 128
                while True:
                    if j >= n:
                        break
                    b = buf[j]
                    j += 1
                    size += (b & 127) * mult
                    if not b & 128:
                        break
                    mult *= 128
                    if mult > 128**3:  # more than 4 length bytes: paho reports the error
                        self._framing = False
                        i = n  # the rest goes to paho as it is, nothing kept back
                        break
                if b & 128:
                    break  # the length is incomplete (kept back) or malformed (i = n)
            end = j + size
            if end > n:
                break
            if buf[i] == 0x40 and size >= 2:  # PUBACK
                cb = acks.pop(buf[j] << 8 | buf[j + 1], None)
                if cb is not None:
                    if i > start:
                        kept.append(buf[start:i])
                    start = end
                    if size == 2 or buf[j + 2] < 0x80:
                        fired.append(cb)
                    else:
                        self.refused += 1
            i = end
        self._partial = buf[i:]
        out = self._joined(kept, buf[start:i])
        for cb in fired:
            cb()
        return out

    @staticmethod
    def _joined(kept: list[bytes], tail: bytes) -> bytes:
        if not kept:
            return tail
        kept.append(tail)
        return b"".join(kept)

    # ---------------------------------------------------------------- our PUBLISH packets

    def publish(
        self,
        items: Sequence[tuple[Message, AckCallback | None]],
        next_mid: Callable[[], int],
        v5: bool,
    ) -> int:
        """Encode and write ``items`` (QoS 0 or 1) in order as one burst; returns how many.

        The callback of a QoS 1 message is registered under its packet id before the packet
        can leave (its PUBACK may be read on another thread at once); a QoS 0 message's runs
        once it is handed to the socket, as paho does. ``ValueError`` for a topic paho would
        refuse (wildcards, too long) or a payload over MQTT's limit, before anything is sent.
        """
        topics, acks = self._topics, self.acks
        props = b"\0" if v5 else b""
        parts: list[bytes] = []
        written: list[AckCallback] = []
        for msg, on_ack in items:
            head = topics.get(msg.topic)
            if head is None:
                head = topics[msg.topic] = _topic_field(msg.topic)
            qos = msg.qos
            if qos == 1:
                mid = next_mid()
                var = head + mid.to_bytes(2, "big") + props
                if on_ack is not None:
                    acks[mid] = on_ack
            elif qos == 0:
                var = head + props
                if on_ack is not None:
                    written.append(on_ack)
            else:
                raise ValueError(f"QoS {qos}: the agent publishes at QoS 0 or 1")
            payload = msg.payload
            size = len(var) + len(payload)
            if size > _MAX_REMAINING:
                raise ValueError(f"payload too large for MQTT: {len(payload)} bytes")
            parts += (_fixed_header(0x30 | qos << 1 | (1 if msg.retain else 0), size), var, payload)
        with self._lock:
            self._out += b"".join(parts)
            held = self._hold
        if not held:
            try:  # noqa: SIM105 (contextlib.suppress: 3 Python calls more per burst)
                self.flush()
            except OSError:  # the connection is closed: paho will notice
                pass
        for cb in written:
            cb()
        return len(items)

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


QUIET_LOWAT = {paho.MQTTv5: 6, paho.MQTTv311: 5}
"""The socket's low-water mark while acks are quiet, by protocol: ``select`` returns only once
this many bytes wait (or at the end of the stream, or on an error, whatever the mark).

A PUBACK is 4 bytes (fixed header 2, message id 2), in MQTT 5 one more for a reason code
other than success (Mosquitto sends 0x10, "no matching subscribers", whenever nobody
subscribes to the topic); a PINGRESP is 2. Every other packet a broker sends to a connected
client is longer: a PUBLISH has a fixed header of 2, a topic length of 2, a topic of at
least one character and, in MQTT 5, a properties length (5 bytes in MQTT 3.1.1, 6 in MQTT
5, at the least); a SUBACK in MQTT 5 is at least 6. So those still wake the network thread
at once, and so do two acks nobody read."""


class AckMode:
    """How soon a link's acks must be read; shared by ``MqttLink`` and each connection's client.

    ``prompt`` (the default): the network thread reads every ack as it arrives. Off (the
    publisher has nothing waiting on acks: ``MqttLink.prompt_acks(False)``), acks may wait
    for the next burst on the publishing thread, and for at most ``hold_s`` after the last
    one (``_Client``: quiet acks).
    """

    __slots__ = ("hold_s", "prompt")

    def __init__(self, hold_s: float) -> None:
        self.hold_s = hold_s
        self.prompt = True


class _Client(paho.Client):
    """paho's client, with ``_TcpBuffer`` on plain TCP connections (TLS buffers on its own).

    Its network loop also writes what the buffer holds when the socket becomes writable, and
    closes a connection whose socket has taken nothing for ``write_timeout_s``.

    **Quiet acks** (plain TCP, ``allow_quiet_acks``; ``MqttLink`` does it): a PUBACK arrives
    ~1 ms after its PUBLISH, and waking the network thread for it costs more CPU than
    handling it (a wake-up on a cold cache, a GIL hand-off, a loop turn). So while a thread
    publishes bursts (``after_burst``: one within the last ``AckMode.hold_s``) and nobody
    waits on acks (``AckMode.prompt`` off):

    - the network thread raises the socket's low-water mark to ``QUIET_LOWAT``: a lone PUBACK
      (or PINGRESP) no longer wakes it; anything else still does at once (a PUBLISH for a
      subscription: the MQTT source's samples, commands; a SUBACK; two PUBACKs nobody read;
      the end of the connection or an error). It still wakes every ``hold_s`` for paho's
      keepalive (``loop_misc``) and to see whether the bursts stopped;
    - the publishing thread, right before each burst, reads what the socket already holds
      without waiting (the acks of its earlier messages: at a steady rate they arrived long
      before) and takes our PUBACKs off it by packet id as the network thread would
      (``before_burst``, ``_TcpBuffer.take_acks``): their callbacks run on that thread.
      Anything else (bytes for paho, part of a packet, the end of the stream, an error) is
      left to the network thread, which it wakes (``wake_loop``); paho's packet handling,
      disconnects included, stays there. One thread at a time reads (``_reading``);
    - the mark goes back to 1 byte, so every ack is read as it arrives, when the bursts
      stop (within ``hold_s``), when someone waits on acks (``read_acks_now``: the kernel
      wakes the network thread at once if bytes wait), while a PINGRESP is awaited, while
      half a packet has been read, and before the CONNACK.

    So at a steady rate one wake-up per prediction remains: the producer's own. TLS
    connections keep the old mode (a PUBACK in a TLS record is more than 5 bytes on the
    wire, and a non-blocking read of an SSL socket may return nothing but a record's part).
    """

    write_timeout_s = 30.0
    _net_ident: int | None = None
    """``threading.get_ident()`` of the thread running this client's network loop."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._reading = threading.Lock()  # held by the thread reading the socket (+ paho)
        self._ack_mode: AckMode | None = None  # quiet acks allowed (allow_quiet_acks)
        self._quiet_lock = threading.Lock()  # guards _quiet and the socket's mark
        self._quiet = False  # the low-water mark is raised
        self._last_burst = 0.0  # monotonic time of the last after_burst
        self._wake_w: socket.socket | None = None
        self._lowat = 0  # QUIET_LOWAT of the protocol
        self.turns = 0
        """Network loop turns (each one ``select`` return); tests and bench count them."""
        super().__init__(*args, **kwargs)

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
            net = threading.get_ident() == self._net_ident
            try:  # noqa: SIM105 (contextlib.suppress: 3 Python calls more per loop turn)
                sock.flush(wait=net)
            except OSError:  # closed: the read side reports it
                pass
            if sock._out and not net:  # the socket is full: the network thread writes it
                self.wake_loop()
        return super().loop_write()

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        with self._reading:
            return super().loop_read(max_packets)

    def loop_misc(self) -> MQTTErrorCode:
        sock = self._sock
        if isinstance(sock, _TcpBuffer):
            sock.check_stall()
        return super().loop_misc()

    # ---------------------------------------------------------------- quiet acks

    def allow_quiet_acks(self, mode: AckMode) -> None:
        """Let acks wait for the publishing thread while ``mode`` allows it (after
        ``connect``, before ``loop_forever``; plain TCP only; not with ``loop_start``, whose
        wake-up pair paho owns)."""
        lowat = QUIET_LOWAT.get(self._protocol)
        if self._sockpairR is not None or lowat is None or type(self._sock) is not _TcpBuffer:
            return  # paho's wake-up pair, another protocol, TLS: the network thread reads all
        self._lowat = lowat
        # paho's loop also selects on _sockpairR: our wake-up (paho writes to it only
        # through _sockpairW, which stays None: no wake-up per publish)
        r, w = socket.socketpair()
        r.setblocking(False)
        w.setblocking(False)
        self._sockpairR, self._wake_w = r, w
        self._ack_mode = mode

    def close_wake(self) -> None:
        """Close the wake-up pair (the network loop has returned)."""
        self._ack_mode = None
        r, w = self._sockpairR, self._wake_w
        self._sockpairR = self._wake_w = None
        for s in (r, w):
            if s is not None:
                s.close()

    def wake_loop(self) -> None:
        """Make the network loop turn now (any thread)."""
        w = self._wake_w
        if w is not None:
            try:  # noqa: SIM105
                w.send(b"\0")
            except OSError:  # full (a wake-up is pending anyway), or closed
                pass

    @property
    def quiet(self) -> bool:
        """A lone PUBACK does not wake the network thread now."""
        return self._quiet

    def read_acks_now(self) -> None:
        """Someone waits on acks (any thread): every ack is read as it arrives from now on;
        the kernel wakes the network thread at once if bytes wait."""
        with self._quiet_lock:
            if not self._quiet:
                return
            self._quiet = False
            self._set_lowat(1)
        # Linux wakes a select whose socket the lower mark makes readable (tcp_set_rcvlowat);
        # a turn of the loop makes that independent of the kernel, once per change
        self.wake_loop()

    def before_burst(self) -> None:
        """Right before a burst, on its thread (``MqttLink.publish_many``): while acks are
        quiet, take the ones already received. Before, not after: the acks of this burst
        then arrive at an empty socket (below the low-water mark, nobody woken), while
        after it a quick broker's first ack could join one left unread and wake the
        network thread."""
        if self._quiet:
            sock = self._sock
            if type(sock) is _TcpBuffer:
                self._take_acks(sock)

    def after_burst(self) -> None:
        """Right after a burst, on its thread (``MqttLink.publish_many``)."""
        if self._ack_mode is None:
            return
        sock = self._sock
        if type(sock) is not _TcpBuffer:
            return
        self._last_burst = time.monotonic()
        if sock._out:  # the socket did not take it all: the network thread writes the rest
            self.wake_loop()

    def _take_acks(self, sock: _TcpBuffer) -> None:
        """Take the acks already received (``_TcpBuffer.take_acks``) unless the network thread
        is reading; wake it for anything else found."""
        if not self._reading.acquire(blocking=False):
            return  # the network thread is reading
        try:
            left = None if self._in_packet["command"] else sock.take_acks()
        finally:
            self._reading.release()
        if left:
            self.wake_loop()

    def _loop(self, timeout: float = 1.0) -> MQTTErrorCode:
        self.turns += 1
        if self._ack_mode is not None:
            timeout = self._quiet_turn(timeout)
        return super()._loop(timeout)

    def _quiet_turn(self, timeout: float) -> float:
        """Before the network thread's select: raise or lower the low-water mark; the select
        timeout (quiet: at most until the bursts are ``hold_s`` old)."""
        mode = self._ack_mode
        sock = self._sock
        assert mode is not None
        left = self._last_burst + mode.hold_s - time.monotonic()
        with self._quiet_lock:
            quiet = (
                left > 0
                and not mode.prompt
                and type(sock) is _TcpBuffer
                and not self._ping_t  # a PINGRESP is awaited
                and not self._in_packet["command"]  # half a packet read
                and not sock._partial
                and sock._framing  # paho reads the stream as it is
                and not sock.pending()
                and self.is_connected()  # a CONNACK is 4 bytes
            )
            if quiet != self._quiet and self._set_lowat(self._lowat if quiet else 1):
                self._quiet = quiet
            return min(timeout, left) if self._quiet else timeout

    def _set_lowat(self, n: int) -> bool:
        sock = self._sock
        if type(sock) is not _TcpBuffer:
            return n == 1
        try:
            sock.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, n)
        except OSError:  # closed: the read side reports it
            return n == 1
        return True


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


def tls_problems(settings: MqttSection) -> list[tuple[str, str]]:
    """Every TLS file that is missing or does not parse, as ``(key path, reason)``.

    Start-up and ``check-config`` run this before anything connects: a missing CA file is a
    configuration error naming the file, not a connection that fails forever.
    """
    tls = settings.tls
    if not tls.enabled:
        return []
    problems: list[tuple[str, str]] = []
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if tls.ca_file is not None:
        try:
            ctx.load_verify_locations(cafile=str(tls.ca_file))
        except FileNotFoundError:
            problems.append(("mqtt.tls.ca_file", f"{tls.ca_file} does not exist"))
        except (OSError, ssl.SSLError, ValueError) as exc:
            problems.append(("mqtt.tls.ca_file", f"{tls.ca_file} is not a PEM CA bundle: {exc}"))
    if tls.cert_file is not None and tls.key_file is not None:
        missing = [(k, p) for k, p in (("cert_file", tls.cert_file), ("key_file", tls.key_file))
                   if not p.is_file()]  # fmt: skip
        for key, path in missing:
            problems.append((f"mqtt.tls.{key}", f"{path} does not exist"))
        if not missing:
            try:
                ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
            except (OSError, ssl.SSLError, ValueError) as exc:
                problems.append(
                    (
                        "mqtt.tls.cert_file",
                        f"{tls.cert_file} / {tls.key_file} are not a certificate and its "
                        f"private key: {exc}",
                    )
                )
    return problems


def _make_client(settings: MqttSection, client_id: str, password: str | None) -> _Client:
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
            files = ", ".join(f"{k} {v}" for k, v in tls_problems(settings)) or str(exc)
            raise PublishError(PublishError.TLS, f"TLS setup failed: {exc} ({files})") from exc
        if tls.insecure:
            client.tls_insecure_set(True)
    return client


def _connect(client: paho.Client, settings: MqttSection) -> None:
    if settings.protocol == "5":
        client.connect(settings.host, settings.port, settings.keepalive_s, clean_start=True)
    else:
        client.connect(settings.host, settings.port, settings.keepalive_s)
