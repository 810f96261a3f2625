"""Predictions leave here: sequence numbers, the spool, MQTT, acknowledgements.

One thread owns the ``Spool`` and all delivery state. Everything reaches it through one
``SimpleQueue`` of events — new predictions (from inference), connection changes, and a
wake-up for the acks the MQTT network thread queued (a deque: one wake-up per burst of acks,
not per ack) — so no lock guards the delivery state.

For each batch of new predictions it assigns sequence numbers, serialises them, commits them to
the spool (one transaction), then publishes from the spool in id order: from an in-memory
copy of the newest rows when it can, from SQLite after an outage. A message is deleted when the
broker acknowledges it. On disconnect the in-flight set is forgotten and the cursor goes back
to the oldest row, so the next connection resends everything not acknowledged, in order.

Back-pressure: while connected, at most ``max_ahead`` messages wait in the spool unpublished
(not counting the backlog a connection starts with, which is drained behind them at full
speed); past that ``submit`` blocks until the publisher has caught up to half of it. Inference
then runs at the speed predictions leave instead of filling the disk with work the network
cannot take (file and generator sources slow down, the MQTT source's ingest queue drops and
counts). While disconnected nothing blocks: everything is spooled (store-and-forward).

Cost per prediction (it is what bounds a tiny model's throughput): the payload is formatted
from a cached per-(model, version, stream) head instead of ``json.dumps`` of a dict (the
bytes are identical), messages go out in bursts (``publish_many``: corked socket, one lock),
and the spool commits one transaction per burst of predictions.
"""

from __future__ import annotations

import collections
import itertools
import json
import json.encoder
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

from agent.config import BatchSection
from agent.delivery.mqtt import Message
from agent.delivery.spool import Spool, SpooledMessage
from agent.errors import SpoolError
from agent.metrics import Metrics
from agent.wire.predictions import PREDICTION_SCHEMA

log = logging.getLogger(__name__)

_MEM_ROWS = 20_000  # newest rows kept in memory so live publishing never reads SQLite
_READ_CHUNK = 1_000
_MAX_EVENTS = 5_000  # events handled per pass of the publisher loop

AckCallback = Callable[[], None]


class Link(Protocol):
    """The part of ``agent.delivery.mqtt.MqttLink`` the publisher uses.

    ``publish_many`` sends a burst in order and returns how many went out (a prefix; 0 when
    there is no connection). ``on_ack`` callbacks run on the link's network thread (or, after
    ``prompt_acks(False)``, on a thread calling ``publish_many``), once per acknowledged
    message of the connection (``generation``) it was sent on.
    """

    @property
    def connected(self) -> bool: ...

    @property
    def generation(self) -> int: ...

    def publish_many(self, items: Sequence[tuple[Message, AckCallback | None]]) -> int: ...

    def add_connect_listener(self, fn: Callable[[], None]) -> None: ...

    def prompt_acks(self, on: bool) -> None:
        """Whether acks are waited on now (on at start). Off: they may arrive late, with a
        later ``publish_many`` (the link then does not wake its network thread for each)."""


class SyncState(Protocol):
    """``agent.clock.ClockStatus``: whether the system clock is synchronised (None: unknown)."""

    @property
    def synced(self) -> bool | None: ...


class PredictionRecord(NamedTuple):
    """What inference hands over: everything a payload needs except the sequence number.
    (A NamedTuple: built once per prediction, it costs half a frozen dataclass.)"""

    topic: str
    model_name: str
    model_version: str
    stream: str
    ts: float
    outputs: dict[str, Any]
    latency_ms: float
    t_in: float  # perf_counter when the window's last sample entered the agent
    sample: int = 0  # the window's first sample in its stream


_STOP = object()
_WAKE = object()


RECENT_KEPT = 5
"""Prediction payloads kept for ``recent`` (the local device page)."""


class Publisher:
    """The delivery thread: numbers predictions, spools them and publishes them over MQTT."""

    def __init__(
        self,
        link: Link,
        spool: Spool,
        device_id: str,
        qos: int,
        metrics: Metrics,
        batch: BatchSection | None = None,
        window: int = 1000,
        max_ahead: int | None = None,
        clock: SyncState | None = None,
    ) -> None:
        self._link = link
        self._spool = spool
        self._device = device_id
        self._qos = qos
        self._metrics = metrics
        self._batch = batch or BatchSection()
        self._window = window
        self._events: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._acks: collections.deque[int] = collections.deque()  # from the network thread
        self._ack_woken = False  # a wake-up for queued acks is on its way
        self._want_acks = True  # acks must wake the thread (else they wait for the next wake)
        self._mem: dict[int, SpooledMessage] = {}
        self._cursor = 0  # highest spool id published on the current connection
        self._gen = -1  # the connection the cursor belongs to
        self._floor = 0  # newest spool id when the current connection came up
        self._inflight = 0
        self._seq = spool.next_seq  # next sequence number (a still-open batch holds some)
        self._encode = PayloadEncoder(device_id, spool.boot)
        self._clock = clock
        self._drops = DropLog()
        self._pending_batch: list[bytes] = []
        self._batch_topic = ""
        self._batch_deadline = 0.0
        self._thread: threading.Thread | None = None
        self._high = max_ahead if max_ahead is not None else max(2 * window, 2000)
        self._throttled = False
        self._room = threading.Event()
        self._room.set()
        self._publish_many = link.publish_many
        self.delivered = 0
        self._recent: collections.deque[bytes] = collections.deque(maxlen=RECENT_KEPT)
        # Inline hand-over: a producer finding the publisher idle does its work itself,
        # holding _state (which the thread holds for each of its rounds). _queued counts the
        # producers' events not yet handled: inline only when it is 0, so order is kept.
        self._state = threading.Lock()
        self._queued_lock = threading.Lock()
        self._queued = 0
        self._stopping_at: float | None = None
        self._inline = self._batch.max_predictions <= 1  # a batch needs the thread's timer
        link.add_connect_listener(lambda: self._events.put(_WAKE))

    # ---------------------------------------------------------------- producer side

    def recent(self) -> list[bytes]:
        """The last few prediction payloads spooled (a single or a batch each; the device
        page shows them)."""
        return list(self._recent)

    def submit(self, rec: PredictionRecord) -> None:
        """Hand a prediction over (any thread). Blocks only while the publisher is
        ``max_ahead`` messages behind on a live connection (see the module docstring)."""
        self.submit_many([rec])

    def submit_many(self, recs: list[PredictionRecord], *, inline: bool = False) -> None:
        """``submit`` for several predictions, in order, as one hand-over (one wake-up of the
        publisher thread instead of one per prediction). The list becomes the publisher's.

        ``inline``: the caller has time to spare (a source at a low rate), so when the
        publisher is idle the caller spools and publishes them itself, without waking it."""
        if self._throttled:
            self._wait_for_room()
        if inline and self._inline and self._run_inline(recs):
            return
        with self._queued_lock:
            self._queued += 1
        self._events.put(recs)

    def _run_inline(self, recs: list[PredictionRecord]) -> bool:
        """Spool and publish ``recs`` in the calling thread when the publisher is idle (at
        low rates: one thread hand-over and wake-up per prediction less). False: queue them."""
        with self._queued_lock:
            if self._queued or self._stopping_at is not None or not self._state.acquire(False):
                return False
        try:
            if self._thread is None or not self._thread.is_alive():
                return False  # not started, or gone: the thread's rules apply
            self._round([recs])
        finally:
            self._state.release()
        return True

    def _wait_for_room(self) -> None:
        while self._throttled and self.alive():
            self._room.wait(0.25)

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

    @property
    def queue_depth(self) -> int:
        """Messages the broker has not acknowledged yet (any thread). The spool's depth less
        the acks that arrived but wait for the publisher's next round: at a trickle they are
        taken with the next prediction, and the spool alone would report the last message
        as queued until then."""
        return max(0, self._spool.depth - len(self._acks))

    def drained(self) -> bool:
        """Everything submitted so far is spooled, published and acknowledged (nothing
        queued for the thread, no open batch, an empty spool). For batch evaluation: once the
        producers have finished, this stays true."""
        with self._queued_lock:
            queued = self._queued
        return queued == 0 and not self._pending_batch and self._spool.depth == 0

    # ---------------------------------------------------------------- the thread

    def _run(self) -> None:
        stop_budget = 1.5
        get, get_nowait = self._events.get, self._events.get_nowait
        try:
            while True:
                timeout = self._next_timeout(self._stopping_at)
                try:
                    events = [get(timeout=timeout)]
                except queue.Empty:
                    events = []
                    with self._state:
                        self._idle()
                try:
                    while len(events) < _MAX_EVENTS:
                        events.append(get_nowait())
                except queue.Empty:
                    pass
                with self._state:
                    self._round(events)
                handed = sum(1 for ev in events if type(ev) is list)
                if handed:
                    with self._queued_lock:
                        self._queued -= handed
                stopping_at = self._stopping_at
                if stopping_at is not None and (
                    self._inflight == 0 or time.monotonic() - stopping_at > stop_budget
                ):
                    with self._state:
                        self._idle()
                    return
        finally:
            self._throttled = False
            self._room.set()

    def _round(self, events: list[object]) -> None:
        """One round of work (with ``_state`` held): spool and publish the records among
        ``events``, take the acks, pump the spool, update the gauges."""
        records: list[PredictionRecord] = []
        acked: list[int] = []
        self._ack_woken = False  # before draining: a later ack wakes us again
        acks = self._acks
        while acks:
            acked.append(acks.popleft())
        for ev in events:
            if type(ev) is list:
                records += ev
            elif ev is _STOP and self._stopping_at is None:
                self._stopping_at = time.monotonic()
        stopping = self._stopping_at is not None
        try:
            if records:
                self._spool_records(records, flush=stopping)
            elif self._pending_batch and (stopping or time.monotonic() >= self._batch_deadline):
                self._flush_batch()
            if acked:
                self._acked(acked)
            if self._link.connected:
                self._pump()
        except SpoolError:
            log.exception("store-and-forward failed; predictions may be lost")
            self._metrics.inc("predictions_dropped", len(records), reason="spool_error")
        self._metrics.set("queue_depth", self._spool.depth)
        self._update_throttle(stopping)
        # Acks wake the thread only when they unblock something: a backlog waiting for
        # window room, a half-full window, a shutdown waiting for them. Otherwise (a steady
        # trickle: one message in flight at a time) they are taken with the next prediction
        # or at the idle timeout: one thread wake-up per message less.
        want = stopping or self._inflight * 2 >= self._window or self._cursor < self._spool.last_id
        if want != self._want_acks:
            self._link.prompt_acks(want)  # off: the link need not wake for each ack either
        self._want_acks = want

    def _idle(self) -> None:
        """Nothing to do for a while: remove acknowledged rows from the spool file now."""
        self._drops.flush()
        try:
            self._spool.flush()
        except SpoolError:
            log.exception("store-and-forward: cannot remove acknowledged messages")

    def _next_timeout(self, stopping_at: float | None) -> float:
        if stopping_at is not None:
            return 0.05
        if self._pending_batch:
            return max(0.0, self._batch_deadline - time.monotonic())
        return 0.5

    def _update_throttle(self, stopping: bool) -> None:
        """Block producers while more than ``max_ahead`` messages wait unpublished."""
        ahead = 0
        if not stopping and self._link.connected and self._cursor >= self._floor:
            ahead = self._spool.last_id - self._cursor
        if self._throttled:
            if ahead <= self._high // 2:
                self._throttled = False
                self._room.set()
        elif ahead > self._high:
            self._room.clear()
            self._throttled = True

    def _spool_records(self, records: list[PredictionRecord], flush: bool) -> None:
        if self._clock is not None:
            self._encode.unsynced = self._clock.synced is False
        seq = self._seq
        rows: list[tuple[str, bytes, int, bool]] = []
        now = time.perf_counter()
        encode, qos = self._encode, self._qos
        batching = self._batch.max_predictions > 1
        self._metrics.observe_many("pipeline", [now - rec.t_in for rec in records])
        for rec in records:
            payload = encode(seq, rec)
            seq += 1
            if batching:
                if self._pending_batch and rec.topic != self._batch_topic:
                    rows.append(self._batch_row())
                if not self._pending_batch:
                    self._batch_topic = rec.topic
                    self._batch_deadline = time.monotonic() + self._batch.max_delay_ms / 1000
                self._pending_batch.append(payload)
                if len(self._pending_batch) >= self._batch.max_predictions:
                    rows.append(self._batch_row())
            else:
                rows.append((rec.topic, payload, qos, False))
        self._seq = seq
        if flush and self._pending_batch:
            rows.append(self._batch_row())
        self._metrics.inc("predictions_out", len(records))
        self._recent.extend(r[1] for r in rows[-RECENT_KEPT:])
        self._append(rows)

    def _batch_row(self) -> tuple[str, bytes, int, bool]:
        payload = self._encode.batch(self._pending_batch)
        self._pending_batch = []
        return (self._batch_topic, payload, self._qos, False)

    def _flush_batch(self) -> None:
        self._append([self._batch_row()])

    def _append(self, rows: list[tuple[str, bytes, int, bool]]) -> None:
        if not rows:
            # sequence numbers of a still-open batch are committed with the batch
            return
        msgs, dropped = self._spool.append(rows, self._seq)
        if dropped:
            self._metrics.inc("queue_dropped", dropped)
            self._drops.add(dropped, self._spool.dropped_total)
        mem = self._mem
        for m in msgs:
            mem[m.id] = m
        excess = len(mem) - _MEM_ROWS
        if excess > 0:
            for key in list(itertools.islice(mem, excess)):
                del mem[key]

    def _acked(self, ids: list[int]) -> None:
        self._spool.delete(ids)
        mem = self._mem
        for i in ids:
            mem.pop(i, None)
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
            self._floor = self._spool.last_id
        mem, ack = self._mem, self._ack_callback
        while self._inflight < self._window and self._cursor < self._spool.last_id:
            room = self._window - self._inflight
            batch: list[SpooledMessage] = []
            nxt = self._cursor + 1
            m = mem.get(nxt)
            while m is not None and len(batch) < room:
                batch.append(m)
                nxt += 1
                m = mem.get(nxt)
            if not batch:
                batch = self._spool.read_after(self._cursor, min(_READ_CHUNK, room))
                if not batch:
                    return
            sent = self._publish_many([(m, ack(m.id)) for m in batch])
            if sent:
                self._cursor = batch[sent - 1].id
                self._inflight += sent
            if sent < len(batch):
                return

    def _ack_callback(self, msg_id: int) -> AckCallback:
        """Runs on the network thread (or inside a later ``publish_many``: quiet acks, then
        possibly with ``_state`` held; it takes no lock): queue the id, and wake the
        publisher once for all the acks that arrive before it gets round to them (not once
        per ack), and only when it wants them now (``_want_acks``)."""
        acks, put = self._acks, self._events.put

        def acked() -> None:
            acks.append(msg_id)
            if self._want_acks and not self._ack_woken:
                self._ack_woken = True
                put(_WAKE)

        return acked


DROP_LOG_EVERY_S = 60.0


class DropLog:
    """One WARNING per ``DROP_LOG_EVERY_S`` for messages the spool cap dropped, with counts.

    During a long partition with a full spool every new prediction pushes out the oldest: one
    log line each would flood the journal. The first drop is logged at once; later ones are
    summed and logged as one summary line per interval (and a last one when the publisher
    flushes, ``flush``).
    """

    def __init__(self, every_s: float = DROP_LOG_EVERY_S) -> None:
        self._every = every_s
        self._pending = 0
        self._next = 0.0
        self._total = 0

    def add(self, n: int, total: int, now: float | None = None) -> bool:
        """Count ``n`` dropped messages; True if a line was logged."""
        self._pending += n
        self._total = total
        t = time.monotonic() if now is None else now
        if t < self._next:
            return False
        self.flush(t)
        return True

    def flush(self, now: float | None = None) -> None:
        if not self._pending:
            return
        log.warning(
            "spool full: dropped the %d oldest message(s) in the last %gs (%d in total); "
            "the newest are kept",
            self._pending,
            self._every,
            self._total,
        )
        self._pending = 0
        self._next = (time.monotonic() if now is None else now) + self._every


_UNSYNCED = ',"clock_synced":false}'


class PayloadEncoder:
    """Prediction JSON, byte for byte what ``json.dumps(prediction_dict(...),
    separators=(",", ":"), allow_nan=False)`` gives, without building the dict: the part
    that only depends on (model, version, stream) is formatted once and cached."""

    def __init__(self, device: str, boot: int = 0) -> None:
        self._device = json.dumps(device)
        self._boot = int(boot)
        self.unsynced = False
        """Predictions made now carry ``"clock_synced":false`` (their ``ts`` may be wrong)."""
        self._heads: dict[tuple[str, str, str], str] = {}
        self._dumps = _compact_dumps()

    def _head(self, rec: PredictionRecord) -> str:
        key = (rec.model_name, rec.model_version, rec.stream)
        head = self._heads.get(key)
        if head is None:
            if len(self._heads) > 256:
                self._heads.clear()
            head = self._heads[key] = (
                f'"device":{self._device},"model":{{"name":{json.dumps(rec.model_name)},'
                f'"version":{json.dumps(rec.model_version)}}},"stream":{json.dumps(rec.stream)},'
                '"ts":'
            )
        return head

    def _number(self, x: float) -> str:
        if type(x) is float and math.isfinite(x):
            return float.__repr__(x)
        return self._dumps(x)  # ints, float subclasses; NaN/Inf raise ValueError like dumps

    def __call__(self, seq: int, rec: PredictionRecord) -> bytes:
        tail = _UNSYNCED if self.unsynced else "}"
        return (
            f'{{"v":{PREDICTION_SCHEMA},"seq":{seq:d},"boot":{self._boot:d},{self._head(rec)}'
            f'{self._number(rec.ts)},"sample":{rec.sample:d},'
            f'"outputs":{self._dumps(rec.outputs)},"latency_ms":{self._number(rec.latency_ms)}'
            f"{tail}"
        ).encode()

    def batch(self, payloads: list[bytes]) -> bytes:
        """``{"v":1,"device":...,"batch":[...]}`` around already encoded predictions."""
        head = f'{{"v":{PREDICTION_SCHEMA},"device":{self._device},"batch":['.encode()
        return head + b",".join(payloads) + b"]}"


def _compact_dumps() -> Callable[[Any], str]:
    """``json.dumps(o, separators=(",", ":"), allow_nan=False)``, minus the per-call set-up:
    the C encoder built once (no circular-reference check: outputs are trees), 2x faster."""
    enc = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return enc.encode
    c = make(
        None, enc.default, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, False
    )
    join = "".join
    return lambda o: join(c(o, 0))
