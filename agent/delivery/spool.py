"""Store-and-forward: the on-disk queue every outgoing prediction passes through.

A message is deleted only when the broker acknowledged it. Two tiers hold it until then:

- the file (SQLite, WAL): a strict ``append`` commits the message *before* it is published.
  A broker outage, a lost network or a ``kill -9`` of the agent loses nothing committed: on
  the next connection everything left is sent again, oldest first.
- the write-behind tier (memory): ``append(..., defer=True)`` gives the messages their ids
  (from the same counter) and keeps them in memory; the publisher publishes them at once and
  does so only on a live connection with no backlog ahead of them. Acknowledged in time,
  they never touch the file (at a steady rate: no statement per prediction). ``settle``
  writes the tier when its oldest unacknowledged message is older than the deadline,
  ``persist_pending`` on a disconnect or a stop; a strict append and ``close`` take it along.
  Every id in the tier is above every id in the file, and it is always written in one
  transaction, in id order. ``depth``, ``last_id``, ``read_after`` and ``delete`` see both
  tiers. A ``kill -9`` or crash can lose the tier's unacknowledged messages (at most one
  deadline's worth, ``queue.write_behind_ms``); a broker outage still loses nothing.

Delivery is at least once; the sequence number in each payload lets subscribers drop
duplicates and spot gaps.

Durability: ``synchronous=NORMAL`` in WAL mode survives a crash of the process (the WAL is in
the OS page cache); a power cut may lose the last commits. ``durable = True`` makes every
commit fsync (slower; for boards that lose power often).

Size cap and drop policy: past ``max_messages`` the **oldest** messages are dropped (the newest
data is the most useful after a long outage) and counted in ``dropped_total``.

The sequence counter lives in the same database and is updated in the same transaction as the
rows that use it, and ``close`` commits the exact next number: after a clean stop numbering
continues with no gap and no repeat. Written-behind messages that were acknowledged never
commit their numbers, so after an *unclean* end (``kill -9``, a crash) the database's counter
may be below numbers already published: the high-water file (below) carries a ``clean`` flag,
cleared (one write) by the first deferred append of a run and set again by ``close`` together
with the exact ``next_seq``; a start that finds it cleared continues at the reserved mark (a
jump of at most ``SEQ_BLOCK`` unused numbers, with the new ``boot``), never below a number that
may have gone out. A run that never wrote behind leaves the flag set: its numbering continues
from the database with no gap even after a crash.

Damage: ``seq`` never goes backwards for a device, even when the database does. A high-water
mark is kept *outside* it, in ``<spool>.seq`` (JSON, written atomically): numbers are reserved
in blocks of ``SEQ_BLOCK`` before a commit may use them, so the file is always at or above
every ``seq`` ever committed (one small write per block, not per prediction). The same file
holds the **boot counter**: +1 at every open of the spool (every start of the agent), carried
in each payload (``boot``) so subscribers tell a restart from a duplicate (a resent message
keeps its boot and seq). A database that cannot be opened as one (``file is not a database``, a
malformed image) is **quarantined**: renamed to ``<spool>.damaged-<epoch s>`` with its WAL
(kept for forensics), logged, reported (``damage``: the agent's metrics and status) and a new
one is started. A database that comes up empty although the high-water mark says numbers were
used (truncated to 0 bytes, deleted) is reported the same way; numbering continues above the
mark.

Cost: rows are inserted and deleted with one multi-row statement per chunk, not one statement
per row (``executemany``): the sqlite3 module releases the GIL around every statement step, and
with a busy inference thread each re-acquisition can wait a whole switch interval. Acknowledged rows
leave ``depth`` at once but are removed from the file in groups, inside an append's transaction
(or by ``flush``, which the publisher calls when idle): one commit per prediction instead of
two, one DELETE per group. A crash in between resends them (at most a few hundred): at least
once, and duplicates keep their seq.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import logging
import math
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from agent.durable import atomic_write
from agent.errors import SpoolError

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('next_seq', 0), ('dropped_total', 0);
"""


_DEFER_MIN = 128  # acknowledged rows an append takes along (fewer wait for the next one)
_DEFER_MAX = 2048  # acknowledged rows waiting for removal before a transaction of their own
_CHUNK = 256  # most rows per multi-row INSERT (5 parameters each: far below SQLite's limit)
_INSERT = {
    n: "INSERT INTO messages (id, topic, payload, qos, retain) VALUES "  # noqa: S608
    + ",".join(["(?,?,?,?,?)"] * n)  # placeholders only: no value is formatted in
    for n in (1 << k for k in range(_CHUNK.bit_length()))
}
"""One statement per power of two: any count is a few of them, all in sqlite3's cache."""


def _chunks(n: int) -> list[tuple[int, int]]:
    """``(start, size)`` pieces of ``n`` rows, each size a power of two <= _CHUNK."""
    out = []
    start = 0
    size = _CHUNK
    while start < n:
        while size > n - start:
            size //= 2
        out.append((start, size))
        start += size
    return out


@dataclass(frozen=True, slots=True)
class SpooledMessage:
    """A message read back from the spool, with its row id (to acknowledge it)."""

    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool


SEQ_BLOCK = 4096
"""Sequence numbers reserved in the high-water file per write."""


@dataclass(frozen=True)
class SpoolDamage:
    """What was found wrong with the spool at open (reported in metrics and status)."""

    kind: str
    """``quarantined`` (moved aside) or ``lost`` (came up empty below the high-water mark)."""
    detail: str
    moved_to: Path | None = None


class HighWater:
    """``<spool>.seq``: the reserved sequence numbers and the boot counter (module doc)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.reserved = 0
        self.boot = 0
        self.clean = True
        """Every ``seq`` handed out is below the database's ``next_seq`` (and ``next_seq``
        below): False while write-behind may have published numbers not committed yet."""
        self.next_seq = 0
        """The exact next number, written by a clean close (0: not known)."""
        try:
            obj = json.loads(path.read_bytes())
            self.reserved, self.boot = int(obj["reserved"]), int(obj["boot"])
            # files written before write-behind have no flag: every seq was committed then
            self.clean = bool(obj.get("clean", True))
            self.next_seq = int(obj.get("next_seq", 0))
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError, KeyError) as exc:
            # the database still has its own counter; only a damaged database as well
            # could take seq backwards now
            log.error("sequence high-water file %s is unreadable (%s): starting again", path, exc)

    def save(self) -> None:
        try:
            data = json.dumps(
                {
                    "reserved": self.reserved,
                    "boot": self.boot,
                    "clean": self.clean,
                    "next_seq": self.next_seq,
                }
            ).encode()
            atomic_write(self.path, data)
        except OSError as exc:
            raise SpoolError(f"cannot write the seq high-water mark {self.path}: {exc}") from exc


def _quarantine(path: Path) -> Path:
    """Move a damaged database (and its WAL/SHM) aside; the new name of the main file."""
    dest = path.with_name(f"{path.name}.damaged-{int(time.time())}")
    n = 0
    while dest.exists():
        n += 1
        dest = path.with_name(f"{path.name}.damaged-{int(time.time())}-{n}")
    for suffix in ("-wal", "-shm", ""):
        src = path.with_name(path.name + suffix)
        if src.exists():
            src.replace(dest.with_name(dest.name + suffix))
    return dest


class Spool:
    """The queue. Used by one thread (the publisher); ``depth`` may be read from any."""

    def __init__(
        self,
        path: Path,
        max_messages: int = 1_000_000,
        durable: bool = False,
        max_pending: int = 1_000,
    ) -> None:
        self.path = path
        self.max_messages = max_messages
        self.max_pending = max_pending
        """Most messages in the write-behind tier: a deferred append past it is strict."""
        self.damage: SpoolDamage | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(f"cannot open spool {path}: {exc}") from exc
        self._hw = HighWater(path.with_name(path.name + ".seq"))
        try:
            fresh, row, last = self._open(durable)
        except sqlite3.OperationalError as exc:  # locked, no permission: not the file's fault
            raise SpoolError(f"cannot open spool {path}: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            db = getattr(self, "_db", None)
            if db is not None:
                with contextlib.suppress(sqlite3.Error):
                    db.close()
            try:
                moved = _quarantine(path)
                fresh, row, last = self._open(durable)
            except (OSError, sqlite3.Error) as exc2:
                raise SpoolError(f"cannot replace damaged spool {path}: {exc2}") from exc2
            self.damage = SpoolDamage("quarantined", f"{path}: {exc}", moved)
            log.error(
                "spool %s is damaged (%s): moved it to %s and started a new one; messages "
                "still in it were not delivered",
                path,
                exc,
                moved,
            )
        self._depth = int(row[0])
        self._acked: list[int] = []  # acknowledged, not yet removed from the file
        # the write-behind tier: newest messages, not in the file (yet); id order
        self._pend: dict[int, SpooledMessage] = {}
        self._groups: collections.deque[tuple[float, int, int]] = collections.deque()
        """(monotonic time, first id, last id) of each deferred append, oldest first."""
        self.pending_since: float | None = None
        """When the oldest deferred append in the tier was made (None: empty); it may be
        acknowledged already (``settle`` moves it on)."""
        self.deferred_at = -math.inf
        """When the last deferred append was made (monotonic)."""
        self.written_behind = 0
        """Deferred messages written to the file so far (unacknowledged at their deadline,
        or on a disconnect, a stop, a strict append)."""
        self._next_id = max(int(row[1]), int(last[0]) if last else 0) + 1
        self.next_seq = self._meta("next_seq")
        self.dropped_total = self._meta("dropped_total")
        hw = self._hw
        if fresh and hw.reserved > self.next_seq:
            if self.damage is None:
                self.damage = SpoolDamage(
                    "lost",
                    f"{path} came up empty, but sequence numbers up to {hw.reserved} "
                    "were reserved: queued messages were lost",
                )
                log.error("spool: %s", self.damage.detail)
            self.next_seq = hw.reserved
            self._set_meta("next_seq", self.next_seq)
        elif not hw.clean and hw.reserved > self.next_seq:
            # the last run wrote behind and did not close: numbers up to the mark may have
            # gone out without being committed; continue above every one of them
            log.warning(
                "spool %s was not closed cleanly: sequence numbers continue at the reserved "
                "mark %d (up to %d unused)",
                path,
                hw.reserved,
                hw.reserved - self.next_seq,
            )
            self.next_seq = hw.reserved
            self._set_meta("next_seq", self.next_seq)
        elif hw.clean and hw.next_seq > self.next_seq:  # the close's commit did not last
            self.next_seq = hw.next_seq
            self._set_meta("next_seq", self.next_seq)
        hw.boot += 1
        hw.clean = True  # every number so far is below the committed next_seq
        hw.next_seq = 0
        hw.reserved = max(hw.reserved, self.next_seq + SEQ_BLOCK)
        hw.save()
        self.boot = self._hw.boot
        if self._depth:
            log.info("spool %s holds %d undelivered message(s)", path, self._depth)

    def _open(self, durable: bool) -> tuple[bool, tuple[int, int], tuple[int] | None]:
        """Connect and read the counts; whether the database was new (no tables yet)."""
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        fresh = not self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'"
        ).fetchone()
        self._db.executescript(_SCHEMA)
        row = self._db.execute("SELECT COUNT(*), COALESCE(MAX(id), 0) FROM messages").fetchone()
        last = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name='messages'").fetchone()
        return fresh, row, last

    def _set_meta(self, key: str, value: int) -> None:
        try:
            self._db.execute("UPDATE meta SET value=? WHERE key=?", (value, key))
        except sqlite3.Error as exc:
            raise SpoolError(f"spool {self.path}: cannot write {key}: {exc}") from exc

    def _meta(self, key: str) -> int:
        return int(self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()[0])

    @property
    def depth(self) -> int:
        """Messages not acknowledged yet, in the file and in the write-behind tier."""
        return self._depth

    @property
    def pending(self) -> int:
        """Messages in the write-behind tier (in memory only; acknowledged ones leave it)."""
        return len(self._pend)

    def append(
        self,
        rows: list[tuple[str, bytes, int, bool]],
        next_seq: int,
        defer: bool = False,
        now: float | None = None,
    ) -> tuple[list[SpooledMessage], int]:
        """Store ``rows`` (ids from this spool) and the new ``next_seq``.

        Strict (``defer`` False): one transaction, which takes the write-behind tier along
        first (ids stay in order in the file). ``defer``: the rows join the write-behind tier
        in memory (made at ``now``, monotonic), unless the cap would drop messages or the tier
        would exceed ``max_pending`` (then the append is strict); they reach
        the file only through ``settle``, ``persist_pending``, a strict append or ``close``.
        Returns the stored messages (with ids) and how many old ones the cap dropped.
        """
        hw = self._hw
        if next_seq > hw.reserved or (defer and hw.clean):
            # reserve before any commit or publish can use the numbers; and from the first
            # deferred append on, numbers may go out uncommitted: an unclean end continues
            # at the reserved mark (module doc)
            if next_seq > hw.reserved:
                hw.reserved = next_seq + SEQ_BLOCK
            if defer:
                hw.clean = False
            hw.save()
        first = self._next_id
        msgs = [SpooledMessage(first + i, t, p, q, r) for i, (t, p, q, r) in enumerate(rows)]
        overflow = max(0, self._depth + len(rows) - self.max_messages)
        pend = self._pend
        if defer and not overflow and len(pend) + len(msgs) <= self.max_pending:
            for m in msgs:
                pend[m.id] = m
            if msgs:
                t = time.monotonic() if now is None else now
                self._groups.append((t, first, first + len(msgs) - 1))
                self.deferred_at = t
                if self.pending_since is None:
                    self.pending_since = t
            dropped = 0
        else:
            dropped = self._write(msgs, next_seq, overflow)
        self._next_id += len(rows)
        self._depth += len(rows) - dropped
        self.next_seq = next_seq
        self.dropped_total += dropped
        return msgs, dropped

    def settle(self, cutoff: float) -> int:
        """Write the write-behind tier to the file if a message in it was appended at or
        before ``cutoff`` (monotonic) and is still unacknowledged; how many were written.

        All of the tier goes in one transaction (the ids in order), not just the old part:
        a broker slow to acknowledge costs one commit per deadline, not one per message."""
        pend, groups = self._pend, self._groups
        if not pend:
            groups.clear()
            self.pending_since = None
            return 0
        while groups:
            t, lo, hi = groups[0]
            for i in range(lo, hi + 1):
                if i in pend:
                    self.pending_since = t
                    return self.persist_pending() if t <= cutoff else 0
            groups.popleft()  # all acknowledged
        self.pending_since = None
        return 0

    def persist_pending(self) -> int:
        """Write the whole write-behind tier to the file now; how many messages."""
        n = len(self._pend)
        if n:
            self._write([], self.next_seq, 0)
        return n

    def _write(self, new: list[SpooledMessage], next_seq: int, overflow: int) -> int:
        """One transaction: the write-behind tier, then ``new``, the cap's drops (how many is
        returned), ``next_seq``; acknowledged rows are removed along when there are enough."""
        pend = list(self._pend.values())
        msgs = pend + new if pend else new
        acked: list[int] = []
        # the cap counts only unacknowledged rows; a write without new rows is rare (a
        # deadline, a disconnect, a close): take every acknowledged row along
        if len(self._acked) >= _DEFER_MIN or overflow or not new:
            acked, self._acked = self._acked, []
        try:
            self._db.execute("BEGIN")
            removed = self._remove(acked)
            for start, size in _chunks(len(msgs)):
                params: list[object] = []
                for m in msgs[start : start + size]:
                    params += (m.id, m.topic, m.payload, m.qos, int(m.retain))
                self._db.execute(_INSERT[size], params)
            dropped = 0
            if overflow:
                cur = self._db.execute(
                    "DELETE FROM messages WHERE id IN "
                    "(SELECT id FROM messages ORDER BY id LIMIT ?)",
                    (overflow,),
                )
                dropped = cur.rowcount
                self._db.execute(
                    "UPDATE meta SET value = value + ? WHERE key='dropped_total'", (dropped,)
                )
            self._db.execute("UPDATE meta SET value=? WHERE key='next_seq'", (next_seq,))
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            self._acked = acked + self._acked
            raise SpoolError(f"spool {self.path}: cannot write {len(msgs)} row(s): {exc}") from exc
        self._depth += len(acked) - removed  # ids that were already gone
        if pend:
            self._pend = {}
            self._groups.clear()
            self.pending_since = None
            self.written_behind += len(pend)
        return dropped

    def read_after(self, after_id: int, limit: int) -> list[SpooledMessage]:
        """Up to ``limit`` messages with id > ``after_id``, oldest first (the file's, then
        the write-behind tier's: every id of the tier is above every id in the file)."""
        pend = self._pend
        if pend and after_id >= next(iter(pend)) - 1:  # nothing after it in the file
            return list(itertools.islice((m for m in pend.values() if m.id > after_id), limit))
        self.flush()
        try:
            rows = self._db.execute(
                "SELECT id, topic, payload, qos, retain FROM messages WHERE id > ? "
                "ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        except sqlite3.Error as exc:
            raise SpoolError(f"spool {self.path}: cannot read: {exc}") from exc
        out = [SpooledMessage(r[0], r[1], bytes(r[2]), r[3], bool(r[4])) for r in rows]
        if len(out) < limit and pend:
            for m in pend.values():
                if m.id > after_id:
                    out.append(m)
                    if len(out) >= limit:
                        break
        return out

    def delete(self, ids: list[int]) -> None:
        """Forget acknowledged messages (ids already dropped are ignored).

        ``depth`` drops at once; the rows go with the next ``append`` or ``flush``. Messages
        of the write-behind tier just leave it: they never reach the file.
        """
        if not ids:
            return
        pend = self._pend
        if pend:
            rest = []
            for i in ids:
                if pend.pop(i, None) is None:
                    rest.append(i)
            self._depth -= len(ids) - len(rest)
            if not pend:
                self._groups.clear()
                self.pending_since = None
            ids = rest
            if not ids:
                return
        self._acked += ids
        self._depth -= len(ids)
        if len(self._acked) >= _DEFER_MAX:
            self.flush()

    def flush(self) -> None:
        """Remove the acknowledged rows from the file now."""
        if not self._acked:
            return
        acked, self._acked = self._acked, []
        try:
            self._db.execute("BEGIN")
            removed = self._remove(acked)
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            self._acked = acked + self._acked
            raise SpoolError(f"spool {self.path}: cannot delete: {exc}") from exc
        self._depth += len(acked) - removed

    def _remove(self, ids: list[int]) -> int:
        """DELETE ``ids``, inside the caller's transaction; returns how many rows went."""
        if not ids:
            return 0
        runs = _runs(ids)
        if len(runs) > 16:  # scattered: acks of a connection normally arrive in order
            cur = self._db.executemany("DELETE FROM messages WHERE id=?", [(i,) for i in ids])
            return max(0, cur.rowcount)
        removed = 0
        for lo, hi in runs:
            cur = self._db.execute("DELETE FROM messages WHERE id BETWEEN ? AND ?", (lo, hi))
            removed += max(0, cur.rowcount)
        return removed

    @property
    def last_id(self) -> int:
        """The id of the newest message ever appended (0 for a new spool)."""
        return self._next_id - 1

    def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("ROLLBACK")

    def close(self) -> None:
        """Write the write-behind tier and the exact ``next_seq`` (one transaction), mark
        the high-water file clean (numbering continues with no gap), close the file."""
        try:
            self._write([], self.next_seq, 0)
            self._hw.clean = True
            self._hw.next_seq = self.next_seq
            self._hw.save()
        except SpoolError as exc:
            log.warning("%s", exc)
        try:
            self._db.close()
        except sqlite3.Error as exc:
            log.warning("closing spool %s: %s", self.path, exc)


def _runs(ids: list[int]) -> list[tuple[int, int]]:
    """``ids`` as runs of consecutive ids ``(first, last)``."""
    ordered = sorted(set(ids))
    runs = []
    start = prev = ordered[0]
    for i in ordered[1:]:
        if i != prev + 1:
            runs.append((start, prev))
            start = i
        prev = i
    runs.append((start, prev))
    return runs
