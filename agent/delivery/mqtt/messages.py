"""What the MQTT seam carries: outgoing messages and the callback types."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

MessageHandler = Callable[[str, bytes], None]
AckCallback = Callable[[], None]
Listener = Callable[[], None]


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """One MQTT message to publish: topic, payload bytes, QoS, retain."""

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
