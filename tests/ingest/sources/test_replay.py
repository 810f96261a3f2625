"""The replay source: each file format, malformed rows, each rate, loop, errors at start."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.config import ReplaySource
from agent.errors import SourceError
from agent.ingest.sources import FileReplay, SourceContext, build_source
from agent.ingest.sources.replay import _Due
from tests.ingest.sources._sink import Sink, make_ctx, running

ROWS = np.array([[0.5, 1.0, -1.0], [1.5, 2.0, -2.0], [2.5, 3.0, -3.0], [3.5, 4.0, -4.0]])


def cfg(path: Path, **kw: Any) -> ReplaySource:
    return ReplaySource.model_validate({"path": path, "rate": "fast", **kw})


def replay_all(c: ReplaySource, ctx: SourceContext | None = None) -> Sink:
    sink = Sink()
    FileReplay(c, ctx or make_ctx()).run(sink, threading.Event())
    return sink


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_csv_with_timestamp_column(tmp_path: Path) -> None:
    lines = ["a,ts,b,c"] + [f"{r[0]},{100 + i},{r[1]},{r[2]}" for i, r in enumerate(ROWS)]
    path = write_csv(tmp_path / "x.csv", "\n".join(lines) + "\n")
    sink = replay_all(cfg(path))
    np.testing.assert_array_equal(sink.values(), ROWS.astype(np.float32))
    assert all(len(b) == 1 for b in sink.blocks)


def test_csv_without_timestamps_and_windows_line_endings(tmp_path: Path) -> None:
    lines = ["x,y,z"] + [",".join(str(v) for v in r) for r in ROWS]
    path = tmp_path / "x.csv"
    path.write_bytes(("\r\n".join(lines) + "\r\n\r\n").encode())
    sink = replay_all(cfg(path, block_size=3))
    np.testing.assert_array_equal(sink.values(), ROWS.astype(np.float32))
    assert [len(b) for b in sink.blocks] == [3, 1]


def test_csv_malformed_rows_are_counted_and_skipped(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(
        b"ts,a,b,c\n"
        b"1.000,0.5,1,-1\n"
        b"1.001,1,2\n"  # wrong_shape
        b"1.002,abc,2,3\n"  # non_numeric
        b"1.003,nan,2,3\n"  # not_finite
        b"1.004,1e39,2,3\n"  # not_finite (float32)
        b"1.005,\xff\xfe,2,3\n"  # invalid_utf8
        b"x,1,2,3\n"  # bad_timestamp (only read in 'recorded' mode)
        b"1.007,3.5,4,-4\n"
    )
    ctx = make_ctx()
    sink = replay_all(cfg(path, rate="recorded"), ctx)
    np.testing.assert_array_equal(sink.values(), [[0.5, 1, -1], [3.5, 4, -4]])
    assert ctx.metrics.counters_by_reason("samples_rejected") == {
        "wrong_shape": 1,
        "non_numeric": 1,
        "not_finite": 2,
        "invalid_utf8": 1,
        "bad_timestamp": 1,
    }


def test_csv_timestamps_are_ignored_unless_recorded(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "iso.csv", "ts,a,b,c\n2024-01-01T00:00:00,1,2,3\n")
    ctx = make_ctx()
    sink = replay_all(cfg(path), ctx)
    np.testing.assert_array_equal(sink.values(), [[1, 2, 3]])
    assert ctx.metrics.counters_by_reason("samples_rejected") == {}


def test_csv_oversized_field_is_skipped(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "big.csv", "a,b,c\n1,2,3\n" + "9" * 200_000 + ",1,1\n4,5,6\n")
    ctx = make_ctx()
    np.testing.assert_array_equal(replay_all(cfg(path), ctx).values(), [[1, 2, 3], [4, 5, 6]])
    assert ctx.metrics.counter("samples_rejected", "oversized") == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a,b\n1,2\n", "2 value column"),
        ("a,b,c,d\n1,2,3,4\n", "4 value column"),
        ("", "empty"),
        ("a,b,c\nx,y,z\n", "no valid sample"),
    ],
)
def test_csv_unusable_is_a_source_error(tmp_path: Path, text: str, message: str) -> None:
    path = write_csv(tmp_path / "x.csv", text)
    with pytest.raises(SourceError, match=message):
        FileReplay(cfg(path), make_ctx())


def test_npy_two_dimensional(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, ROWS)
    sink = replay_all(cfg(path, block_size=2))
    np.testing.assert_array_equal(sink.values(), ROWS.astype(np.float32))
    assert sink.blocks[0].values.flags.writeable is False


def test_npy_one_channel_vector_and_nan_rows(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.array([1.0, np.nan, 3.0], dtype=np.float32))
    ctx = make_ctx()
    sink = replay_all(cfg(path, channels=1), ctx)
    np.testing.assert_array_equal(sink.values(), [[1.0], [3.0]])
    assert ctx.metrics.counter("samples_rejected", "not_finite") == 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_npy_rows_outside_float32_are_rejected_whatever_the_file_dtype(
    tmp_path: Path, dtype: type
) -> None:
    path = tmp_path / "x.npy"
    big = 1e39 if dtype is np.float64 else np.inf  # float32 cannot hold 1e39
    np.save(path, np.array([[1, 2, 3], [big, 0, 0], [4, 5, 6], [0, -np.inf, 0]], dtype=dtype))
    ctx = make_ctx()
    sink = replay_all(cfg(path), ctx)
    np.testing.assert_array_equal(sink.values(), [[1, 2, 3], [4, 5, 6]])
    assert sink.values().dtype == np.float32
    assert ctx.metrics.counter("samples_rejected", "not_finite") == 2


@pytest.mark.parametrize(
    "array",
    [np.zeros((4, 2)), np.zeros((2, 3, 1)), np.array([["a", "b", "c"]]), np.zeros(4)],
)
def test_npy_wrong_array_is_a_source_error(tmp_path: Path, array: np.ndarray) -> None:
    path = tmp_path / "x.npy"
    np.save(path, array)
    with pytest.raises(SourceError, match=re.escape(str(path))):
        FileReplay(cfg(path), make_ctx())


def test_npy_refuses_pickles(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.array([[1, 2, 3]], dtype=object), allow_pickle=True)
    with pytest.raises(SourceError, match=r"plain \.npy"):
        FileReplay(cfg(path), make_ctx())


def test_jsonl_forms_and_malformed_lines(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_bytes(
        b"[0.5, 1, -1]\n"
        b'{"values": [1.5, 2, -2], "ts": 10}\n'
        b"\n"
        b"[1, 2\n"  # bad_json
        b"[1, 2, \xff]\n"  # invalid_utf8
        b"[1, 2]\n"  # wrong_shape
        b'["1", 2, 3]\n'  # non_numeric
        b"[NaN, 2, 3]\n"  # not_finite
        b"[[2.5, 3, -3], [3.5, 4, -4]]"  # several samples, no final newline
    )
    ctx = make_ctx()
    sink = replay_all(cfg(path), ctx)
    np.testing.assert_array_equal(sink.values(), ROWS.astype(np.float32))
    assert ctx.metrics.counters_by_reason("samples_rejected") == {
        "bad_json": 1,
        "invalid_utf8": 1,
        "wrong_shape": 1,
        "non_numeric": 1,
        "not_finite": 1,
    }


def test_jsonl_recorded_needs_a_timestamp_per_line(tmp_path: Path) -> None:
    path = tmp_path / "x.ndjson"
    path.write_text('{"values": [1, 2, 3], "t": 1}\n[4, 5, 6]\n{"values": [7, 8, 9], "t": 1.01}\n')
    ctx = make_ctx()
    sink = replay_all(cfg(path, rate="recorded", timestamp_column="t"), ctx)
    np.testing.assert_array_equal(sink.values(), [[1, 2, 3], [7, 8, 9]])
    assert ctx.metrics.counter("samples_rejected", "bad_timestamp") == 1


@pytest.mark.parametrize("name", ["missing.csv", "missing.npy", "missing.jsonl"])
def test_missing_file_is_a_source_error(tmp_path: Path, name: str) -> None:
    with pytest.raises(SourceError, match="cannot read replay file"):
        FileReplay(cfg(tmp_path / name), make_ctx())


def test_unreadable_and_unknown_files_are_source_errors(tmp_path: Path) -> None:
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(SourceError, match="cannot read"):
        FileReplay(cfg(tmp_path / "dir.csv"), make_ctx())
    write_csv(tmp_path / "x.parquet", "")
    with pytest.raises(SourceError, match="unknown format"):
        FileReplay(cfg(tmp_path / "x.parquet"), make_ctx())


def test_recorded_rate_without_timestamps_is_a_source_error(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", ROWS)
    write_csv(tmp_path / "x.csv", "a,b,c\n1,2,3\n")
    for name in ("x.npy", "x.csv"):
        with pytest.raises(SourceError, match="recorded"):
            FileReplay(cfg(tmp_path / name, rate="recorded"), make_ctx())


def test_fast_mode_is_cheap(tmp_path: Path) -> None:
    path = tmp_path / "big.npy"
    data = np.random.default_rng(0).normal(size=(200_000, 3)).astype(np.float32)
    np.save(path, data)
    source = FileReplay(cfg(path, block_size=32), make_ctx())
    n = 0

    def emit(block: Any) -> None:
        nonlocal n
        n += len(block)

    t0 = time.perf_counter()
    source.run(emit, threading.Event())
    elapsed = time.perf_counter() - t0
    assert n == 200_000
    assert elapsed < 2.0, f"{200_000 / 32 / elapsed:.0f} blocks/s is too slow"


def test_fast_loop_until_stopped(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, ROWS)
    source = FileReplay(cfg(path, loop=True, block_size=4), make_ctx())
    sink = Sink()
    stop = threading.Event()

    def emit(block: Any) -> None:
        sink(block)
        if len(sink.blocks) == 3:
            stop.set()

    source.run(emit, stop)
    np.testing.assert_array_equal(sink.values(), np.tile(ROWS, (3, 1)).astype(np.float32))


def test_fixed_rate_pacing(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.arange(90, dtype=np.float64).reshape(30, 3))
    sink = Sink()
    t0 = time.monotonic()
    FileReplay(cfg(path, rate="fixed", rate_hz=100), make_ctx()).run(sink, threading.Event())
    elapsed = time.monotonic() - t0
    assert sink.count == 30
    assert 29 / 100 - 0.01 <= elapsed < 1.0
    ts = sink.ts()
    np.testing.assert_allclose(np.diff(ts), 0.01, atol=2e-3)
    assert abs(ts[-1] - time.time()) < 0.5, "stamps are emission times, not the file's"


def test_recorded_rate_follows_the_file(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "x.csv", "ts,a\n1000.0,1\n1000.1,2\n1000.3,3\n1000.35,4\n")
    sink = Sink()
    t0 = time.monotonic()
    source = FileReplay(cfg(path, rate="recorded", channels=1), make_ctx())
    source.run(sink, threading.Event())
    elapsed = time.monotonic() - t0
    assert 0.34 <= elapsed < 1.0
    np.testing.assert_allclose(np.diff(sink.ts()), [0.1, 0.2, 0.05], atol=2e-3)
    assert abs(sink.ts()[-1] - time.time()) < 0.5


def test_paced_loop_keeps_the_rate_across_the_end(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.arange(5, dtype=np.float64).reshape(5, 1))
    source = FileReplay(cfg(path, rate="fixed", rate_hz=200, channels=1, loop=True), make_ctx())
    sink = Sink()
    with running(source, sink):
        sink.wait_samples(12)
    values = sink.values()[:12, 0]
    np.testing.assert_array_equal(values, [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1])
    np.testing.assert_allclose(np.diff(sink.ts()[:12]), 1 / 200, atol=2e-3)


def test_stop_interrupts_a_slow_replay(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, ROWS)
    source = build_source(cfg(path, rate="fixed", rate_hz=0.2), make_ctx())
    sink = Sink()
    with running(source, sink) as stop:
        sink.wait_samples(1)
        t0 = time.monotonic()
        stop.set()
    assert time.monotonic() - t0 < 0.5
    assert sink.count == 1


def test_json_suffix_is_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text("\n".join(json.dumps(r) for r in ROWS.tolist()))
    np.testing.assert_array_equal(replay_all(cfg(path)).values(), ROWS.astype(np.float32))


@given(
    n=st.integers(1, 5000),
    rate_hz=st.floats(0.1, 1e6, allow_nan=False, allow_infinity=False),
    ts=st.lists(st.floats(-10.0, 1e4, allow_nan=False), min_size=1, max_size=20),
)
def test_fixed_rate_due_times_equal_the_array_they_replace(
    n: int, rate_hz: float, ts: list[float]
) -> None:
    """A fixed rate computes ``i / rate_hz`` when asked instead of keeping an array of one
    float64 per sample: same due times, same slices, same ``searchsorted`` counts."""
    offsets = np.arange(n, dtype=np.float64) / rate_hz
    due = _Due(n, n / rate_hz, rate_hz=rate_hz)
    for t in [*ts, *(float(offsets[i]) for i in (0, n // 2, n - 1))]:
        for x in (t, np.nextafter(t, -np.inf), np.nextafter(t, np.inf)):
            assert due.count(float(x)) == int(np.searchsorted(offsets, x, side="right")), x
    for i, j in ((0, n), (n // 3, n // 2 + 1), (n - 1, n)):
        assert due.at(i) == float(offsets[i])
        np.testing.assert_array_equal(due.span(i, j), offsets[i:j])
