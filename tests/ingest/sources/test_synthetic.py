"""The synthetic source: the formula, determinism, anomalies, pacing and stopping."""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import numpy as np
import pytest

from agent.config import AnomalyInjection, SyntheticSource, parse_config
from agent.errors import ConfigError
from agent.ingest.samples import SampleBlock
from agent.ingest.sources import SyntheticSignal, build_source
from agent.ingest.sources.synthetic import SignalGenerator
from tests.ingest.sources._sink import Sink, make_ctx, running


def cfg(**kw: Any) -> SyntheticSource:
    return SyntheticSource.model_validate(kw)


def test_formula_without_noise() -> None:
    c = cfg(channels=4, rate_hz=100, frequency_hz=[1.0, 2.5], amplitude=2.0, noise_std=0)
    got = SignalGenerator(c).next(250)
    t = np.arange(250) / 100.0
    for ch in range(4):
        f = [1.0, 2.5][ch % 2]
        expected = 2.0 * np.sin(2 * math.pi * f * t + ch * math.pi / 3)
        np.testing.assert_allclose(got[:, ch], expected, atol=1e-5)
    assert got.dtype == np.float32


def test_noise_is_gaussian_with_the_configured_std() -> None:
    got = SignalGenerator(cfg(channels=2, amplitude=0, noise_std=0.5, seed=3)).next(20_000)
    assert abs(float(got.mean())) < 0.02
    assert abs(float(got.std()) - 0.5) < 0.02


ANOMALOUS = {"probability": 0.01, "magnitude": 5.0, "duration_samples": 20}


@pytest.mark.parametrize("chunks", [[1] * 300, [7] * 43, [13, 1, 250, 36], [300]])
def test_same_seed_same_signal_whatever_the_block_sizes(chunks: list[int]) -> None:
    c = cfg(seed=42, noise_std=0.3, anomalies=ANOMALOUS)
    whole = SignalGenerator(c).next(sum(chunks))
    gen = SignalGenerator(c)
    parts = np.concatenate([gen.next(n) for n in chunks])
    np.testing.assert_array_equal(parts, whole)


def test_different_seeds_differ() -> None:
    a = SignalGenerator(cfg(seed=1)).next(100)
    b = SignalGenerator(cfg(seed=2)).next(100)
    assert not np.array_equal(a, b)


def test_anomalies_add_magnitude_to_every_channel_for_their_duration() -> None:
    c = cfg(channels=3, amplitude=0, noise_std=0, seed=5, anomalies=ANOMALOUS)
    gen = SignalGenerator(c)
    got = np.concatenate([gen.next(97) for _ in range(100)])  # blocks cross anomalies
    assert set(np.unique(got).tolist()) == {0.0, 5.0}
    assert (got == got[:, :1]).all(), "every channel shifts together"
    mask = got[:, 0] == 5.0
    assert gen.anomalies_started > 20
    # Each anomaly lasts exactly 20 samples (the last may run past the end).
    assert 0 <= gen.anomalies_started * 20 - int(mask.sum()) < 20
    edges = np.flatnonzero(np.diff(np.r_[0, mask.astype(int), 0]))
    runs = (edges[1::2] - edges[::2])[:-1]
    assert (runs % 20 == 0).all()


def test_probability_one_is_one_long_anomaly() -> None:
    c = cfg(amplitude=0, noise_std=0, anomalies={"probability": 1.0, "magnitude": -1.0})
    got = SignalGenerator(c).next(100)
    assert (got == -1.0).all()


def test_empty_frequency_list_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"sources": [{"type": "synthetic", "frequency_hz": []}]})
    assert "sources[0].frequency_hz" in dict(info.value.problems)


def test_run_emits_block_size_blocks_until_max_samples() -> None:
    c = cfg(rate_hz=50_000, block_size=10, max_samples=1000, seed=9, noise_std=0.2)
    source = build_source(c, make_ctx())
    assert isinstance(source, SyntheticSignal)
    sink = Sink()
    source.run(sink, threading.Event())  # returns by itself at max_samples
    assert sink.count == 1000
    assert all(len(b) >= 10 for b in sink.blocks[:-1])
    assert {b.stream for b in sink.blocks} == {"sensor"}
    np.testing.assert_array_equal(sink.values(), SignalGenerator(c).next(1000))
    assert (np.diff(sink.ts()) > 0).all()


def test_stamps_never_go_backwards_across_many_small_blocks() -> None:
    """One block per sample at 20 kHz: the schedule stamps thousands of blocks; every stamp
    is later than the one before (they once jittered backwards at block boundaries)."""
    c = cfg(rate_hz=20_000, block_size=1, max_samples=5000)
    sink = Sink()
    SyntheticSignal(c, make_ctx()).run(sink, threading.Event())
    ts = sink.ts()
    assert len(ts) == 5000
    assert (np.diff(ts) > 0).all()


def test_real_time_pacing_without_drift() -> None:
    c = cfg(rate_hz=200, block_size=1, max_samples=60)
    sink = Sink()
    t0, wall0 = time.monotonic(), time.time()
    SyntheticSignal(c, make_ctx()).run(sink, threading.Event())
    elapsed = time.monotonic() - t0
    assert elapsed >= 59 / 200 - 0.001  # paced: never faster than the rate
    ts = sink.ts()
    assert len(ts) == 60
    np.testing.assert_allclose(np.diff(ts), 1 / 200, atol=1e-6)  # the rate's spacing
    assert wall0 - 0.01 <= ts[0] and ts[-1] <= time.time() + 0.01  # due times, not later


def test_catches_up_in_bigger_blocks_when_late() -> None:
    c = cfg(rate_hz=1000, block_size=1, max_samples=300)
    blocks: list[SampleBlock] = []

    def slow_emit(block: SampleBlock) -> None:
        blocks.append(block)
        if len(blocks) == 5:
            time.sleep(0.1)  # a consumer that stalls once, not synchronisation

    t0 = time.monotonic()
    SyntheticSignal(c, make_ctx()).run(slow_emit, threading.Event())
    elapsed = time.monotonic() - t0
    assert sum(len(b) for b in blocks) == 300
    assert max(len(b) for b in blocks) >= 50, "the backlog came as one block"
    assert elapsed < 0.299 + 0.2, "it caught up instead of drifting"
    ts = np.concatenate([b.ts for b in blocks])
    np.testing.assert_allclose(np.diff(ts), 1 / 1000, atol=1e-4)


def test_stop_is_immediate_even_between_slow_samples() -> None:
    source = SyntheticSignal(cfg(rate_hz=0.2), make_ctx())  # one sample per 5 s
    sink = Sink()
    with running(source, sink) as stop:
        sink.wait_samples(1)  # sample 0 is due at once
        t0 = time.monotonic()
        stop.set()
    assert time.monotonic() - t0 < 0.5
    assert sink.count == 1


def test_anomaly_config_defaults_off() -> None:
    assert AnomalyInjection().probability == 0.0
    c = cfg(amplitude=0, noise_std=0)
    assert (SignalGenerator(c).next(1000) == 0).all()
