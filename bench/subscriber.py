"""The counting subscriber: a minimal MQTT 3.1.1 client on a raw socket, in its own thread.

It shares no code with the agent or paho, and it is cheap: one ``recv`` of up to 1 MiB is
parsed in a tight loop, so counting tens of thousands of messages a second costs a few
percent of a core (a paho subscriber would cost the measured processes a large share of the
second core). It subscribes at QoS 0: on loopback TCP nothing is lost between Mosquitto and
us, and a gap in the sequence numbers would show any loss upstream.

Per message it keeps the arrival time (``time.time()`` of the ``recv`` that completed it) and
the sequence numbers it carries (several for a batch); with ``keep_ts`` also each
prediction's ``ts`` (the time its last sample entered the agent) for latency.
"""

from __future__ import annotations

import re
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

_SEQ = re.compile(rb'"seq":\s*(\d+)')
_TS = re.compile(rb'"ts":\s*([0-9.eE+-]+)')
_VER = re.compile(rb'"version":\s*"([^"]*)"')


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(s: str) -> bytes:
    b = s.encode()
    return struct.pack("!H", len(b)) + b


@dataclass
class Arrivals:
    """What arrived: one entry per message in ``t``/``counts``, one per prediction in ``seqs``."""

    t: list[float] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    ts: list[float] = field(default_factory=list)
    """With ``keep_ts``: the prediction's ``ts`` (epoch s), aligned with ``seqs``."""
    t_pred: list[float] = field(default_factory=list)
    """With ``keep_ts``: the arrival time of each prediction, aligned with ``seqs``."""
    versions: list[str] = field(default_factory=list)
    """With ``keep_ts``: the model version of each prediction, aligned with ``seqs``."""


class Subscriber:
    """Subscribe to ``topic`` on ``host:port`` and record every message that arrives."""

    def __init__(
        self,
        host: str,
        port: int,
        topic: str,
        *,
        keep_ts: bool = False,
        session: str | None = None,
    ) -> None:
        """``session``: a client id for a persistent session subscribed at QoS 1 (the broker
        keeps messages for it while it is away); default: a clean session at QoS 0."""
        self.host = host
        self.port = port
        self.topic = topic
        self.keep_ts = keep_ts
        self.session = session
        self.qos = 1 if session else 0
        self.data = Arrivals()
        self.predictions = 0
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.error: str | None = None

    def __enter__(self) -> Subscriber:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 10.0) -> None:
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        flags = 0x00 if self.session else 0x02  # clean session unless persistent
        body = _string("MQTT") + bytes([4, flags]) + struct.pack("!H", 0)
        body += _string(self.session or f"bench-sub-{id(self):x}")
        sock.sendall(b"\x10" + _remaining_length(len(body)) + body)
        if sock.recv(4)[:1] != b"\x20":
            raise ConnectionError("the broker refused the bench subscriber")
        body = struct.pack("!H", 1) + _string(self.topic) + bytes([self.qos])
        sock.sendall(b"\x82" + _remaining_length(len(body)) + body)
        ack = b""
        while len(ack) < 5:
            ack += sock.recv(5 - len(ack))
        if ack[0] != 0x90 or ack[4] == 0x80:
            raise ConnectionError(f"subscription to {self.topic} refused")
        sock.settimeout(0.2)
        self._sock = sock
        self._thread = threading.Thread(target=self._run, name="bench-subscriber", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._sock is not None:
            self._sock.close()

    def wait_for(self, n: int, timeout: float) -> bool:
        """Until ``n`` predictions arrived (True) or ``timeout`` seconds passed (False)."""
        with self._cond:
            return self._cond.wait_for(lambda: self.predictions >= n, timeout)

    def reset(self) -> None:
        with self._cond:
            self.data = Arrivals()
            self.predictions = 0

    def _run(self) -> None:
        assert self._sock is not None
        sock = self._sock
        buf = bytearray()
        while not self._stop.is_set():
            try:
                chunk = sock.recv(1 << 20)
            except TimeoutError:
                continue
            except OSError as exc:
                self.error = str(exc)
                return
            if not chunk:
                self.error = "the broker closed the connection"
                return
            now = time.time()
            buf += chunk
            pos = self._parse(buf, now)
            del buf[:pos]

    def _parse(self, buf: bytearray, now: float) -> int:
        """Consume every complete packet in ``buf``; return how many bytes were used."""
        pos, end = 0, len(buf)
        d = self.data
        got = 0
        seq_find, ts_find, ver_find, keep_ts = _SEQ.findall, _TS.findall, _VER.findall, self.keep_ts
        acks = bytearray()
        while pos + 2 <= end:
            head = buf[pos]
            mult, length, i = 1, 0, pos + 1
            while True:
                if i >= end:
                    return self._commit(pos, got, acks)
                byte = buf[i]
                length += (byte & 0x7F) * mult
                mult *= 128
                i += 1
                if not byte & 0x80:
                    break
            if i + length > end:
                return self._commit(pos, got, acks)
            if head >> 4 == 3:  # PUBLISH
                tlen = (buf[i] << 8) | buf[i + 1]
                start = i + 2 + tlen
                if head & 0x06:  # QoS 1: a packet id to acknowledge
                    acks += b"\x40\x02" + buf[start : start + 2]
                    start += 2
                payload = bytes(buf[start : i + length])
                seqs = [int(s) for s in seq_find(payload)]
                d.t.append(now)
                d.counts.append(len(seqs))
                d.seqs += seqs
                if keep_ts:
                    d.ts += [float(t) for t in ts_find(payload)]
                    d.t_pred += [now] * len(seqs)
                    d.versions += [v.decode() for v in ver_find(payload)]
                got += len(seqs)
            pos = i + length
        return self._commit(pos, got, acks)

    def _commit(self, pos: int, got: int, acks: bytearray) -> int:
        if acks and self._sock is not None:
            self._sock.sendall(acks)
        if got:
            with self._cond:
                self.predictions += got
                self._cond.notify_all()
        return pos


def steady_rate(t: list[float], counts: list[int], skip: float = 0.1) -> float:
    """Predictions per second between the arrivals of the first and the last ``1 - skip``.

    The first ``skip`` of the predictions (start-up, the first window's fill) is left out.
    """
    total = sum(counts)
    if total == 0 or len(t) < 2:
        return 0.0
    want = total * skip
    acc = 0
    start = 0
    for start, c in enumerate(counts):  # noqa: B007 - the index is the result
        acc += c
        if acc >= want:
            break
    span = t[-1] - t[start]
    done = total - acc
    return done / span if span > 0 and done > 0 else 0.0
