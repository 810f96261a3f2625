"""Predictions leave here: sequence numbers, the spool, MQTT, acknowledgements.

One thread owns the ``Spool`` and all delivery state. Everything reaches it through one
``SimpleQueue`` of events — new predictions (from inference), acks (from the MQTT network
thread), connection changes — so no lock guards the delivery state.

For each batch of new predictions it assigns sequence numbers, serialises them, commits them to
the spool (one transaction), then publishes from the spool in id order: from an in-memory
copy of the newest rows when it can, from SQLite after an outage. A message is deleted when the
broker acknowledges it. On disconnect the in-flight set is forgotten and the cursor goes back
to the oldest row, so the next connection resends everything not acknowledged, in order.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from agent.config import BatchSection
from agent.errors import SpoolError
from agent.metrics import Metrics
from agent.mqtt import OutgoingMessage
from agent.payloads import prediction_dict
from agent.spool import Spool, SpooledMessage

log = logging.getLogger(__name__)

_MEM_ROWS = 20_000  # newest rows kept in memory so live publishing never reads SQLite
_READ_CHUNK = 1_000


class Link(Protocol):
    """The part of ``agent.mqtt.MqttLink`` the publisher uses."""

    @property
    def connected(self) -> bool: ...

    @property
    def generation(self) -> int: ...

    def publish(self, msg: OutgoingMessage, on_ack: Callable[[], None] | None = None) -> bool: ...

    def add_connect_listener(self, fn: Callable[[], None]) -> None: ...


@dataclass(frozen=True, slots=True)
class PredictionRecord:
    """What inference hands over: everything a payload needs except the sequence number."""

    topic: str
    model_name: str
    model_version: str
    stream: str
    ts: float
    outputs: dict[str, Any]
    latency_ms: float
    t_in: float  # perf_counter when the window's last sample entered the agent


_STOP = object()
_WAKE = object()


class Publisher:
    def __init__(
        self,
        link: Link,
        spool: Spool,
        device_id: str,
        qos: int,
        metrics: Metrics,
        batch: BatchSection | None = None,
        window: int = 1000,
    ) -> None:
        self._link = link
        self._spool = spool
        self._device = device_id
        self._qos = qos
        self._metrics = metrics
        self._batch = batch or BatchSection()
        self._window = window
        self._events: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._mem: dict[int, SpooledMessage] = {}
        self._cursor = 0  # highest spool id published on the current connection
        self._gen = -1  # the connection the cursor belongs to
        self._inflight = 0
        self._pending_batch: list[dict[str, Any]] = []
        self._batch_topic = ""
        self._batch_deadline = 0.0
        self._thread: threading.Thread | None = None
        self.delivered = 0
        link.add_connect_listener(lambda: self._events.put(_WAKE))

    # ---------------------------------------------------------------- producer side

    def submit(self, rec: PredictionRecord) -> None:
        """Hand a prediction over (any thread, never blocks)."""
        self._events.put(rec)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Spool everything submitted so far, give acks until ``timeout``, then return."""
        self._events.put(_STOP)
        if self._thread is not None:
            self._thread.join(timeout)

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ---------------------------------------------------------------- the thread

    def _run(self) -> None:
        stopping_at: float | None = None
        stop_budget = 1.5
        while True:
            timeout = self._next_timeout(stopping_at)
            try:
                first = self._events.get(timeout=timeout)
            except queue.Empty:
                first = None
            events = [] if first is None else [first]
            while len(events) < 5000:
                try:
                    events.append(self._events.get_nowait())
                except queue.Empty:
                    break
            records: list[PredictionRecord] = []
            acked: list[int] = []
            for ev in events:
                if isinstance(ev, PredictionRecord):
                    records.append(ev)
                elif isinstance(ev, int):
                    acked.append(ev)
                elif ev is _STOP:
                    stopping_at = time.monotonic()
            try:
                if records:
                    self._spool_records(records, flush=stopping_at is not None)
                elif self._pending_batch and (
                    stopping_at is not None or time.monotonic() >= self._batch_deadline
                ):
                    self._flush_batch()
                if acked:
                    self._acked(acked)
                if self._link.connected:
                    self._pump()
            except SpoolError:
                log.exception("store-and-forward failed; predictions may be lost")
                self._metrics.inc("predictions_dropped", len(records), reason="spool_error")
            self._metrics.set("queue_depth", self._spool.depth)
            if stopping_at is not None and (
                self._inflight == 0 or time.monotonic() - stopping_at > stop_budget
            ):
                return

    def _next_timeout(self, stopping_at: float | None) -> float:
        if stopping_at is not None:
            return 0.05
        if self._pending_batch:
            return max(0.0, self._batch_deadline - time.monotonic())
        return 0.5

    def _spool_records(self, records: list[PredictionRecord], flush: bool) -> None:
        seq = self._spool.next_seq
        rows: list[tuple[str, bytes, int, bool]] = []
        now = time.perf_counter()
        for rec in records:
            obj = prediction_dict(
                seq,
                self._device,
                rec.model_name,
                rec.model_version,
                rec.stream,
                rec.ts,
                rec.outputs,
                rec.latency_ms,
            )
            seq += 1
            self._metrics.observe("pipeline", now - rec.t_in)
            if self._batch.max_predictions > 1:
                if self._pending_batch and rec.topic != self._batch_topic:
                    rows.append(self._batch_row())
                if not self._pending_batch:
                    self._batch_topic = rec.topic
                    self._batch_deadline = time.monotonic() + self._batch.max_delay_ms / 1000
                self._pending_batch.append(obj)
                if len(self._pending_batch) >= self._batch.max_predictions:
                    rows.append(self._batch_row())
            else:
                rows.append((rec.topic, _dumps(obj), self._qos, False))
        if flush and self._pending_batch:
            rows.append(self._batch_row())
        self._metrics.inc("predictions_out", len(records))
        self._append(rows, seq)

    def _batch_row(self) -> tuple[str, bytes, int, bool]:
        payload = _dumps({"v": 1, "device": self._device, "batch": self._pending_batch})
        self._pending_batch = []
        return (self._batch_topic, payload, self._qos, False)

    def _flush_batch(self) -> None:
        self._append([self._batch_row()], self._spool.next_seq)

    def _append(self, rows: list[tuple[str, bytes, int, bool]], next_seq: int) -> None:
        if not rows:
            # sequence numbers of a still-open batch are committed with the batch
            return
        msgs, dropped = self._spool.append(rows, next_seq)
        if dropped:
            self._metrics.inc("queue_dropped", dropped)
            log.warning("spool full: dropped the %d oldest message(s)", dropped)
        for m in msgs:
            self._mem[m.id] = m
        while len(self._mem) > _MEM_ROWS:
            del self._mem[next(iter(self._mem))]

    def _acked(self, ids: list[int]) -> None:
        self._spool.delete(ids)
        for i in ids:
            self._mem.pop(i, None)
        self._inflight = max(0, self._inflight - len(ids))
        self.delivered += len(ids)
        self._metrics.inc("messages_acked", len(ids))

    def _pump(self) -> None:
        """Publish spooled messages after the cursor while the in-flight window has room."""
        gen = self._link.generation
        if gen != self._gen:  # a new connection: resend everything not acknowledged
            self._gen = gen
            self._cursor = 0
            self._inflight = 0
        while self._inflight < self._window:
            nxt = self._mem.get(self._cursor + 1)
            if nxt is not None:
                batch = [nxt]
            else:
                batch = self._spool.read_after(self._cursor, min(_READ_CHUNK, self._window))
                if not batch:
                    return
            for m in batch:
                if self._inflight >= self._window:
                    return
                ok = self._link.publish(
                    OutgoingMessage(m.topic, m.payload, m.qos, m.retain),
                    self._ack_callback(m.id),
                )
                if not ok:
                    return
                self._cursor = m.id
                self._inflight += 1

    def _ack_callback(self, msg_id: int) -> Callable[[], None]:
        put = self._events.put
        return lambda: put(msg_id)


def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()
