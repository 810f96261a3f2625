"""Windowing: exactly-once windows across arbitrary block boundaries, per stream."""

from __future__ import annotations

import itertools

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import PreprocessSection
from agent.errors import SampleError
from agent.ingest.preprocess import Preprocessor
from agent.ingest.samples import SampleBlock
from agent.ingest.window import StreamWindowers, Windower, Windows

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


def stream_of(n: int, channels: int, seed: int = 0) -> tuple[F32, F64]:
    rng = np.random.default_rng(seed)
    values = rng.standard_normal((n, channels)).astype(np.float32)
    ts = 1_700_000_000.0 + np.arange(n, dtype=np.float64) * 0.02
    return values, ts


def reference(values: F32, ts: F64, length: int, hop: int) -> tuple[F32, F64]:
    """Windows computed the obvious way, one at a time."""
    starts = range(0, values.shape[0] - length + 1, hop)
    data = [values[s : s + length] for s in starts]
    shape = (0, length, values.shape[1])
    out = np.stack(data) if data else np.empty(shape, np.float32)
    return out, np.array([ts[s + length - 1] for s in starts], np.float64)


def run_blocks(
    w: Windower, values: F32, ts: F64, cuts: list[int], stream: str = "s"
) -> tuple[list[Windows], list[float]]:
    """Push ``values`` cut at ``cuts``; block ``i`` gets ``t_in = i``. Also return each
    sample's t_in."""
    edges = [0, *sorted(cuts), values.shape[0]]
    got = []
    t_in_of_sample: list[float] = []
    for i, (a, b) in enumerate(itertools.pairwise(edges)):
        if b <= a:
            continue
        got.append(w.push(SampleBlock(stream, ts[a:b], values[a:b], t_in=float(i))))
        t_in_of_sample += [float(i)] * (b - a)
    return got, t_in_of_sample


def check_exactly_once(
    got: list[Windows], t_in_of_sample: list[float], values: F32, ts: F64, length: int, hop: int
) -> None:
    want_data, want_ts = reference(values, ts, length, hop)
    nonempty = [g for g in got if len(g)]
    data = np.concatenate([g.data for g in got]) if got else np.empty((0, length, values.shape[1]))
    np.testing.assert_array_equal(data, want_data)
    np.testing.assert_array_equal(np.concatenate([g.ts for g in got] or [np.empty(0)]), want_ts)
    # window numbers are consecutive, starting at 0: none skipped, none emitted twice
    firsts = [g.first for g in nonempty]
    sizes = [len(g) for g in nonempty]
    assert firsts == list(np.cumsum([0, *sizes])[:-1])
    for g in nonempty:
        assert g.data.dtype == np.float32 and g.data.flags.c_contiguous
        for i in range(len(g)):
            last_sample = (g.first + i) * hop + length - 1
            assert g.t_in == t_in_of_sample[last_sample]


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_split_gives_the_same_windows_as_the_whole_stream(data: st.DataObject) -> None:
    length = data.draw(st.integers(1, 12), label="length")
    hop = data.draw(st.integers(1, length), label="hop")
    channels = data.draw(st.integers(1, 3), label="channels")
    n = data.draw(st.integers(0, 120), label="n")
    cuts = data.draw(st.lists(st.integers(0, n), max_size=30), label="cuts")
    values, ts = stream_of(n, channels, seed=n)
    got, tins = run_blocks(Windower(length, hop, channels), values, ts, cuts)
    check_exactly_once(got, tins, values, ts, length, hop)


@pytest.mark.parametrize(
    "cuts",
    [
        [],  # one huge block, nothing carried: windowed straight from the block
        [5],  # carry + a block bigger than the carry buffer: joined
        [1, 2, 3, 2500],  # small appends, then big blocks
        list(range(0, 6000, 997)),
    ],
)
def test_big_blocks_take_the_join_and_direct_paths(cuts: list[int]) -> None:
    values, ts = stream_of(6000, 3)
    got, tins = run_blocks(Windower(50, 7, 3), values, ts, cuts)
    check_exactly_once(got, tins, values, ts, 50, 7)


def test_many_windows_from_one_block_are_one_batch() -> None:
    values, ts = stream_of(32 + 16 * 99, 3)
    w = Windower(32, 16, 3)
    out = w.push(SampleBlock("s", ts, values, t_in=7.0))
    assert len(out) == 100 and out.data.shape == (100, 32, 3) and out.t_in == 7.0
    assert w.pending == 16 and w.emitted == 100


def test_nothing_completed_returns_an_empty_batch_and_keeps_the_samples() -> None:
    values, ts = stream_of(40, 2)
    w = Windower(32, 16, 2)
    empty = w.push(SampleBlock("s", ts[:31], values[:31]))
    assert len(empty) == 0 and not empty and empty.data.shape == (0, 32, 2)
    assert w.pending == 31
    one = w.push(SampleBlock("s", ts[31:40], values[31:40], t_in=3.0))
    assert len(one) == 1 and one.first == 0 and one.t_in == 3.0
    np.testing.assert_array_equal(one.data[0], values[:32])
    assert one.ts.tolist() == [ts[31]]
    assert w.pending == 40 - 16


def test_windows_are_owned_by_the_caller() -> None:
    """The next push must not overwrite windows already handed out (another thread has them)."""
    values, ts = stream_of(100, 1)
    w = Windower(4, 4, 1)
    first = w.push(SampleBlock("s", ts[:8], values[:8]))
    kept = first.data.copy()
    w.push(SampleBlock("s", ts[8:100], values[8:100]))
    np.testing.assert_array_equal(first.data, kept)


def test_input_values_are_not_modified_and_may_be_read_only() -> None:
    values, ts = stream_of(64, 3)
    values.flags.writeable = False
    before = values.copy()
    w = Windower(8, 3, 3, transform=Preprocessor(_standard(3), 3))
    w.push(SampleBlock("s", ts[:5], values[:5]))
    w.push(SampleBlock("s", ts[5:], values[5:]))
    np.testing.assert_array_equal(values, before)


def test_float64_values_are_converted() -> None:
    values, ts = stream_of(3000, 2)
    w = Windower(10, 5, 2)
    out = w.push(SampleBlock("s", ts, values.astype(np.float64)))
    assert out.data.dtype == np.float32
    np.testing.assert_array_equal(out.data, reference(values, ts, 10, 5)[0])


def test_reset_forgets_carried_samples_and_numbering() -> None:
    values, ts = stream_of(20, 1)
    w = Windower(8, 8, 1)
    w.push(SampleBlock("s", ts[:12], values[:12]))
    w.reset()
    assert w.pending == 0 and w.emitted == 0
    out = w.push(SampleBlock("s", ts[12:20], values[12:20]))
    assert out.first == 0
    np.testing.assert_array_equal(out.data[0], values[12:20])


def test_wrong_channel_count_is_a_sample_error() -> None:
    values, ts = stream_of(10, 2)
    with pytest.raises(SampleError) as exc:
        Windower(4, 2, 3).push(SampleBlock("imu", ts, values))
    assert exc.value.reason == "wrong_shape"
    assert "'imu'" in str(exc.value) and "(n, 3)" in str(exc.value) and "(10, 2)" in str(exc.value)


@pytest.mark.parametrize(
    ("length", "hop", "channels"), [(0, 1, 1), (4, 0, 1), (4, 5, 1), (4, 2, 0)]
)
def test_bad_arguments_are_refused(length: int, hop: int, channels: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        Windower(length, hop, channels)
    with pytest.raises(ValueError, match="must be"):
        StreamWindowers(length, hop, channels)


def _standard(channels: int) -> PreprocessSection:
    return PreprocessSection(normalize="standard", mean=[0.5] * channels, std=[2.0] * channels)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_preprocessor_as_transform_equals_normalising_afterwards(data: st.DataObject) -> None:
    length = data.draw(st.integers(1, 10))
    hop = data.draw(st.integers(1, length))
    n = data.draw(st.integers(0, 80))
    cuts = data.draw(st.lists(st.integers(0, n), max_size=10))
    values, ts = stream_of(n, 3, seed=n)
    pre = Preprocessor(_standard(3), 3)
    fused, _ = run_blocks(Windower(length, hop, 3, transform=pre), values, ts, cuts)
    plain, _ = run_blocks(Windower(length, hop, 3), values, ts, cuts)
    for f, p in zip(fused, plain, strict=True):
        np.testing.assert_array_equal(f.data, pre(p.data.copy()))


# --------------------------------------------------------------------------- streams


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_streams_are_windowed_independently(data: st.DataObject) -> None:
    """Interleaving the blocks of two streams gives each the windows it gets alone."""
    length, hop = 6, 4
    a_vals, a_ts = stream_of(60, 2, seed=1)
    b_vals, b_ts = stream_of(45, 2, seed=2)
    a_cuts = sorted(data.draw(st.lists(st.integers(0, 60), max_size=8)))
    b_cuts = sorted(data.draw(st.lists(st.integers(0, 45), max_size=8)))

    def blocks(name: str, v: F32, t: F64, cuts: list[int]) -> list[SampleBlock]:
        edges = [0, *cuts, v.shape[0]]
        return [SampleBlock(name, t[x:y], v[x:y]) for x, y in itertools.pairwise(edges) if y > x]

    a_blocks, b_blocks = blocks("a", a_vals, a_ts, a_cuts), blocks("b", b_vals, b_ts, b_cuts)
    order = data.draw(st.permutations(["a"] * len(a_blocks) + ["b"] * len(b_blocks)))
    sw = StreamWindowers(length, hop, 2)
    got: dict[str, list[F32]] = {"a": [], "b": []}
    queues = {"a": iter(a_blocks), "b": iter(b_blocks)}
    for name in order:
        got[name].append(sw.push(next(queues[name])).data)
    for name, v, t in (("a", a_vals, a_ts), ("b", b_vals, b_ts)):
        want = reference(v, t, length, hop)[0]
        have = np.concatenate(got[name]) if got[name] else np.empty((0, length, 2), np.float32)
        np.testing.assert_array_equal(have, want)
    assert len(sw) == len({*order})


def test_stream_cap_refuses_a_new_stream_but_serves_known_ones() -> None:
    values, ts = stream_of(4, 1)
    sw = StreamWindowers(2, 1, 1, max_streams=2)
    sw.push(SampleBlock("a", ts[:1], values[:1]))
    sw.push(SampleBlock("b", ts[:1], values[:1]))
    with pytest.raises(SampleError) as exc:
        sw.push(SampleBlock("c", ts[:1], values[:1]))
    assert exc.value.reason == "too_many_streams" and "'c'" in str(exc.value)
    assert len(sw.push(SampleBlock("a", ts[1:2], values[1:2]))) == 1
    sw.drop("a")
    assert sw.get("a") is None
    sw.push(SampleBlock("c", ts[:1], values[:1]))
    assert sw.get("c") is not None
    sw.reset()
    assert len(sw) == 0
