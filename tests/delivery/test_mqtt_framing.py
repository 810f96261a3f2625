"""``_TcpBuffer`` cuts the incoming stream into MQTT packets: its own PUBACKs are taken off
(their callbacks run once each), everything else reaches paho whole and in order, however the
bytes are split across reads. Checked against a stream built independently, packet by packet."""

from __future__ import annotations

import socket
from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.delivery.mqtt.client import _fixed_header, _TcpBuffer


def _remaining(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n % 128, n // 128
        out.append(b | (128 if n else 0))
        if not n:
            return bytes(out)


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + _remaining(len(body)) + body


class _Feed:
    """Stands for the TCP socket: hands out the given chunks one ``recv`` at a time."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def recv(self, n: int) -> bytes:
        if not self.chunks:
            raise BlockingIOError
        return self.chunks.pop(0)

    def fileno(self) -> int:
        return -1


def _drain(buf: _TcpBuffer, size: int) -> bytes:
    """What paho would read: 1-byte reads until the feed of ``size`` bytes is empty."""
    out = bytearray()
    for _ in range(2 * size + 10):
        try:
            out += buf.recv(1)
        except BlockingIOError:
            if not buf.tcp.chunks:  # type: ignore[attr-defined]
                break
    return bytes(out)


packets = st.lists(
    st.one_of(
        st.tuples(st.just("ours"), st.integers(1, 65535), st.sampled_from([b"", b"\x00", b"\x10"])),
        st.tuples(st.just("paho-ack"), st.integers(1, 65535), st.just(b"")),
        st.tuples(st.just("publish"), st.integers(0, 3), st.binary(max_size=300)),
        st.tuples(st.just("ping"), st.just(0), st.just(b"")),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(packets, st.lists(st.integers(1, 400), min_size=1, max_size=30))
def test_our_pubacks_are_taken_off_and_the_rest_reaches_paho_in_order(
    spec: list[tuple[str, int, bytes]], cuts: list[int]
) -> None:
    stream = bytearray()
    for_paho = bytearray()
    ours: dict[int, Callable[[], None]] = {}
    fired: list[int] = []
    want_fired: list[int] = []
    used: set[int] = set()  # packet ids are unique among the messages in flight
    for kind, k, data in spec:
        if kind in ("ours", "paho-ack"):
            if k in used:
                continue
            used.add(k)
        if kind == "ours":
            ours[k] = lambda k=k: fired.append(k)  # type: ignore[misc]
            p = _packet(0x40, k.to_bytes(2, "big") + data)
            if not data or data[0] < 0x80:
                want_fired.append(k)
            stream += p
        elif kind == "paho-ack":  # an id nobody registered here: paho's
            p = _packet(0x40, k.to_bytes(2, "big"))
            stream += p
            for_paho += p
        elif kind == "publish":
            p = _packet(0x30 | (k & 1) << 1, b"\x00\x03a/b" + data)
            stream += p
            for_paho += p
        else:
            stream += b"\xd0\x00"
            for_paho += b"\xd0\x00"
    chunks: list[bytes] = []
    pos = 0
    for c in cuts * (len(stream) // max(sum(cuts), 1) + 1):
        if pos >= len(stream):
            break
        chunks.append(bytes(stream[pos : pos + c]))
        pos += c
    if pos < len(stream):
        chunks.append(bytes(stream[pos:]))
    buf = _TcpBuffer(socket.socket(), 30.0)
    buf.tcp.close()
    buf.tcp = _Feed(chunks)  # type: ignore[assignment]
    buf.acks.update(ours)
    assert _drain(buf, len(stream)) == bytes(for_paho)
    assert fired == want_fired
    assert buf.acks == {}  # every one of ours was in the stream: taken, fired or refused
    assert buf.refused == len(ours) - len(want_fired)


def test_a_remaining_length_over_four_bytes_goes_to_paho_as_it_is() -> None:
    """Malformed framing is paho's to report (a protocol error): the bytes pass unchanged,
    and one of our PUBACKs read before them in the same chunk still fires its callback."""
    bad = b"\x30\xff\xff\xff\xff\x01rest"
    fired: list[int] = []
    buf = _TcpBuffer(socket.socket(), 30.0)
    buf.tcp.close()
    buf.tcp = _Feed([_packet(0x40, b"\x00\x07") + bad])  # type: ignore[assignment]
    buf.acks[7] = lambda: fired.append(7)
    assert _drain(buf, 4 + len(bad)) == bad
    assert fired == [7] and buf.acks == {}


def test_the_fixed_header_encodes_the_remaining_length_as_mqtt_does() -> None:
    for n in (0, 1, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, 268_435_455):
        assert _fixed_header(0x32, n) == b"\x32" + _remaining(n)
