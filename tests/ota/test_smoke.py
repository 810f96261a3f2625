"""The smoke test on real models: golden samples, NaN/Inf, shapes, the manifest, latency."""

from __future__ import annotations

import numpy as np
import pytest

from agent.config import ModelSection
from agent.errors import UpdateError
from agent.model.runtime import load_model
from agent.ota import smoke
from agent.release.manifest import TensorSpec
from tests.ota import models, pkgs
from tests.ota.conftest import Keys

pytestmark = pytest.mark.slow  # converts small TensorFlow models (once per session)

SETTINGS = ModelSection(name="m")


def reason(content: bytes, manifest: object, running: object = None) -> str:
    with pytest.raises(UpdateError) as err:
        smoke.smoke_test(content, manifest, SETTINGS, running)  # type: ignore[arg-type]
    return err.value.reason


def test_a_good_model_passes_and_is_returned_loaded(keys: Keys) -> None:
    pkg = pkgs.build(models.dense(1), "2.0.0", keys.release)
    running = load_model(models.dense(2))
    result = smoke.smoke_test(pkg.model, pkg.manifest, SETTINGS, running)
    assert result.model.sha256 == pkg.manifest.artifact.sha256
    assert result.latency_s > 0 and result.running_latency_s is not None
    x = np.ones((1, 32, 3), np.float32)
    np.testing.assert_allclose(
        result.model.run([x])[0][0], models.dense_reference(1, x)[0], rtol=1e-4, atol=1e-4
    )


def test_nan_outputs_are_refused(keys: Keys) -> None:
    pkg = pkgs.build(models.nan_model(), "2.0.0", keys.release)
    assert reason(pkg.model, pkg.manifest) == "non_finite"


def test_wrong_expected_outputs_are_a_golden_mismatch(keys: Keys) -> None:
    pkg = pkgs.tampered_golden(pkgs.build(models.dense(1), "2.0.0", keys.release), keys.release)
    assert reason(pkg.model, pkg.manifest) == "golden_mismatch"


def test_a_model_unlike_its_manifest_is_refused(keys: Keys) -> None:
    pkg = pkgs.build(models.dense(1), "2.0.0", keys.release)
    lying = pkg.manifest.model_copy(
        update={"outputs": [TensorSpec(name="Identity", shape=[1, 3], dtype="float32")]}
    )
    assert reason(pkg.model, lying) == "manifest_mismatch"


def test_wrong_golden_shapes_are_refused(keys: Keys) -> None:
    pkg = pkgs.build(models.dense(1), "2.0.0", keys.release)
    g = pkg.manifest.golden[0]
    from agent.release.manifest import EncodedArray

    bad = g.model_copy(update={"outputs": [EncodedArray.from_numpy(np.zeros((2,), np.float32))]})
    m = pkg.manifest.model_copy(update={"golden": [bad]})
    assert reason(pkg.model, m) == "wrong_shape"


def test_bytes_the_runtime_refuses(keys: Keys) -> None:
    pkg = pkgs.build(models.dense(1), "2.0.0", keys.release)
    assert reason(b"TFL3" + b"\x00" * 64, pkg.manifest) == "load_failed"


def test_far_slower_than_the_running_model_is_refused(
    keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rule, not the machine's timing: the candidate's median latency is made 20x the
    running model's (a loaded machine can invert real timings of small models)."""
    pkg = pkgs.build(models.dense(1), "2.0.0", keys.release)
    running = load_model(models.nan_model())
    timed = {id(running): 0.001}
    monkeypatch.setattr(
        smoke, "median_latency", lambda model, inputs, runs: timed.get(id(model), 0.020)
    )
    assert reason(pkg.model, pkg.manifest, running) == "too_slow"
    timed[id(running)] = 0.010  # 2x: slower, but not far slower
    smoke.smoke_test(pkg.model, pkg.manifest, SETTINGS, running)  # passes
