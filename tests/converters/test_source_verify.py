"""Verification against the source (issue 11, finding 5): every converted variant is compared
with the source model run by its own framework, on data in the source's layout.

ONNX: a small model built here with ``onnx.helper`` takes ``[1, 16, 96]`` (channels first) and
runs in onnxruntime. onnx2tf is not installed in this environment (it pins an older TensorFlow
and NumPy; it gets an environment of its own), so its step is stood in for by the SavedModel
onnx2tf makes of such a model: the same weights, input moved channels-last ``[1, 96, 16]``.
Everything after that step is the real build: conversion, calibration, verification against
onnxruntime, the layout recorded in the package, ``edge-agent predict`` applying it.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.errors import ConversionError
from agent.release.package import read_package, write_package
from converters import convert as convert_mod
from converters.build import build_package, convert_and_verify
from converters.settings import BuildSettings
from converters.verify import VerificationFailed
from tests.agentproc import REPO
from tests.converters.conftest import Trained

pytestmark = pytest.mark.slow

C, T, K = 16, 96, 4
RNG = np.random.default_rng(11)
W = RNG.normal(0, 0.3, (C, K)).astype(np.float32)


def onnx_model(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]),
            helper.make_node("MatMul", ["xt", "w"], ["h"]),
            helper.make_node("ReduceMean", ["h"], ["y"], axes=[1], keepdims=0),
        ],
        "channels_first",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, T])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, K])],
        initializer=[numpy_helper.from_array(W, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@functools.cache
def onnx2tf_output(directory: str) -> Path:
    """What onnx2tf makes of ``onnx_model``: a SavedModel taking ``x`` as [1, 96, 16]."""
    import tensorflow as tf

    w = tf.constant(W)

    def serve(x: Any) -> Any:
        return {"output_0": tf.reduce_mean(tf.matmul(x, w), axis=1)}

    fn = tf.function(serve, input_signature=[tf.TensorSpec([1, T, C], tf.float32, name="x")])
    module = tf.Module()
    module.serve = fn
    out = Path(directory) / "saved_model"
    tf.saved_model.save(module, str(out), signatures={"serving_default": fn})
    return out


def source_data(n: int, seed: int) -> np.ndarray:
    """Channels-first windows: per-channel offsets, a per-sample scale."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (n, C, T)) + (np.arange(C) - C / 2)[None, :, None]
    return (x * rng.uniform(0.5, 2.0, (n, 1, 1))).astype(np.float32)


@pytest.fixture
def onnx_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = onnx_model(tmp_path / "cf.onnx")
    saved = onnx2tf_output(str(tmp_path))

    def from_onnx(p: Path, args: object = ()) -> convert_mod.SourceModel:
        return convert_mod.SourceModel(
            "onnx", p, saved_model_dir=saved, sha256=convert_mod.sha256_of_file(p)
        )

    monkeypatch.setattr(convert_mod, "_from_onnx", from_onnx)
    np.save(tmp_path / "cal.npy", source_data(64, 1))
    np.save(tmp_path / "val.npy", source_data(48, 2))
    return path


def test_onnx_float32_matches_onnxruntime_and_records_the_layout(
    onnx_source: Path, tmp_path: Path
) -> None:
    settings = BuildSettings(name="cf", mode="float32", validation=tmp_path / "val.npy")
    built = build_package(onnx_source, settings, version="1.0.0")
    m = built.package.manifest
    assert m.layout is not None and m.layout[0].permutation == [0, 2, 1]
    assert m.layout[0].source_shape == [1, C, T] and m.inputs[0].shape == [1, T, C]
    report = m.verification
    assert report is not None and report.passed and report.source
    (cmp,) = report.source
    assert cmp.framework.startswith("onnxruntime") and cmp.relative_error < 1e-4
    # predict takes data laid out as the ONNX model takes it, and agrees with onnxruntime
    import onnxruntime as ort

    pkg = write_package(tmp_path / "cf.eapkg", built.package)
    x = source_data(3, 9)
    np.save(tmp_path / "x.npy", x)
    res = subprocess.run(
        [sys.executable, "-m", "agent", "predict", str(pkg), "--input", str(tmp_path / "x.npy")],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    got = np.asarray(next(iter(json.loads(res.stdout)["outputs"].values()))["values"])
    sess = ort.InferenceSession(str(onnx_source), providers=["CPUExecutionProvider"])
    want = np.concatenate([sess.run(None, {"x": x[i : i + 1]})[0] for i in range(3)])
    np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-4, atol=1e-4)


def test_onnx_int8_calibrated_in_the_source_layout_passes(
    onnx_source: Path, tmp_path: Path
) -> None:
    settings = BuildSettings(
        name="cf", mode="int8", calibration=tmp_path / "cal.npy", validation=tmp_path / "val.npy"
    )
    conv = convert_and_verify(onnx_source, settings)
    assert conv.report is not None and conv.report.passed, conv.report
    assert conv.report.source is not None
    assert {c.variant for c in conv.report.source} == {"reference", "candidate"}


def test_a_mis_laid_out_calibration_set_is_caught(onnx_source: Path, tmp_path: Path) -> None:
    # already moved to the .tflite layout and reshaped back to fit the ONNX shape: the
    # shapes fit, the values are in the wrong places
    wrong = np.load(tmp_path / "cal.npy").transpose(0, 2, 1).reshape(-1, C, T)
    np.save(tmp_path / "wrong.npy", np.ascontiguousarray(wrong))
    settings = BuildSettings(
        name="cf", mode="int8", calibration=tmp_path / "wrong.npy", validation=tmp_path / "val.npy"
    )
    with pytest.raises(VerificationFailed) as err:
        convert_and_verify(onnx_source, settings)
    report = err.value.report
    assert report.source is not None
    failed = [c for c in report.source if not c.passed]
    assert [c.variant for c in failed] == ["candidate"]
    assert any("onnxruntime" in f and "calibration" in f for f in report.failures)


def test_keras_variants_are_compared_with_keras(trained: Trained, tmp_path: Path) -> None:
    settings = BuildSettings(
        name="c", mode="int8", calibration=trained.calibration, validation=trained.validation
    )
    conv = convert_and_verify(trained.keras_path, settings)
    assert conv.report is not None and conv.report.passed
    assert conv.report.source is not None and len(conv.report.source) == 2
    ref = next(c for c in conv.report.source if c.variant == "reference")
    assert ref.framework.startswith("tensorflow") and ref.relative_error < 1e-3
    assert conv.layout is not None and conv.layout[0].permutation is None


def test_a_keras_package_records_no_layout_and_the_source_comparison(
    trained: Trained, tmp_path: Path
) -> None:
    """No layout change: no ``layout`` key (it is left out while null)."""
    settings = BuildSettings(name="c", mode="float32", validation=trained.validation)
    built = build_package(trained.keras_path, settings, version="1.0.0")
    raw = json.loads(built.package.manifest_bytes)
    assert "layout" not in raw
    assert raw["verification"]["source"]  # the report carries the source comparison
    read_package(built.package.to_bytes())


FAKE_ONNX2TF = """
import json, sys
def main():
    print("argv:", json.dumps(sys.argv[1:]), file=sys.stderr)
    def lookup():
        return {}["/Constant_output_0"]
    lookup()
"""


def test_onnx2tf_options_are_passed_and_its_errors_shown_in_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stand-in onnx2tf (its command line, failing the way the real one did)."""
    fake = tmp_path / "fake"
    (fake / "onnx2tf").mkdir(parents=True)
    (fake / "onnx2tf" / "__init__.py").write_text(FAKE_ONNX2TF)
    monkeypatch.syspath_prepend(str(fake))
    monkeypatch.setenv("PYTHONPATH", f"{fake}:{REPO}")
    model = onnx_model(tmp_path / "cf.onnx")
    args = ["-kat", "x", "-ois", "x:1,16,96", "-b", "1"]
    settings = BuildSettings(name="cf", mode="float32", onnx2tf_args=args)
    with pytest.raises(ConversionError) as err:
        convert_and_verify(model, settings)
    text = str(err.value)
    assert "KeyError: '/Constant_output_0'" in text and "in lookup" in text  # the traceback
    line = next(ln for ln in text.splitlines() if ln.startswith("argv: "))
    got = json.loads(line.removeprefix("argv: "))
    assert got[:2] == ["-i", str(model)] and got[-6:] == args  # onnx2tf received them


def test_a_keras_int8_build_calibrated_on_transposed_data_is_caught(tmp_path: Path) -> None:
    """Keras: a square (16, 16) input, so transposed calibration data fits the shape; the model
    reads only channel 0, which carries the signal. Calibrated on the right layout the int8
    build stays within 25 % of the source's output range; on the transposed one it does not."""
    import tensorflow as tf

    keras = tf.keras
    s = 16
    w = np.zeros((s * s, 2), np.float32)
    w[np.arange(s) * s, 0], w[np.arange(s) * s, 1] = 1.0, -1.0
    inp = keras.Input((s, s), name="window")
    dense = keras.layers.Dense(2, use_bias=False)
    model = keras.Model(inp, dense(keras.layers.Flatten()(inp)))
    dense.set_weights([w])
    model.save(tmp_path / "m.keras")

    def data(n: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        x = rng.normal(0, 0.1, (n, s, s))
        x[:, :, 0] = rng.normal(0, 1, (n, s)) * rng.uniform(0.5, 3, (n, 1))
        return x.astype(np.float32)

    np.save(tmp_path / "cal.npy", data(64, 1))
    np.save(tmp_path / "wrong.npy", np.ascontiguousarray(data(64, 1).transpose(0, 2, 1)))
    np.save(tmp_path / "val.npy", data(48, 2))

    def settings(cal: str) -> BuildSettings:
        return BuildSettings(
            name="k", mode="int8", calibration=tmp_path / cal, validation=tmp_path / "val.npy"
        )

    good = convert_and_verify(tmp_path / "m.keras", settings("cal.npy"))
    assert good.report is not None and good.report.passed
    with pytest.raises(VerificationFailed) as err:
        convert_and_verify(tmp_path / "m.keras", settings("wrong.npy"))
    source = err.value.report.source
    assert source is not None
    assert {c.variant: c.passed for c in source} == {"reference": True, "candidate": False}
