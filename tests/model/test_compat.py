"""The manifest decides (agent.model.compat): resolve, conflicts naming both values, and the
one compatibility check the converters share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.config import AnomalyPost, ClassificationPost, Config, parse_config
from agent.errors import IncompatibleModel, PackageConflict
from agent.model.compat import check_package, resolve, resolve_and_check
from agent.release.manifest import Manifest, PostprocessSpec, PreprocessSpec, TensorSpec
from tests.packaged import STANDARD, demo_package


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return demo_package().manifest


def cfg(**data: Any) -> Config:
    return parse_config(data)


def test_a_package_decides_what_the_config_leaves_unset(manifest: Manifest) -> None:
    eff = resolve_and_check(cfg(), manifest)
    assert eff.model.name == "vibration" and eff.model.version == "1.4.0"
    assert eff.preprocess.normalize == "standard"
    assert eff.preprocess.mean == [1.0, 2.0, 3.0] and eff.preprocess.std == [2.0, 4.0, 8.0]
    assert (eff.window.length, eff.window.hop, eff.channels) == (32, 16, 3)
    assert eff.postprocess.type == "classification"


def test_an_explicit_contradiction_names_key_and_both_values(manifest: Manifest) -> None:
    with pytest.raises(PackageConflict) as err:
        resolve(cfg(preprocess={"normalize": "none"}, model={"name": "other"}), manifest)
    problems = dict(err.value.problems)
    assert problems["preprocess.normalize"] == (
        "config says 'none', package vibration 1.4.0 says 'standard'"
    )
    assert problems["model.name"] == "config says 'other', package vibration 1.4.0 says 'vibration'"
    assert err.value.reason == "wrong_model"


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"window": {"length": 64, "hop": 16}}, "window.length"),
        ({"window": {"length": 32, "hop": 8}}, "window.hop"),
        ({"sources": [{"type": "synthetic", "channels": 4}]}, "sources[0].channels"),
        ({"preprocess": {"normalize": "standard", "mean": [0, 0, 0], "std": [2, 4, 8]}},
         "preprocess.mean"),
        ({"postprocess": {"type": "regression"}}, "postprocess.type"),
        ({"postprocess": {"type": "classification", "labels": ["a", "b"]}}, "postprocess.labels"),
        ({"model": {"version": "1.3.0"}}, "model.version"),
    ],
)  # fmt: skip
def test_each_decided_key_must_agree(manifest: Manifest, data: dict[str, Any], key: str) -> None:
    with pytest.raises(PackageConflict) as err:
        resolve(cfg(**data), manifest)
    assert [k for k, _ in err.value.problems] == [key]


def test_agreeing_settings_and_operator_choices_are_kept(manifest: Manifest) -> None:
    c = cfg(
        model={"name": "vibration", "version": "1.4.0"},
        window={"length": 32, "hop": 16},
        postprocess={
            "type": "classification",
            "labels": ["normal", "anomaly"],
            "threshold": 0.7,
            "smoothing": 3,
            "top_k": 2,
            "publish_on_change": True,
        },
    )
    eff = resolve_and_check(c, manifest)
    post = eff.postprocess
    assert isinstance(post, ClassificationPost)
    assert (post.threshold, post.smoothing, post.top_k, post.publish_on_change) == (
        0.7,
        3,
        2,
        True,
    )


def test_with_ota_the_configured_version_is_only_a_label(
    manifest: Manifest, tmp_path: Path
) -> None:
    c = cfg(model={"version": "1.0.0"}, ota={"enabled": True, "allow_unsigned": True})
    assert resolve(c, manifest).model.version == "1.4.0"


def test_the_package_decides_the_output_reading_and_the_operator_the_threshold(
    manifest: Manifest,
) -> None:
    m = _with(manifest, postprocess=PostprocessSpec(type="anomaly", threshold=0.4), labels=[])
    eff = resolve(cfg(), m)
    assert isinstance(eff.postprocess, AnomalyPost) and eff.postprocess.threshold == 0.4
    eff = resolve(cfg(postprocess={"type": "anomaly", "threshold": 0.9}), m)
    assert isinstance(eff.postprocess, AnomalyPost) and eff.postprocess.threshold == 0.9


def test_an_anomaly_package_without_threshold_needs_one_from_the_config(
    manifest: Manifest,
) -> None:
    m = _with(manifest, postprocess=PostprocessSpec(type="anomaly"), labels=[])
    with pytest.raises(PackageConflict) as err:
        resolve(cfg(), m)
    assert err.value.problems[0][0] == "postprocess.threshold"


def test_a_package_without_preprocess_keeps_the_local_windowing() -> None:
    m = demo_package(preprocess=None).manifest
    eff = resolve(cfg(window={"length": 32, "hop": 8}), m)
    assert (eff.window.length, eff.window.hop) == (32, 8)
    assert eff.model.name == "vibration"


# --------------------------------------------------------------------------- converters' check


def _with(m: Manifest, **over: Any) -> Manifest:
    return m.model_copy(update=over)


def test_check_package_refuses_labels_that_do_not_match_the_output(manifest: Manifest) -> None:
    outputs = [TensorSpec(name="scores", shape=[1, 10], dtype="float32")]
    with pytest.raises(IncompatibleModel) as err:
        check_package(_with(manifest, outputs=outputs, labels=["0", "1", "2"]))
    assert err.value.reason == "incompatible_output"
    assert "3" in err.value.detail and "10" in err.value.detail


def test_check_package_refuses_a_window_that_does_not_fit_the_input(manifest: Manifest) -> None:
    inputs = [TensorSpec(name="image", shape=[1, 8, 8, 1], dtype="float32")]
    pre = PreprocessSpec(window=1, hop=1, channels=64)
    with pytest.raises(IncompatibleModel) as err:
        check_package(_with(manifest, inputs=inputs, preprocess=pre))
    assert err.value.reason == "incompatible_input"
    assert "(1, 8, 8, 1)" in err.value.detail


def test_check_package_accepts_what_a_device_runs(manifest: Manifest) -> None:
    assert check_package(manifest).preprocess.normalize == "standard"
    assert check_package(_with(manifest, preprocess=None)).window.length == 32


def test_standard_fixture_is_what_the_tests_expect() -> None:
    assert STANDARD.channels == 3
