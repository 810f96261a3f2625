"""A stand-in for systemd's notify socket: a real AF_UNIX datagram socket that records messages.

It enables ``SO_PASSCRED`` like systemd does, so each message carries the sender's pid (systemd
uses it for ``NotifyAccess=main``).
"""

from __future__ import annotations

import os
import socket
import struct
import time
import uuid
from dataclasses import dataclass

_UCRED = struct.Struct("3i")


@dataclass(frozen=True)
class Message:
    raw: bytes
    pid: int | None

    @property
    def fields(self) -> dict[str, str]:
        out = {}
        for line in self.raw.decode().split("\n"):
            key, _, value = line.partition("=")
            out[key] = value
        return out


class NotifyListener:
    """Bound to ``@edge-agent-test-<random>`` (abstract) or to a path; ``env`` is NOTIFY_SOCKET."""

    def __init__(self, path: str | None = None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        if path is None:
            name = f"edge-agent-test-{os.getpid()}-{uuid.uuid4().hex[:12]}"
            self.sock.bind(b"\0" + name.encode())
            self.env = "@" + name
        else:
            self.sock.bind(path)
            self.env = path

    def recv(self, timeout: float = 5.0) -> Message:
        """The next message; TimeoutError when none arrives within ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            data, anc, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(_UCRED.size))
        except TimeoutError:
            raise TimeoutError(f"no sd_notify message within {timeout}s") from None
        pid = None
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = _UCRED.unpack(payload[: _UCRED.size])[0]
        return Message(data, pid)

    def pending(self) -> list[Message]:
        """Every message already queued, without waiting."""
        out = []
        while True:
            try:
                out.append(self.recv(timeout=0.0))
            except (TimeoutError, BlockingIOError):
                return out

    def collect(self, seconds: float) -> list[Message]:
        """Everything that arrives within ``seconds`` (for checking that something stays away)."""
        deadline = time.monotonic() + seconds
        out = []
        while (left := deadline - time.monotonic()) > 0:
            try:
                out.append(self.recv(timeout=left))
            except TimeoutError:
                break
        return out

    def close(self) -> None:
        self.sock.close()
