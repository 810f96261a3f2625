"""Sensor payloads to ``SampleBlock``s: the JSON and binary formats of the mqtt and command sources.

JSON documents accepted (``channels`` numbers per sample)::

    [v, ...]                              one sample
    [[v, ...], ...]                       several samples
    {"values": [...], "ts": t}            one or several samples; ``ts`` optional: one epoch
                                          time for all, or one per sample
    [{"values": ..., "ts": ...}, ...]     several of those
    v                                     a bare number, when ``channels`` is 1

Binary payloads are little-endian values of a declared dtype, shape ``(n, channels)``, stamped
with the time of arrival.

Every problem raises ``SampleError`` (and nothing else, whatever the bytes) with a stable reason:
``oversized``, ``invalid_utf8``, ``bad_json``, ``non_numeric``, ``wrong_shape``, ``not_finite``
(NaN, Inf, or outside the float32 range) and ``bad_timestamp``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from agent.errors import SampleError
from agent.ingest.samples import SampleBlock, make_block

log = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]

FLOAT32_MAX = float(np.finfo(np.float32).max)
BINARY_DTYPES = ("float32", "float64", "int16", "int32", "uint16", "int8", "uint8")
_NUMBER_TYPES = frozenset({int, float})  # JSON numbers; bool is deliberately not one


def _is_number(v: object) -> bool:
    return type(v) in _NUMBER_TYPES


def _describe(v: object) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def decode_json(payload: bytes) -> object:
    """UTF-8 JSON bytes to Python values (``invalid_utf8`` / ``bad_json``)."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SampleError("invalid_utf8", f"not UTF-8 at byte {exc.start}") from None
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, int digit limit, nesting
        raise SampleError("bad_json", f"not JSON: {str(exc)[:80]}") from None


def _check_range(arr: F64) -> None:
    if not np.isfinite(arr).all():
        raise SampleError("not_finite", "NaN or Inf in sample values")
    if arr.size and float(np.abs(arr).max()) > FLOAT32_MAX:
        raise SampleError("not_finite", "a value is outside the float32 range")


def _rows(doc: object, channels: int) -> F64:
    """A number, a list of numbers or a list of lists of numbers to a (n, channels) array."""
    if _is_number(doc):
        rows: list[object] = [[doc]]
    elif isinstance(doc, list):
        if not doc:
            raise SampleError("wrong_shape", "empty array")
        rows = doc if isinstance(doc[0], list) else [doc]
    else:
        raise SampleError("non_numeric", f"expected numbers, got {_describe(doc)}")
    for row in rows:
        if not isinstance(row, list):
            raise SampleError("wrong_shape", "array mixes numbers and arrays")
        if not all(_is_number(v) for v in row):
            bad = next(v for v in row if not _is_number(v))
            if isinstance(bad, list | dict):
                raise SampleError("wrong_shape", "values nested too deeply")
            raise SampleError("non_numeric", f"not a number: {_describe(bad)}")
        if len(row) != channels:
            raise SampleError(
                "wrong_shape", f"expected {channels} value(s) per sample, got {len(row)}"
            )
    try:
        arr = np.array(rows, dtype=np.float64)
    except OverflowError:  # an integer beyond float64
        raise SampleError("not_finite", "a value is outside the float32 range") from None
    _check_range(arr)
    return arr


def _timestamps(ts: object, n: int) -> F64 | None:
    if ts is None:
        return None
    if _is_number(ts):
        seq: list[object] = [ts] * n
    elif isinstance(ts, list) and len(ts) == n and all(_is_number(t) for t in ts):
        seq = ts
    else:
        raise SampleError("bad_timestamp", f"need one number or {n}, got {_describe(ts)}")
    try:
        arr = np.array(seq, dtype=np.float64)
    except OverflowError:
        raise SampleError("bad_timestamp", "timestamp out of range") from None
    if not np.isfinite(arr).all():
        raise SampleError("bad_timestamp", "timestamp is not finite")
    return arr


def _object(doc: dict[str, object], channels: int, ts_key: str | None) -> tuple[F64, F64 | None]:
    if "values" not in doc:
        raise SampleError("wrong_shape", "object has no 'values'")
    values = _rows(doc["values"], channels)
    ts = doc.get(ts_key) if ts_key is not None else None
    return values, _timestamps(ts, values.shape[0])


def json_samples(doc: object, channels: int, ts_key: str | None = "ts") -> tuple[F64, F64 | None]:
    """A decoded JSON document to ``(values (n, channels), ts (n,) or None)``.

    ``ts_key`` names the timestamp member of objects; None ignores timestamps.
    """
    if isinstance(doc, dict):
        return _object(doc, channels, ts_key)
    if isinstance(doc, list) and doc and any(isinstance(d, dict) for d in doc):
        objects = [d for d in doc if isinstance(d, dict)]
        if len(objects) != len(doc):
            raise SampleError("wrong_shape", "array mixes objects and other values")
        parts = [_object(d, channels, ts_key) for d in objects]
        values = np.concatenate([v for v, _ in parts])
        if all(t is None for _, t in parts):
            return values, None
        now = time.time()
        ts = [t if t is not None else np.full(len(v), now) for v, t in parts]
        return values, np.concatenate(ts)
    return _rows(doc, channels), None


def parse_json(stream: str, payload: bytes, channels: int) -> SampleBlock:
    """One JSON payload (any of the forms above) to a block of ``stream``."""
    values, ts = json_samples(decode_json(payload), channels)
    return make_block(stream, values.astype(np.float32), ts, channels)


def parse_binary(stream: str, payload: bytes, channels: int, dtype: str) -> SampleBlock:
    """Little-endian ``dtype`` values, ``(n, channels)``, to a block stamped now."""
    dt = np.dtype(dtype).newbyteorder("<")
    row_bytes = channels * dt.itemsize
    if not payload or len(payload) % row_bytes:
        raise SampleError(
            "wrong_shape",
            f"{len(payload)} bytes is not a multiple of {channels} x {dtype} ({row_bytes} bytes)",
        )
    arr = np.frombuffer(payload, dtype=dt).reshape(-1, channels)
    # a signalling NaN raises the FP 'invalid' flag when widened or narrowed: it is still a NaN,
    # which the range check reports as not_finite
    with np.errstate(invalid="ignore"):
        if dt.kind == "f":
            _check_range(arr.astype(np.float64))
        values = arr.astype(np.float32)
    return make_block(stream, values, None, channels)


@dataclass(frozen=True, slots=True)
class PayloadFormat:
    """How one source's payloads are encoded, with the size limit checked first."""

    channels: int
    format: Literal["json", "binary"] = "json"
    dtype: str = "float32"
    max_bytes: int = 65536

    def parse(self, stream: str, payload: bytes) -> SampleBlock:
        if len(payload) > self.max_bytes:
            raise SampleError(
                "oversized", f"{len(payload)} bytes, more than the limit of {self.max_bytes}"
            )
        if self.format == "binary":
            return parse_binary(stream, payload, self.channels, self.dtype)
        return parse_json(stream, payload, self.channels)
