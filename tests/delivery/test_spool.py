"""The store-and-forward spool: ordering, cap and drop policy, persistence across reopen."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.delivery.publisher import DropLog
from agent.delivery.spool import SEQ_BLOCK, HighWater, Spool


def rows(n: int, start: int = 0) -> list[tuple[str, bytes, int, bool]]:
    return [("t", f"m{start + i}".encode(), 1, False) for i in range(n)]


def test_append_read_delete_in_order(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "q.db")
    msgs, dropped = sp.append(rows(5), next_seq=5)
    assert dropped == 0
    assert [m.payload for m in sp.read_after(0, 10)] == [f"m{i}".encode() for i in range(5)]
    sp.delete([msgs[0].id, msgs[2].id])
    assert [m.payload for m in sp.read_after(0, 10)] == [b"m1", b"m3", b"m4"]
    assert sp.depth == 3
    assert [m.payload for m in sp.read_after(msgs[1].id, 10)] == [b"m3", b"m4"]
    sp.close()  # an unclosed connection is a ResourceWarning on Python 3.13


def test_survives_reopen_with_sequence_and_ids(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "q.db")
    msgs, _ = sp.append(rows(3), next_seq=3)
    sp.delete([m.id for m in msgs])
    sp.append(rows(2, 3), next_seq=5)
    sp.close()
    sp = Spool(tmp_path / "q.db")
    assert sp.next_seq == 5
    assert sp.depth == 2
    left = sp.read_after(0, 10)
    assert [m.payload for m in left] == [b"m3", b"m4"]
    new, _ = sp.append(rows(1, 5), next_seq=6)
    assert new[0].id > left[-1].id  # ids are never reused, even after deletes and reopen
    sp.close()


def test_cap_drops_oldest_and_counts(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "q.db", max_messages=4)
    sp.append(rows(3), next_seq=3)
    _, dropped = sp.append(rows(3, 3), next_seq=6)
    assert dropped == 2
    assert sp.depth == 4
    assert sp.dropped_total == 2
    assert [m.payload for m in sp.read_after(0, 10)] == [b"m2", b"m3", b"m4", b"m5"]
    sp.close()
    reopened = Spool(tmp_path / "q.db")
    assert reopened.dropped_total == 2
    reopened.close()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 20), st.integers(0, 20)), min_size=1, max_size=15))
def test_model_of_a_fifo(ops: list[tuple[int, int]]) -> None:
    """Appends and deletes of the oldest k behave like a FIFO list, whatever the interleaving."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        sp = Spool(Path(d) / "q.db", max_messages=50)
        model: list[bytes] = []
        counter = 0
        for add, remove in ops:
            sp.append(rows(add, counter), next_seq=counter + add)
            model += [f"m{counter + i}".encode() for i in range(add)]
            counter += add
            model = model[-50:]
            head = sp.read_after(0, remove)
            sp.delete([m.id for m in head])
            model = model[len(head) :]
            assert sp.depth == len(model)
        assert [m.payload for m in sp.read_after(0, 1000)] == model
        sp.close()


# --------------------------------------------------------------------------- damage (issue 13)


def test_a_garbage_spool_is_quarantined_and_a_new_one_started(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    sp = Spool(path)
    sp.append(rows(3), next_seq=3)
    sp.close()
    garbage = b"this is not an SQLite file at all" * 100
    path.write_bytes(garbage)
    sp = Spool(path)
    assert sp.damage is not None and sp.damage.kind == "quarantined"
    assert sp.damage.moved_to is not None and sp.damage.moved_to.read_bytes() == garbage
    assert sp.next_seq >= 3, "seq went backwards"
    assert sp.depth == 0
    msgs, _ = sp.append(rows(1), next_seq=sp.next_seq + 1)
    assert sp.read_after(0, 10) == msgs


def test_a_truncated_spool_is_reported_and_seq_never_goes_backwards(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    sp = Spool(path)
    boot1 = sp.boot
    sp.append(rows(67), next_seq=67)
    sp.close()
    for suffix in ("", "-wal", "-shm"):
        p = tmp_path / f"q.db{suffix}"
        if p.exists():
            p.write_bytes(b"")  # truncated to 0 bytes
    sp = Spool(path)
    assert sp.damage is not None and sp.damage.kind == "lost", sp.damage
    assert sp.next_seq >= 67
    assert sp.boot == boot1 + 1
    sp.close()
    sp = Spool(path)  # a clean reopen: no damage, no gap, the boot counter counts
    assert sp.damage is None and sp.boot == boot1 + 2


def test_the_high_water_mark_is_reserved_before_a_commit_uses_it(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    sp = Spool(path)
    n = SEQ_BLOCK + 10
    sp.append(rows(n), next_seq=n)
    hw = HighWater(path.with_name("q.db.seq"))
    assert hw.reserved >= n
    sp.close()
    path.unlink()  # the database deleted outright
    sp = Spool(path)
    assert sp.next_seq >= n and sp.damage is not None


def test_drops_in_a_partition_are_one_summary_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = DropLog(every_s=60.0)
    with caplog.at_level(logging.WARNING, logger="agent.delivery.publisher"):
        logged = [log.add(1, total=i + 1, now=1000.0 + i * 0.1) for i in range(500)]
        assert logged[0] and sum(logged) == 1  # 50 s of drops at 10/s: one line so far
        assert log.add(1, total=501, now=1061.0)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "dropped the 1 oldest" in lines[0]
    assert "dropped the 500 oldest" in lines[1] and "501 in total" in lines[1]


# ----------------------------------------------------------------------- write-behind (issue 15)


class Statements:
    """Every SQL statement the spool's connection runs (sqlite3's trace callback)."""

    def __init__(self, sp: Spool) -> None:
        self.sql: list[str] = []
        sp._db.set_trace_callback(self.sql.append)


def test_deferred_rows_acknowledged_in_time_never_touch_the_file(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "q.db")
    trace = Statements(sp)
    msgs, dropped = sp.append(rows(3), next_seq=3, defer=True, now=100.0)
    assert dropped == 0 and sp.depth == 3 and sp.pending == 3 and sp.next_seq == 3
    assert sp.last_id == msgs[-1].id
    assert sp.read_after(msgs[0].id, 10) == msgs[1:]  # the reader sees the memory tier
    sp.delete([m.id for m in msgs])
    assert sp.settle(cutoff=1e9) == 0
    sp.flush()
    assert sp.depth == 0 and sp.pending == 0 and sp.written_behind == 0
    assert trace.sql == [], trace.sql
    sp.close()


def test_unacknowledged_rows_are_written_at_their_deadline_in_id_order(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    sp = Spool(path)
    a, _ = sp.append(rows(2), next_seq=2, defer=True, now=100.0)
    b, _ = sp.append(rows(2, 2), next_seq=4, defer=True, now=100.1)
    sp.delete([a[0].id])
    assert sp.pending_since == 100.0
    assert sp.settle(cutoff=99.9) == 0 and sp.pending == 3  # not due yet
    assert sp.settle(cutoff=100.0) == 3  # the oldest unacknowledged is due: all of it goes
    assert sp.pending == 0 and sp.written_behind == 3 and sp.depth == 3
    c, _ = sp.append(rows(1, 4), next_seq=5)  # strict
    assert [m.payload for m in sp.read_after(0, 10)] == [b"m1", b"m2", b"m3", b"m4"]
    sp.close()
    sp = Spool(path)
    assert [m.id for m in sp.read_after(0, 10)] == [a[1].id, b[0].id, b[1].id, c[0].id]
    assert sp.next_seq == 5
    sp.close()


def test_a_strict_append_takes_the_deferred_rows_along_first(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "q.db")
    sp.append(rows(2), next_seq=2, defer=True)
    trace = Statements(sp)
    sp.append(rows(1, 2), next_seq=3)
    assert sp.pending == 0 and sp.written_behind == 2
    assert sum(s.startswith("INSERT") for s in trace.sql) == 2  # a chunk of 2, a chunk of 1
    assert [m.payload for m in sp.read_after(0, 10)] == [b"m0", b"m1", b"m2"]
    sp.close()


def test_numbering_after_an_unclean_end_continues_above_the_reserved_mark(
    tmp_path: Path,
) -> None:
    path = tmp_path / "q.db"
    sp = Spool(path)
    msgs, _ = sp.append(rows(5), next_seq=5, defer=True)
    sp.delete([m.id for m in msgs])  # acknowledged: seqs 0-4 went out, none committed
    restarted = Spool(path)  # as after kill -9: ``sp`` was never closed
    try:
        assert restarted.next_seq >= 5 and restarted.next_seq == SEQ_BLOCK, restarted.next_seq
        assert restarted.boot == sp.boot + 1
        assert restarted.damage is None
    finally:
        restarted.close()
        sp._db.close()


def test_numbering_after_a_clean_close_continues_with_no_gap(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    sp = Spool(path)
    msgs, _ = sp.append(rows(5), next_seq=5, defer=True)
    sp.delete([m.id for m in msgs])
    boot = sp.boot
    sp.close()
    hw = HighWater(path.with_name("q.db.seq"))
    assert hw.clean and hw.next_seq == 5
    sp = Spool(path)
    assert sp.next_seq == 5 and sp.boot == boot + 1 and sp.depth == 0
    sp.close()


def test_strict_mode_after_an_unclean_end_continues_with_no_gap(tmp_path: Path) -> None:
    """Nothing was written behind: the committed next_seq is exact, no jump."""
    path = tmp_path / "q.db"
    sp = Spool(path)
    sp.append(rows(5), next_seq=5)
    restarted = Spool(path)
    try:
        assert restarted.next_seq == 5
    finally:
        restarted.close()
        sp._db.close()


def test_a_high_water_file_from_before_write_behind_is_clean(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    sp = Spool(path)
    sp.append(rows(7), next_seq=7)
    sp.close()
    path.with_name("q.db.seq").write_text('{"reserved": 4103, "boot": 1}')
    sp = Spool(path)
    assert sp.next_seq == 7 and sp.boot == 2
    sp.close()


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 20), st.integers(0, 20), st.booleans(), st.booleans()),
        min_size=1,
        max_size=15,
    )
)
def test_model_of_a_fifo_with_write_behind(ops: list[tuple[int, int, bool, bool]]) -> None:
    """The FIFO model with appends to either tier and deadlines passing at random: the
    order, the depth and what is left after a reopen are the same."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        sp = Spool(Path(d) / "q.db", max_messages=50)
        model: list[bytes] = []
        counter = 0
        for add, remove, defer, due in ops:
            sp.append(rows(add, counter), next_seq=counter + add, defer=defer, now=float(counter))
            model += [f"m{counter + i}".encode() for i in range(add)]
            counter += add
            model = model[-50:]
            if due:
                sp.settle(cutoff=float(counter))
            head = sp.read_after(0, remove)
            sp.delete([m.id for m in head])
            model = model[len(head) :]
            assert sp.depth == len(model)
        assert [m.payload for m in sp.read_after(0, 1000)] == model
        sp.close()
        sp = Spool(Path(d) / "q.db", max_messages=50)
        assert [m.payload for m in sp.read_after(0, 1000)] == model
        assert sp.next_seq == counter
        sp.close()


def test_the_write_behind_tier_is_capped(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "q.db", max_pending=4)
    sp.append(rows(3), next_seq=3, defer=True)
    assert sp.pending == 3
    sp.append(rows(2, 3), next_seq=5, defer=True)  # 5 > 4: strict, the tier goes along first
    assert sp.pending == 0 and sp.written_behind == 3
    assert [m.payload for m in sp.read_after(0, 10)] == [f"m{i}".encode() for i in range(5)]
    sp.close()
