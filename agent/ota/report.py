"""What the device tells the fleet about its updates: the retained ``OtaStateV1`` message.

Published retained on ``<prefix>/<device>/ota`` at start, on every state change, while
downloading (progress, at most every ``PROGRESS_EVERY_S``), on every refused offer, and again
after each reconnect. docs/ota.md shows the JSON.

The persisted machine states map to the reported ``state`` as: ``activating`` -> ``staged``,
``trial`` -> ``active`` with ``health = "watching"``, ``active`` -> ``active`` with
``health = "passed"``; the others by name.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Literal, Protocol

from agent.delivery.mqtt import OutgoingMessage
from agent.ota.state import Record, State
from agent.wire.ota import DownloadProgress, OtaStateV1, Phase, Refusal, TufStatus

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 1.0

_PHASE: dict[State, Phase] = {
    State.IDLE: "idle",
    State.DOWNLOADING: "downloading",
    State.VERIFYING: "verifying",
    State.STAGED: "staged",
    State.SHADOW: "shadow",
    State.ACTIVATING: "staged",
    State.TRIAL: "active",
    State.ACTIVE: "active",
    State.ROLLED_BACK: "rolled_back",
    State.FAILED: "failed",
}


class StateLink(Protocol):
    """The part of ``agent.delivery.mqtt.MqttLink`` the reporter uses."""

    def publish(self, msg: OutgoingMessage, on_ack: Callable[[], None] | None = None) -> bool: ...

    def add_connect_listener(self, fn: Callable[[], None]) -> None: ...


class Reporter:
    """Builds and publishes ``OtaStateV1``; safe to call from any thread."""

    def __init__(self, link: StateLink, topic: str, device: str, model: str) -> None:
        self._link = link
        self._topic = topic
        self._device = device
        self._model = model
        self._lock = threading.Lock()
        self._last: OtaStateV1 | None = None
        self._refusal: Refusal | None = None
        self._tuf: TufStatus | None = None
        self._progress_at = 0.0
        link.add_connect_listener(self.republish)

    @property
    def last(self) -> OtaStateV1 | None:
        return self._last

    def state(
        self,
        record: Record,
        running: str,
        progress: tuple[int, int] | None = None,
        awaiting: bool = False,
        running_sha256: str | None = None,
    ) -> OtaStateV1:
        """Publish the state of ``record`` (``running``: the version serving now, and the
        sha256 of its artifact when known; ``awaiting``: no model yet: ``idle`` is shown as
        ``awaiting_model``)."""
        phase: Phase = _PHASE[record.state]
        if awaiting and record.state is State.IDLE:
            phase = "awaiting_model"
        idle = record.state is State.IDLE
        version = running if idle else record.version
        sha256 = running_sha256 if idle else record.sha256
        health: Literal["watching", "passed"] | None = None
        if record.state is State.TRIAL:
            health = "watching"
        elif record.state is State.ACTIVE:
            health = "passed"
        with self._lock:
            msg = OtaStateV1(
                device=self._device,
                model=self._model,
                state=phase,
                version=version,
                sha256=sha256 or None,
                running=running,
                running_sha256=running_sha256 or None,
                previous=record.previous,
                source=record.source,
                reason=record.reason,
                detail=record.detail,
                progress=DownloadProgress(bytes=progress[0], total=progress[1])
                if progress
                else None,
                health=health,
                refusal=self._refusal,
                tuf=self._tuf,
                ts=time.time(),
            )
            self._last = msg
        self._send(msg)
        return msg

    def progress_due(self) -> bool:
        """True at most every ``PROGRESS_EVERY_S``: throttles download progress reports."""
        now = time.monotonic()
        if now - self._progress_at >= PROGRESS_EVERY_S:
            self._progress_at = now
            return True
        return False

    def refused(
        self,
        version: str | None,
        reason: str,
        detail: str,
        source: str | None,
        sha256: str | None = None,
    ) -> None:
        """Record a refused offer (``sha256``: the build its manifest claims) and publish it
        with the unchanged state."""
        with self._lock:
            self._refusal = Refusal(
                version=version,
                sha256=sha256,
                reason=reason,
                detail=detail,
                source=source,
                at=time.time(),
            )
            last = self._last
            if last is None:
                return
            msg = last.model_copy(update={"refusal": self._refusal, "ts": time.time()})
            self._last = msg
        self._send(msg)

    def tuf(self, status: TufStatus) -> None:
        """Record the TUF metadata's state (sent with the next report and republished now)."""
        with self._lock:
            self._tuf = status
            last = self._last
            if last is None:
                return
            msg = last.model_copy(update={"tuf": status, "ts": time.time()})
            self._last = msg
        self._send(msg)

    def republish(self) -> None:
        """Send the latest state again (after a reconnect); never blocks."""
        with self._lock:
            msg = self._last
        if msg is not None:
            self._send(msg)

    def _send(self, msg: OtaStateV1) -> None:
        payload = json.dumps(msg.model_dump(mode="json"), separators=(",", ":")).encode()
        if not self._link.publish(OutgoingMessage(self._topic, payload, qos=1, retain=True)):
            log.debug("OTA state not published (offline); it is sent again on reconnect")
