"""Recorded sample files (CSV, .npy, JSON lines) read whole into NumPy for the replay source.

* CSV (``.csv``): a header row; the ``timestamp_column`` (if present) holds epoch seconds and
  every other column is a channel.
* NumPy (``.npy``): a numeric ``(n, channels)`` array (``(n,)`` when there is one channel);
  no timestamps.
* JSON lines (``.jsonl``, ``.ndjson``, ``.json``): each line a list of numbers, or
  ``{"values": [...], "<timestamp_column>": t}`` (any form of ``agent.ingest.sources.parse``).

Timestamps are read only when asked for (the 'recorded' rate). A file that cannot be used at
all (missing, unreadable, wrong columns, no valid sample) is a ``SourceError``; a malformed
row or line is handed to ``reject`` with its reason and skipped.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.errors import SampleError, SourceError
from agent.ingest.sources.parse import FLOAT32_MAX, decode_json, json_samples

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
Reject = Callable[[SampleError], None]

CSV_SUFFIXES = (".csv",)
NPY_SUFFIXES = (".npy",)
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")


@dataclass(frozen=True)
class Recording:
    """Valid samples of a file: ``values`` (n, channels) read-only, ``ts`` (n,) or None."""

    values: F32
    ts: F64 | None

    def __len__(self) -> int:
        return int(self.values.shape[0])


def load_recording(
    path: Path, channels: int, timestamp_column: str | None, want_ts: bool, reject: Reject
) -> Recording:
    """Read ``path`` whole; ``want_ts`` requires a timestamp for every sample."""
    suffix = path.suffix.lower()
    if suffix not in CSV_SUFFIXES + NPY_SUFFIXES + JSONL_SUFFIXES:
        raise SourceError(
            f"replay file {path}: unknown format {suffix!r} (use .csv, .npy, .jsonl or .ndjson)"
        )
    if want_ts and (timestamp_column is None or suffix in NPY_SUFFIXES):
        raise SourceError(
            f"replay file {path} has no timestamps: rate = 'recorded' needs a "
            "timestamp_column in a CSV or JSON-lines file; use 'fixed' or 'fast'"
        )
    try:
        if suffix in NPY_SUFFIXES:
            values, ts = _load_npy(path, channels, reject), None
        else:
            data = path.read_bytes()
            if suffix in CSV_SUFFIXES:
                values, ts = _load_csv(
                    data, path, channels, timestamp_column, want_ts=want_ts, reject=reject
                )
            else:
                values, ts = _load_jsonl(
                    data, channels, timestamp_column, want_ts=want_ts, reject=reject
                )
    except OSError as exc:
        raise SourceError(f"cannot read replay file {path}: {exc}") from exc
    if want_ts and ts is None:
        raise SourceError(
            f"replay file {path} has no {timestamp_column!r} column: rate = 'recorded' needs "
            "timestamps; use 'fixed' or 'fast'"
        )
    if values.shape[0] == 0:
        what = "sample with a valid timestamp" if want_ts else "valid sample"
        raise SourceError(f"replay file {path} has no {what}")
    out = np.ascontiguousarray(values, dtype=np.float32)  # no copy for float32 .npy files
    out.flags.writeable = False  # blocks are views into it: nobody may change them
    if ts is not None and (np.diff(ts) < 0).any():
        log.warning("replay file %s: timestamps go backwards; those samples follow at once", path)
    log.info("replay file %s: %d samples", path, out.shape[0])
    return Recording(out, ts)


def _bad_rows(values: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
    finite = np.asarray(np.isfinite(values).all(axis=1), dtype=np.bool_)
    if values.dtype == np.float32:  # every finite float32 is in range
        return ~finite
    in_range = np.asarray((np.abs(values) <= FLOAT32_MAX).all(axis=1), dtype=np.bool_)
    return ~(finite & in_range)


def _finish(
    values: npt.NDArray[Any], ts: F64 | None, reject: Reject
) -> tuple[npt.NDArray[Any], F64 | None]:
    """Drop (and reject) rows with non-finite values or timestamps. Float32 values are
    checked as they are (every finite float32 is in range): no copy when all rows are good."""
    with np.errstate(invalid="ignore"):
        bad_values = _bad_rows(values)
    n_bad = int(bad_values.sum())
    if n_bad == 0 and ts is None:
        return values, ts
    keep = ~bad_values
    for _ in range(n_bad):
        reject(SampleError("not_finite", "NaN, Inf or out-of-range value in a row"))
    if ts is not None:
        bad_ts = ~np.isfinite(ts) & keep
        for _ in range(int(bad_ts.sum())):
            reject(SampleError("bad_timestamp", "timestamp is not finite"))
        keep &= ~bad_ts
        ts = ts[keep]
    return values[keep], ts


def _load_npy(path: Path, channels: int, reject: Reject) -> npt.NDArray[Any]:
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as exc:  # pickled/object arrays, not an .npy file
        raise SourceError(f"replay file {path} is not a plain .npy array: {exc}") from exc
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
        raise SourceError(f"replay file {path}: need a numeric array, got {arr.dtype}")
    if arr.ndim == 1 and channels == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2 or arr.shape[1] != channels:
        raise SourceError(f"replay file {path}: need shape (n, {channels}), got {tuple(arr.shape)}")
    # float32 recordings (what the agent records) stay float32: a float64 copy of an image
    # recording is tens of MB, and the freed pages stay with the process
    wide = arr if arr.dtype == np.float32 else arr.astype(np.float64)
    values, _ = _finish(wide, None, reject)
    return values


def _cell_floats(row: list[str], cols: list[int], reason: str) -> list[float]:
    out = []
    for i in cols:
        cell = row[i]
        try:
            out.append(float(cell))
        except ValueError:
            if any("\udc80" <= ch <= "\udcff" for ch in cell):
                raise SampleError("invalid_utf8", "a cell is not UTF-8") from None
            raise SampleError(reason, f"not a number: {cell[:40]!r}") from None
    return out


def _csv_rows(text: str, reject: Reject) -> list[list[str]]:
    """Non-blank CSV records; a record the csv module refuses is rejected and skipped."""
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[list[str]] = []
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return rows
        except csv.Error as exc:
            reason = "oversized" if "field limit" in str(exc) else "wrong_shape"
            reject(SampleError(reason, f"CSV record refused: {exc}"))
            continue
        if any(c.strip() for c in row):
            rows.append(row)


def _load_csv(
    data: bytes, path: Path, channels: int, ts_col: str | None, *, want_ts: bool, reject: Reject
) -> tuple[F64, F64 | None]:
    text = data.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
    rows = _csv_rows(text, reject)
    if not rows:
        raise SourceError(f"replay file {path} is empty (a CSV needs a header row)")
    header = [h.strip() for h in rows[0]]
    ts_index = header.index(ts_col) if ts_col is not None and ts_col in header else None
    cols = [i for i in range(len(header)) if i != ts_index]
    if len(cols) != channels:
        names = [header[i] for i in cols]
        raise SourceError(
            f"replay file {path}: {len(cols)} value column(s) {names} but channels = {channels}"
        )
    if want_ts and ts_index is None:
        return np.empty((0, channels)), None  # load_recording explains
    body = rows[1:]
    width = len(header)
    if body and all(len(r) == width for r in body):
        try:  # the fast path: a clean file converts in one go
            table = np.array(body)
            values = table[:, cols].astype(np.float64)
            ts = table[:, ts_index].astype(np.float64) if want_ts else None
            return _finish(values, ts, reject)
        except ValueError:
            pass  # some cell is not a number: find it row by row
    good: list[list[float]] = []
    stamps: list[float] = []
    for row in body:
        try:
            if len(row) != width:
                raise SampleError("wrong_shape", f"{len(row)} fields, the header has {width}")
            values_row = _cell_floats(row, cols, "non_numeric")
            if want_ts and ts_index is not None:
                stamps += _cell_floats(row, [ts_index], "bad_timestamp")
        except SampleError as err:
            reject(err)
            continue
        good.append(values_row)
    values = np.array(good, dtype=np.float64).reshape(-1, channels)
    return _finish(values, np.array(stamps, dtype=np.float64) if want_ts else None, reject)


def _load_jsonl(
    data: bytes, channels: int, ts_key: str | None, *, want_ts: bool, reject: Reject
) -> tuple[F64, F64 | None]:
    parts: list[F64] = []
    stamps: list[F64] = []
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            doc = decode_json(line)
            values, ts = json_samples(doc, channels, ts_key if want_ts else None)
            if want_ts:
                if ts is None:
                    raise SampleError("bad_timestamp", f"line has no {ts_key!r}")
                stamps.append(ts)
        except SampleError as err:
            reject(err)
            continue
        parts.append(values)
    values = np.concatenate(parts) if parts else np.empty((0, channels))
    if not want_ts:
        return values, None
    return values, np.concatenate(stamps) if stamps else np.empty(0)
