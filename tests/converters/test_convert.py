"""Conversion in every mode, verification gates, and the errors a data scientist will meet."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from agent.errors import ConversionError
from agent.model.runtime import load_model
from converters.build import convert_and_verify
from converters.convert import Mode, convert_keras
from converters.dataset import InputShape, load_dataset
from converters.settings import BuildSettings
from converters.verify import VerificationFailed
from tests.converters.conftest import Trained

pytestmark = pytest.mark.slow


def _accuracy(content: bytes, x: np.ndarray, y: np.ndarray) -> float:
    model = load_model(content)
    pred = [int(np.argmax(model.run([x[i : i + 1]])[0])) for i in range(len(x))]
    return float(np.mean(np.asarray(pred) == y))


@pytest.fixture(scope="module")
def float_accuracy(trained: Trained) -> float:
    content = convert_keras(trained.keras_path, "float32")
    return _accuracy(content, trained.held_out.x, trained.held_out.y)


@pytest.mark.parametrize(
    ("mode", "io_type", "in_dtype"),
    [
        ("float32", "int8", "float32"),
        ("float16", "int8", "float32"),
        ("dynamic", "int8", "float32"),
        ("int8", "int8", "int8"),
        ("int8", "uint8", "uint8"),
    ],
)
def test_every_mode_converts_and_keeps_accuracy(
    trained: Trained, float_accuracy: float, mode: Mode, io_type: str, in_dtype: str
) -> None:
    rep = trained.train.x[:128] if mode == "int8" else None
    content = convert_keras(trained.model, mode, rep, io_type=io_type)  # type: ignore[arg-type]
    model = load_model(content)
    assert model.inputs[0].dtype == in_dtype
    assert model.inputs[0].shape == (1, 32, 3)
    assert model.inputs[0].name == "window"
    reference = float_accuracy
    acc = _accuracy(content, trained.held_out.x, trained.held_out.y)
    assert reference > 0.9
    assert reference - acc <= 0.03, f"{mode}: {reference} -> {acc}"


def test_int8_verification_passes_on_held_out_data(trained: Trained) -> None:
    settings = BuildSettings(
        name="c",
        mode="int8",
        calibration=trained.calibration,
        validation=trained.test,
        max_accuracy_drop=0.03,
        min_agreement=0.95,
    )
    result = convert_and_verify(trained.keras_path, settings)
    assert result.report is not None and result.report.passed
    out = result.report.outputs[0]
    assert out.accuracy_drop is not None and out.accuracy_drop <= 0.03
    assert out.top1_agreement is not None and out.top1_agreement >= 0.95
    assert 0 < out.max_abs_error < 0.2
    assert [v.name for v in result.report.variants] == ["reference", "candidate"]
    assert all(v.latency_ms_p50 > 0 for v in result.report.variants)
    assert result.report.samples == len(trained.held_out.y)


def test_bad_calibration_set_fails_the_accuracy_gate(trained: Trained, tmp_path: Path) -> None:
    """Calibrating on data in the wrong units (x0.01) saturates int8: the gate must catch it."""
    bad = tmp_path / "bad-calibration.npy"
    np.save(bad, trained.train.x[:128] * 0.01)
    settings = BuildSettings(
        name="c", mode="int8", calibration=bad, validation=trained.test, max_accuracy_drop=0.05
    )
    with pytest.raises(VerificationFailed) as exc:
        convert_and_verify(trained.keras_path, settings)
    report = exc.value.report
    assert not report.passed
    assert report.outputs[0].accuracy_drop is not None and report.outputs[0].accuracy_drop > 0.05
    assert "max_accuracy_drop" in report.failures[0]


def test_calibration_of_the_wrong_shape_names_tensor_and_shape(
    trained: Trained, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((10, 16, 3), np.float32))
    with pytest.raises(ConversionError, match=r"\(10, 16, 3\).*'window' of shape \(N, 32, 3\)"):
        convert_and_verify(
            trained.keras_path, BuildSettings(name="c", mode="int8", calibration=wrong)
        )


def test_empty_calibration_set(trained: Trained, tmp_path: Path) -> None:
    empty = tmp_path / "empty.npy"
    np.save(empty, np.zeros((0, 32, 3), np.float32))
    with pytest.raises(ConversionError, match=r"empty: 0 samples for input 'window'"):
        convert_keras(trained.model, "int8", np.zeros((0, 32, 3), np.float32))
    with pytest.raises(ConversionError, match="empty"):
        convert_and_verify(
            trained.keras_path, BuildSettings(name="c", mode="int8", calibration=empty)
        )


def test_int8_without_calibration(trained: Trained) -> None:
    with pytest.raises(ConversionError, match="calibration"):
        convert_keras(trained.model, "int8")


def test_unsupported_op_is_named(tmp_path: Path) -> None:
    import tensorflow as tf

    class WithSvd(tf.Module):  # type: ignore[misc]
        @tf.function(input_signature=[tf.TensorSpec([None, 4, 4], tf.float32, name="mat")])  # type: ignore[untyped-decorator]
        def __call__(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            s, _, _ = tf.linalg.svd(x)
            return {"singular": s}

    mod = WithSvd()
    tf.saved_model.save(mod, str(tmp_path / "svd"), signatures=mod.__call__)
    with pytest.raises(ConversionError, match=r"unsupported op.*Svd"):
        convert_and_verify(tmp_path / "svd", BuildSettings(name="c", mode="float32"))


def test_onnx_goes_through_its_own_environment_and_names_what_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The converter never imports onnx2tf: it makes (or reuses) the onnx2tf environment
    (converters.onnxenv) and says what failed there. Here making it fails fast: the
    interpreter that would make it does not exist."""
    monkeypatch.setitem(sys.modules, "onnx2tf", None)  # importing it here would fail the test
    monkeypatch.setenv("EDGE_CONVERT_ONNX_ENV", str(tmp_path / "onnxenv"))
    monkeypatch.setenv("EDGE_CONVERT_ONNX_PYTHON", str(tmp_path / "no-such-python"))
    (tmp_path / "m.onnx").write_bytes(b"onnx")
    with pytest.raises(ConversionError, match=r"onnx2tf environment .*onnxenv.*venv"):
        convert_and_verify(tmp_path / "m.onnx", BuildSettings(name="c", mode="float32"))


def test_broken_keras_file(tmp_path: Path) -> None:
    (tmp_path / "broken.keras").write_bytes(b"definitely not a zip")
    with pytest.raises(ConversionError, match="cannot load Keras model"):
        convert_and_verify(tmp_path / "broken.keras", BuildSettings(name="c", mode="float32"))


def test_h5_and_tflite_sources(trained: Trained, tmp_path: Path) -> None:
    h5 = tmp_path / "model.h5"
    trained.model.save(h5)
    converted = convert_and_verify(
        h5, BuildSettings(name="c", mode="float32", validation=trained.validation)
    )
    assert converted.report is not None and converted.report.outputs[0].accuracy is not None
    # an existing .tflite is packaged as it is (its own reference)
    tfl = tmp_path / "ready.tflite"
    tfl.write_bytes(convert_keras(trained.model, "int8", trained.train.x[:64]))
    packaged = convert_and_verify(
        tfl, BuildSettings(name="c", validation=trained.validation, max_accuracy_drop=0.0)
    )
    assert packaged.model == tfl.read_bytes()
    assert packaged.mode == "int8"
    assert packaged.report is not None and packaged.report.outputs[0].top1_agreement == 1.0


def test_csv_dataset_with_labels(tmp_path: Path, trained: Trained) -> None:
    x, y = trained.held_out.x[:20], trained.held_out.y[:20]
    rows = ["label," + ",".join(f"v{i}" for i in range(96))]
    rows += [
        f"{trained.labels[int(lab)]}," + ",".join(f"{v:.6f}" for v in sample.reshape(-1))
        for sample, lab in zip(x, y, strict=True)
    ]
    path = tmp_path / "val.csv"
    path.write_text("\n".join(rows) + "\n")
    data = load_dataset(path, [InputShape("window", (32, 3))], trained.labels)
    assert len(data) == 20 and data.labels is not None
    np.testing.assert_array_equal(data.labels, y)
    np.testing.assert_allclose(data.inputs[0], x, atol=1e-5)
    with pytest.raises(ConversionError, match="does not fit input 'window'"):
        load_dataset(path, [InputShape("window", (16, 3))], trained.labels)


def test_thresholds_without_labels_or_data(trained: Trained, tmp_path: Path) -> None:
    unlabelled = tmp_path / "x.npy"
    np.save(unlabelled, trained.held_out.x[:50])
    with pytest.raises(ConversionError, match="needs labels"):
        convert_and_verify(
            trained.keras_path,
            BuildSettings(name="c", mode="float32", validation=unlabelled, max_accuracy_drop=0.1),
        )
    with pytest.raises(ConversionError, match="need validation data"):
        convert_and_verify(
            trained.keras_path, BuildSettings(name="c", mode="float32", min_agreement=0.9)
        )
