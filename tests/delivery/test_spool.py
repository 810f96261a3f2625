"""The store-and-forward spool: ordering, cap and drop policy, persistence across reopen."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.delivery.spool import Spool


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
