"""Payload parsing shared by the mqtt and command sources: every form, every reason."""

from __future__ import annotations

import json
import struct
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import SampleError
from agent.ingest.samples import SampleBlock
from agent.ingest.sources.parse import (
    BINARY_DTYPES,
    FLOAT32_MAX,
    PayloadFormat,
    json_samples,
    parse_binary,
    parse_json,
)

JSON3 = PayloadFormat(channels=3)


@pytest.mark.parametrize(
    ("payload", "values", "ts"),
    [
        (b"[1, 2, 3]", [[1, 2, 3]], None),
        (b"[1.5, -2e3, 0]", [[1.5, -2000, 0]], None),
        (b"[[1, 2, 3], [4, 5, 6]]", [[1, 2, 3], [4, 5, 6]], None),
        (b'{"values": [1, 2, 3], "ts": 1700000000.5}', [[1, 2, 3]], [1700000000.5]),
        (b'{"values": [1, 2, 3]}', [[1, 2, 3]], None),
        (b'{"values": [1, 2, 3], "ts": null}', [[1, 2, 3]], None),
        (b'{"values": [[1, 2, 3], [4, 5, 6]], "ts": [10, 11]}', [[1, 2, 3], [4, 5, 6]], [10, 11]),
        (b'{"values": [[1, 2, 3], [4, 5, 6]], "ts": 10}', [[1, 2, 3], [4, 5, 6]], [10, 10]),
        (b'{"values": [1, 2, 3], "ts": 5, "sensor": "bme280"}', [[1, 2, 3]], [5]),
        (
            b'[{"values": [1, 2, 3], "ts": 1}, {"values": [4, 5, 6], "ts": 2}]',
            [[1, 2, 3], [4, 5, 6]],
            [1, 2],
        ),
        (b"  [1, 2, 3]\r\n", [[1, 2, 3]], None),
    ],
)
def test_json_forms(payload: bytes, values: list[list[float]], ts: list[float] | None) -> None:
    before = time.time()
    block = JSON3.parse("s", payload)
    assert block.stream == "s"
    assert block.values.dtype == np.float32
    np.testing.assert_array_equal(block.values, np.array(values, dtype=np.float32))
    assert block.ts.shape == (len(values),)
    if ts is None:
        assert (block.ts >= before).all()
        assert (block.ts <= time.time()).all()
    else:
        np.testing.assert_array_equal(block.ts, ts)


def test_list_of_objects_missing_timestamps_are_stamped_now() -> None:
    before = time.time()
    block = JSON3.parse("s", b'[{"values": [1, 2, 3], "ts": 7}, {"values": [4, 5, 6]}]')
    assert block.ts[0] == 7
    assert block.ts[1] >= before


def test_bare_number_is_one_sample_of_one_channel() -> None:
    block = parse_json("t", b"21.5", channels=1)
    np.testing.assert_array_equal(block.values, [[21.5]])
    with pytest.raises(SampleError) as err:
        JSON3.parse("s", b"21.5")
    assert err.value.reason == "wrong_shape"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xfe[1, 2, 3]", "invalid_utf8"),
        (b"[1, 2, \xc3]", "invalid_utf8"),
        (b"", "bad_json"),
        (b"[1, 2,", "bad_json"),
        (b"{'values': [1, 2, 3]}", "bad_json"),
        (b"1" * 5000, "bad_json"),  # beyond Python's int digit limit
        (b'"hello"', "non_numeric"),
        (b"null", "non_numeric"),
        (b"true", "non_numeric"),
        (b'[1, "2", 3]', "non_numeric"),
        (b"[1, true, 3]", "non_numeric"),
        (b"[1, null, 3]", "non_numeric"),
        (b'{"values": "1,2,3"}', "non_numeric"),
        (b"[1, 2]", "wrong_shape"),
        (b"[1, 2, 3, 4]", "wrong_shape"),
        (b"[]", "wrong_shape"),
        (b"[[1, 2, 3], [4, 5]]", "wrong_shape"),
        (b"[[1, 2, 3], 4]", "wrong_shape"),
        (b"[1, [2], 3]", "wrong_shape"),
        (b"[[[1, 2, 3]]]", "wrong_shape"),
        (b'{"value": [1, 2, 3]}', "wrong_shape"),
        (b'[{"values": [1, 2, 3]}, [4, 5, 6]]', "wrong_shape"),
        (b"[NaN, 2, 3]", "not_finite"),
        (b"[Infinity, 2, 3]", "not_finite"),
        (b"[1e400, 2, 3]", "not_finite"),
        (b"[1e39, 2, 3]", "not_finite"),  # finite in float64, not in float32
        (b"[" + b"9" * 400 + b", 2, 3]", "not_finite"),  # an int beyond float64
        (b'{"values": [1, 2, 3], "ts": "yesterday"}', "bad_timestamp"),
        (b'{"values": [1, 2, 3], "ts": true}', "bad_timestamp"),
        (b'{"values": [1, 2, 3], "ts": NaN}', "bad_timestamp"),
        (b'{"values": [[1, 2, 3], [4, 5, 6]], "ts": [1]}', "bad_timestamp"),
        (b'{"values": [1, 2, 3], "ts": [1, 2]}', "bad_timestamp"),
    ],
)
def test_json_rejects_with_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(SampleError) as err:
        JSON3.parse("s", payload)
    assert err.value.reason == reason


def test_oversized_is_checked_before_parsing() -> None:
    fmt = PayloadFormat(channels=3, max_bytes=16)
    assert len(fmt.parse("s", b"[1, 2, 3]")) == 1
    with pytest.raises(SampleError) as err:
        fmt.parse("s", b"[1, 2, 3]" + b" " * 8)
    assert err.value.reason == "oversized"


def test_deep_nesting_is_bad_json_not_a_crash() -> None:
    fmt = PayloadFormat(channels=3, max_bytes=10_000_000)
    with pytest.raises(SampleError) as err:
        fmt.parse("s", b"[" * 1_000_000 + b"]" * 1_000_000)
    assert err.value.reason == "bad_json"


def test_json_samples_can_ignore_or_rename_timestamps() -> None:
    doc = {"values": [1, 2, 3], "ts": "not a time", "time": 5}
    values, ts = json_samples(doc, 3, ts_key=None)
    assert ts is None
    np.testing.assert_array_equal(values, [[1, 2, 3]])
    _, ts = json_samples(doc, 3, ts_key="time")
    assert ts is not None and ts[0] == 5


# ----------------------------------------------------------------------------- binary


@pytest.mark.parametrize("dtype", BINARY_DTYPES)
def test_binary_round_trip(dtype: str) -> None:
    arr = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]], dtype=np.dtype(dtype).newbyteorder("<"))
    block = PayloadFormat(3, "binary", dtype).parse("s", arr.tobytes())
    np.testing.assert_array_equal(block.values, arr.astype(np.float32))
    assert block.values.dtype == np.float32


def test_binary_is_little_endian() -> None:
    payload = struct.pack("<3h", 1, -2, 300)
    np.testing.assert_array_equal(parse_binary("s", payload, 3, "int16").values, [[1, -2, 300]])


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "wrong_shape"),
        (struct.pack("<2f", 1, 2), "wrong_shape"),
        (struct.pack("<4f", 1, 2, 3, 4), "wrong_shape"),
        (struct.pack("<3f", 1, 2, 3) + b"\x00", "wrong_shape"),
        (struct.pack("<3f", 1, float("nan"), 3), "not_finite"),
        (struct.pack("<3f", 1, float("inf"), 3), "not_finite"),
    ],
)
def test_binary_rejects(payload: bytes, reason: str) -> None:
    with pytest.raises(SampleError) as err:
        PayloadFormat(3, "binary", "float32").parse("s", payload)
    assert err.value.reason == reason


def test_binary_float64_outside_float32_is_not_finite() -> None:
    with pytest.raises(SampleError) as err:
        parse_binary("s", struct.pack("<3d", 1.0, 1e300, 2.0), 3, "float64")
    assert err.value.reason == "not_finite"


def test_binary_oversized() -> None:
    fmt = PayloadFormat(1, "binary", "uint8", max_bytes=4)
    assert len(fmt.parse("s", b"\x01\x02\x03\x04")) == 4
    with pytest.raises(SampleError) as err:
        fmt.parse("s", b"\x01" * 5)
    assert err.value.reason == "oversized"


# ----------------------------------------------------------------------------- properties


def _valid(block: SampleBlock, channels: int) -> None:
    assert block.values.ndim == 2
    assert block.values.shape[1] == channels
    assert block.values.shape[0] >= 1
    assert np.isfinite(block.values).all()
    assert block.ts.shape == (block.values.shape[0],)
    assert np.isfinite(block.ts).all()


@settings(max_examples=400, deadline=None)
@given(payload=st.binary(max_size=256), channels=st.integers(1, 4))
def test_arbitrary_bytes_only_ever_raise_sample_error(payload: bytes, channels: int) -> None:
    for fmt in (
        PayloadFormat(channels, "json", max_bytes=200),
        PayloadFormat(channels, "binary", "float32", max_bytes=200),
        PayloadFormat(channels, "binary", "float64"),
        PayloadFormat(channels, "binary", "int8"),
    ):
        try:
            block = fmt.parse("s", payload)
        except SampleError:
            continue
        _valid(block, channels)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.sampled_from(["values", "ts", "x"]), children, max_size=3)
    ),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(doc=json_values, channels=st.integers(1, 3))
def test_arbitrary_json_only_ever_raises_sample_error(doc: object, channels: int) -> None:
    try:
        block = parse_json("s", json.dumps(doc).encode(), channels)
    except SampleError:
        return
    _valid(block, channels)


finite32 = st.floats(-FLOAT32_MAX, FLOAT32_MAX, allow_nan=False, width=32)


@settings(max_examples=200, deadline=None)
@given(
    rows=st.integers(1, 3).flatmap(
        lambda c: st.lists(st.lists(finite32, min_size=c, max_size=c), min_size=1, max_size=8)
    )
)
def test_valid_arrays_round_trip_exactly(rows: list[list[float]]) -> None:
    channels = len(rows[0])
    expected = np.array(rows, dtype=np.float32)
    np.testing.assert_array_equal(
        parse_json("s", json.dumps(rows).encode(), channels).values, expected
    )
    np.testing.assert_array_equal(
        parse_binary("s", expected.astype("<f4").tobytes(), channels, "float32").values, expected
    )


def test_signalling_nan_in_binary_is_not_finite() -> None:
    """Found by hypothesis: a float32 signalling NaN must count as not_finite, not warn."""
    payload = bytes(22) + b"\x81\x7f" + bytes(4)  # 7 float32; the 6th has sNaN bits
    fmt = PayloadFormat(channels=1, format="binary", dtype="float32", max_bytes=1024)
    with pytest.raises(SampleError) as info:
        fmt.parse("s", payload)
    assert info.value.reason == "not_finite"
