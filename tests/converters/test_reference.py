"""The drift reference a package carries: statistics checked against NumPy computed here
independently, the package path that puts them in the signed manifest, the size limits, and
backward compatibility (a manifest without a reference is byte-for-byte what it was)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from agent.model.runtime import load_model
from agent.release.manifest import Announcement, Targets, parse_manifest, utc_now
from agent.release.package import MAX_MANIFEST_BYTES, read_package
from agent.release.reference import (
    MAX_REFERENCE_CHANNELS,
    QUANTILE_LEVELS,
    bin_counts,
    compute_reference,
    psi,
)
from converters.dataset import Dataset
from converters.packaging import PackageSpec, package_model
from tests import modelzoo as zoo
from tests.converters.fakes import fake_manifest


def _data(n: int = 500, channels: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scale = np.arange(1, channels + 1, dtype=np.float64)
    return (rng.normal(0, 1, (n, 32, channels)) * scale + scale).astype(np.float32)


def test_input_statistics_match_numpy() -> None:
    x = _data()
    ref = compute_reference(x, 3, source="cal.npz", bins=10)
    assert ref.windows == 500 and ref.values_per_channel == 500 * 32 and ref.bins == 10
    for c, got in enumerate(ref.channels):
        v = x[..., c].astype(np.float64).ravel()
        assert got.lo == v.min() and got.hi == v.max()
        assert got.mean == pytest.approx(v.mean(), rel=1e-5)
        assert got.std == pytest.approx(v.std(), rel=1e-5)
        assert got.quantiles == pytest.approx(np.quantile(v, QUANTILE_LEVELS), rel=1e-5)
        hist, _ = np.histogram(v, bins=10, range=(v.min(), v.max()))
        want = np.concatenate([[0], hist, [0]]) / v.size  # nothing outside its own range
        assert got.hist == pytest.approx(want, rel=1e-5, abs=1e-9)
        assert sum(got.hist) == pytest.approx(1.0, abs=1e-5)


def test_output_statistics_match_numpy() -> None:
    x = _data(200)
    logits = np.random.default_rng(3).normal(0, 1, (200, 1, 4))
    ref = compute_reference(x, 3, outputs=logits, output_kind="classes", source="v")
    assert ref.output is not None and ref.output.frequencies is not None
    want = np.bincount(np.argmax(logits.reshape(200, 4), axis=1), minlength=4) / 200
    assert ref.output.frequencies == pytest.approx(want)
    scores = np.random.default_rng(4).gamma(2.0, 1.0, (200, 1))
    ref = compute_reference(x, 3, outputs=scores, output_kind="scores", source="v", bins=8)
    assert ref.output is not None and ref.output.scores is not None
    s = ref.output.scores
    assert s.quantiles == pytest.approx(np.quantile(scores[:, 0], QUANTILE_LEVELS), rel=1e-5)
    hist, _ = np.histogram(scores[:, 0], bins=8, range=(scores.min(), scores.max()))
    assert s.hist[1:-1] == pytest.approx(hist / 200, rel=1e-5)


def test_bin_counts_out_of_range_and_edges() -> None:
    lo, hi = np.array([0.0, -1.0]), np.array([1.0, 1.0])
    x = np.array([[-0.5, -2.0], [0.0, -1.0], [0.99, 0.0], [1.0, 1.0], [1.5, 3.0]])
    counts = bin_counts(x, lo, hi, 4)
    # channel 0: below, [0,.25), ..., [.75,1], above
    assert counts[0].tolist() == [1, 1, 0, 0, 2, 1]
    assert counts[1].tolist() == [1, 1, 0, 1, 1, 1]
    same = np.array([[10, 20, 30]])
    assert psi(same, np.array([1 / 6, 2 / 6, 3 / 6]))[0] == pytest.approx(0.0, abs=1e-12)
    p, q = np.array([0.2, 0.3, 0.5]), np.array([0.3, 0.3, 0.4])
    want = float(np.sum((p - q) * np.log(p / q)))
    assert psi(np.array([[20, 30, 50]]), q)[0] == pytest.approx(want)


def test_package_carries_the_reference_signed_and_within_limits(tmp_path: object) -> None:
    zm = zoo.tiny_classifier("int8")
    model = load_model(zm.content)
    x = _data(300).astype(np.float32)
    data = Dataset("data/cal.npz", [x], None)
    spec = PackageSpec(name="m", version="1.0.0", mode="int8")
    pkg = package_model(spec, zm.content, data=data, model=model)
    back = read_package(pkg.to_bytes())
    ref = back.manifest.reference
    assert ref is not None and ref.source == "cal.npz"  # no build-host paths
    assert ref.channels[1].mean == pytest.approx(float(x[..., 1].mean()), rel=1e-4)
    outs = np.stack([model.run([x[i : i + 1]])[0] for i in range(300)]).reshape(300, -1)
    want = np.bincount(outs.argmax(axis=1), minlength=2) / 300
    assert ref.output is not None and ref.output.frequencies == pytest.approx(want)
    assert len(back.manifest_bytes) < 16 * 1024  # a few KiB for 3 channels


def test_largest_reference_fits_the_manifest_limit() -> None:
    x = _data(20, MAX_REFERENCE_CHANNELS)
    ref = compute_reference(x, MAX_REFERENCE_CHANNELS, source="wide")
    m = fake_manifest(b"model").model_copy(update={"reference": ref})
    size = len(m.to_bytes())
    assert size < MAX_MANIFEST_BYTES // 4, size
    assert parse_manifest(m.to_bytes()).reference == ref


def test_old_manifests_and_announcements_are_unchanged() -> None:
    m = fake_manifest(b"model")
    assert m.reference is None
    assert "reference" not in json.loads(m.to_bytes())  # an older agent reads it as before
    ann = Announcement(
        channel="c", manifest=m.to_bytes().decode(), url="http://x/m", published_at=utc_now()
    )
    assert json.loads(ann.to_bytes())["targets"] == {"groups": [], "percent": 100.0}
    shadow = ann.model_copy(update={"targets": Targets(shadow=True, devices=["d1"])})
    back = Announcement.model_validate_json(shadow.to_bytes())
    assert back.targets.shadow and back.targets.devices == ["d1"]
    assert back.targets.includes("d1", [], "m", "1.0.0")
    assert not back.targets.includes("d2", [], "m", "1.0.0")
