"""``edge-convert package`` refuses what a device would refuse (the agent's own check,
``agent.model.compat.check_package``), and ``--labels`` takes a file (issue 11, finding 4)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest

from agent.release.package import read_package
from converters.cli import EXIT_FAILED, main
from tests.modelzoo import _keras_convert, _tf

pytestmark = pytest.mark.slow


@functools.cache
def ten_class_model() -> bytes:
    keras = _tf().keras
    inp = keras.Input((32, 3), batch_size=1, name="window")
    h = keras.layers.Flatten()(inp)
    out = keras.layers.Dense(10, activation="softmax", name="scores")(h)
    return _keras_convert(keras.Model(inp, out), "float32", [])


@functools.cache
def image_model() -> bytes:
    keras = _tf().keras
    inp = keras.Input((8, 8, 1), batch_size=1, name="image")
    h = keras.layers.Conv2D(2, 3)(inp)
    h = keras.layers.GlobalAveragePooling2D()(h)
    out = keras.layers.Dense(2, activation="softmax", name="scores")(h)
    return _keras_convert(keras.Model(inp, out), "float32", [])


def _package(tmp: Path, model: bytes, *args: str) -> tuple[int, Path]:
    src = tmp / "model.tflite"
    src.write_bytes(model)
    out = tmp / "m.eapkg"
    rc = main(["package", str(src), "--name", "m", "--version", "1.0.0", "-o", str(out), *args])
    return rc, out


def test_labels_that_do_not_match_the_output_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out = _package(tmp_path, ten_class_model(), "--labels", "0,1,2")
    err = capsys.readouterr().err
    assert rc == EXIT_FAILED and not out.exists()
    assert "incompatible_output" in err and "3" in err and "10" in err


def test_a_window_that_does_not_fit_the_input_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out = _package(tmp_path, image_model(), "--window", "1", "--hop", "1", "--channels", "64")
    err = capsys.readouterr().err
    assert rc == EXIT_FAILED and not out.exists()
    assert "incompatible_input" in err and "(1, 8, 8, 1)" in err


def test_a_fitting_package_is_written(tmp_path: Path) -> None:
    rc, out = _package(tmp_path, image_model(), "--window", "8", "--hop", "8", "--channels", "8")
    assert rc == 0
    assert read_package(out).manifest.preprocess is not None


@pytest.mark.parametrize("fmt", ["lines", "json", "csv-line"])
def test_labels_from_a_file(tmp_path: Path, fmt: str) -> None:
    names = [f"class {i}" for i in range(10)]
    if fmt == "lines":
        path = tmp_path / "labels.txt"
        path.write_text("\n".join(names) + "\n")
    elif fmt == "json":
        path = tmp_path / "labels.json"
        path.write_text(json.dumps(names))
    else:
        path = tmp_path / "labels.txt"
        path.write_text(",".join(names) + "\n")
    rc, out = _package(tmp_path, ten_class_model(), "--labels", str(path))
    assert rc == 0
    assert read_package(out).manifest.labels == names


def test_a_missing_labels_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        _package(tmp_path, ten_class_model(), "--labels", str(tmp_path / "labels.txt"))
    assert exc.value.code == 2
    assert "does not exist" in capsys.readouterr().err
