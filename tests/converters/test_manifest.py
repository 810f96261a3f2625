"""The shared schema: semver precedence, arrays, canonical bytes, announcements, targeting."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pytest
from pydantic import ValidationError

from agent.errors import PackageError
from agent.release.manifest import (
    Announcement,
    EncodedArray,
    GoldenSample,
    PreprocessSpec,
    Targets,
    Version,
    canonical_json,
    parse_manifest,
    rollout_position,
)
from agent.wire.topics import ota_topic
from tests.converters.fakes import fake_manifest

# semver.org section 11, in increasing precedence
SEMVER_ORDER = [
    "1.0.0-alpha",
    "1.0.0-alpha.1",
    "1.0.0-alpha.beta",
    "1.0.0-beta",
    "1.0.0-beta.2",
    "1.0.0-beta.11",
    "1.0.0-rc.1",
    "1.0.0",
    "1.0.1",
    "1.1.0",
    "2.0.0",
    "10.0.0",
]


@pytest.mark.parametrize("i", range(len(SEMVER_ORDER) - 1))
def test_semver_precedence(i: int) -> None:
    lo, hi = Version.parse(SEMVER_ORDER[i]), Version.parse(SEMVER_ORDER[i + 1])
    assert lo < hi and hi > lo and lo != hi


def test_semver_build_metadata_is_ignored_in_precedence() -> None:
    assert Version.parse("1.0.0+a") == Version.parse("1.0.0+b")
    assert str(Version.parse("1.2.3-rc.1+build.5")) == "1.2.3-rc.1+build.5"


@pytest.mark.parametrize("bad", ["1.0", "01.0.0", "1.0.0-", "1.0.0-01", "v1.0.0", "1.0.0+", ""])
def test_semver_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match="not a semantic version"):
        Version.parse(bad)


def test_next_patch() -> None:
    assert str(Version.parse("1.2.3").next_patch()) == "1.2.4"
    assert str(Version.parse("1.2.3-rc.1").next_patch()) == "1.2.3"


@pytest.mark.parametrize("dtype", ["float32", "int8", "uint8", "int32", "float64"])
def test_encoded_array_round_trip(dtype: str) -> None:
    arr = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    enc = EncodedArray.from_numpy(arr)
    back = EncodedArray.model_validate_json(enc.model_dump_json()).to_numpy()
    assert back.dtype == arr.dtype and back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)


def test_encoded_array_length_is_checked() -> None:
    enc = EncodedArray.from_numpy(np.zeros(4, np.float32))
    with pytest.raises(ValidationError, match=r"holds 16 bytes.*needs 20"):
        EncodedArray(dtype="float32", shape=[5], data=enc.data)


def test_golden_mismatches() -> None:
    g = GoldenSample(
        name="g",
        inputs=[EncodedArray.from_numpy(np.zeros((1, 2), np.float32))],
        outputs=[EncodedArray.from_numpy(np.array([[0.25, 0.75]], np.float32))],
        atol=0.01,
    )
    assert g.mismatches([np.array([[0.255, 0.745]], np.float32)]) == []
    assert "max |error|" in g.mismatches([np.array([[0.75, 0.25]], np.float32)])[0]
    assert "shape" in g.mismatches([np.zeros((1, 3), np.float32)])[0]


def test_canonical_json_is_sorted_compact_and_refuses_nan() -> None:
    assert canonical_json({"b": 1, "a": [1.5, "é"]}) == '{"a":[1.5,"é"],"b":1}'.encode()
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def test_manifest_bytes_round_trip() -> None:
    m = fake_manifest(b"model-bytes")
    data = m.to_bytes()
    assert parse_manifest(data) == m
    assert parse_manifest(data).to_bytes() == data


def test_manifest_rejects_unknown_fields_and_bad_values() -> None:
    obj = json.loads(fake_manifest(b"x").to_bytes())
    obj["surprise"] = 1
    obj["version"] = "1.0"
    with pytest.raises(PackageError) as exc:
        parse_manifest(json.dumps(obj).encode())
    assert exc.value.reason == "bad_manifest"
    assert "surprise" in exc.value.detail and "version" in exc.value.detail


def test_manifest_refuses_newer_schema() -> None:
    obj = json.loads(fake_manifest(b"x").to_bytes())
    obj["schema_version"] = 2
    with pytest.raises(PackageError, match="schema_version 2 is not supported"):
        parse_manifest(json.dumps(obj).encode())


def test_manifest_needs_utc_created() -> None:
    m = fake_manifest(b"x")
    obj = m.model_dump()
    obj["created"] = datetime(2024, 1, 1, 12, 0)  # naive
    with pytest.raises(ValidationError, match="UTC"):
        type(m).model_validate(obj)


def test_preprocess_spec_uses_config_rules() -> None:
    with pytest.raises(ValidationError, match="hop"):
        PreprocessSpec(window=8, hop=16)
    with pytest.raises(ValidationError, match="mean and std"):
        PreprocessSpec(window=8, hop=4, normalize="standard")
    spec = PreprocessSpec(
        window=8, hop=4, channels=2, normalize="standard", mean=[0, 1], std=[1, 2]
    )
    assert spec.window_section().length == 8
    assert spec.preprocess_section().std == [1, 2]
    with pytest.raises(ValidationError, match="3 channels"):
        PreprocessSpec(window=8, hop=4, channels=3, normalize="standard", mean=[0, 1], std=[1, 2])


def test_announcement_carries_the_manifest_as_a_string() -> None:
    m = fake_manifest(b"x")
    ann = Announcement(
        channel="canary",
        manifest=m.to_bytes().decode(),
        url="http://store/x/1.0.0/model.tflite",
        published_at=datetime(2024, 1, 1, tzinfo=UTC),
    )
    again = Announcement.model_validate_json(ann.to_bytes())
    assert again.manifest_bytes == m.to_bytes()
    assert again.targets == Targets()


def test_ota_topic_checks_parts() -> None:
    assert ota_topic("site/edge", "stable", "vib") == "site/edge/ota/stable/vib"
    for bad in ("a+b", "a#", "a/b", ""):
        with pytest.raises(ValueError):
            ota_topic("edge", bad, "vib")


def test_targets_groups_and_percent() -> None:
    everyone = Targets()
    assert everyone.includes("dev-1", [], "m", "1.0.0")
    lab = Targets(groups=["lab"])
    assert lab.includes("dev-1", ["lab", "x"], "m", "1.0.0")
    assert not lab.includes("dev-1", ["field"], "m", "1.0.0")
    assert not Targets(percent=0).includes("dev-1", [], "m", "1.0.0")
    with pytest.raises(ValidationError):
        Targets(groups=["bad/group"])


def test_rollout_percent_is_stable_and_grows_monotonically() -> None:
    devices = [f"dev-{i}" for i in range(2000)]
    pos = [rollout_position(d, "m", "1.2.0") for d in devices]
    assert all(0 <= p < 100 for p in pos)
    ten = {d for d in devices if Targets(percent=10).includes(d, [], "m", "1.2.0")}
    fifty = {d for d in devices if Targets(percent=50).includes(d, [], "m", "1.2.0")}
    assert ten <= fifty
    assert 120 < len(ten) < 280 and 850 < len(fifty) < 1150
