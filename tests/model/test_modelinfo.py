"""agent.model.modelinfo: describing models and one-shot predictions from input files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agent.errors import ModelError, SampleError, ShapeMismatch
from agent.model.modelinfo import describe_model, format_description, predict_file
from agent.model.runtime import load_model
from tests import modelzoo as zoo


def test_describe_quantized_model() -> None:
    zm = zoo.tiny_classifier("int8")
    d = describe_model(zm.content, path="tiny.tflite")
    json.dumps(d)  # JSON-able throughout
    model = load_model(zm.content)
    assert (d["path"], d["size"], d["sha256"]) == ("tiny.tflite", len(zm.content), model.sha256)
    assert d["runtime"] == "litert" and d["signature"] == "serving_default"
    assert not d["stateful"]
    (inp,) = d["inputs"]
    assert inp["name"] == "window" and inp["shape"] == [1, 32, 3] and inp["dtype"] == "int8"
    assert inp["scale"] == model.inputs[0].scale and inp["zero_point"] == model.inputs[0].zero_point
    lo, hi = inp["float_range"]
    assert lo == pytest.approx((-128 - inp["zero_point"]) * inp["scale"])
    assert hi == pytest.approx((127 - inp["zero_point"]) * inp["scale"])
    assert d["outputs"][0]["float_range"] == pytest.approx([0.0, 255 / 256])
    assert d["ops"]["CONV_2D"] == 1 and d["op_total"] == sum(d["ops"].values())
    assert list(d["signatures"]) == ["serving_default"]
    text = format_description(d)
    for part in ("tiny.tflite", d["sha256"], "window", "[1, 32, 3]", "int8", "zp ", "CONV_2D"):
        assert part in text, part


def test_describe_float_model() -> None:
    d = describe_model(zoo.tiny_classifier("float32").content)
    (inp,) = d["inputs"]
    assert inp["dtype"] == "float32" and not inp["quantized"] and "float_range" not in inp
    assert "float32" in format_description(d)


def test_describe_several_signatures() -> None:
    content = zoo.two_signature_model().content
    d = describe_model(content)
    assert d["signature"] is None and d["inputs"] == [] and d["stateful"]
    assert sorted(d["signatures"]) == ["peek", "step"]
    assert [t["name"] for t in d["signatures"]["step"]["outputs"]] == ["count", "ema"]
    text = format_description(d)
    assert "signature peek" in text and "signature step" in text and "ema_plus" in text
    step = describe_model(content, signature="step")
    assert step["signature"] == "step" and [t["name"] for t in step["inputs"]] == ["x"]
    with pytest.raises(ModelError, match="no signature 'nope'"):
        describe_model(content, signature="nope")


def test_describe_corrupt_model() -> None:
    with pytest.raises(ModelError, match=r"bad\.tflite"):
        describe_model(b"\x00" * 64, path="bad.tflite")


# --------------------------------------------------------------------------- predict


@pytest.fixture
def classifier() -> zoo.ZooModel:
    return zoo.tiny_classifier("int8")


def _windows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, (n, 32, 3)).astype(np.float32)


def test_predict_npy_shapes(tmp_path: Path, classifier: zoo.ZooModel) -> None:
    model = load_model(classifier.content)
    xs = _windows(4)
    expected = [model.run1(x[None])[0] for x in xs]
    cases = {"exact": xs[:1], "no_batch": xs[0], "stack": xs}
    for name, arr in cases.items():
        path = tmp_path / f"{name}.npy"
        np.save(path, arr)
        out = predict_file(classifier.content, path)
        json.dumps(out)
        n = 4 if name == "stack" else 1
        assert out["examples"] == n
        assert out["inputs"] == {"window": [1, 32, 3]}
        got = out["outputs"]["output_0"]
        assert got["shape"] == [n, 2]
        np.testing.assert_array_equal(
            np.asarray(got["values"], np.float32), np.concatenate(expected[:n])
        )
        assert out["model"]["sha256"] == model.sha256
        assert out["latency_ms"]["mean"] > 0


def test_predict_wrong_shape_names_both(tmp_path: Path, classifier: zoo.ZooModel) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((31, 3), np.float32))
    with pytest.raises(
        ShapeMismatch, match=r"'window' takes shape \(1, 32, 3\); the file has \(31, 3\)"
    ):
        predict_file(classifier.content, path)


def test_predict_csv_with_and_without_header(tmp_path: Path, classifier: zoo.ZooModel) -> None:
    x = _windows(1, seed=2)[0]
    want = load_model(classifier.content).run1(x[None])[0]
    body = "\n".join(",".join(repr(float(v)) for v in row) for row in x)
    for header in ("", "ax,ay,az\n"):
        path = tmp_path / "w.csv"
        path.write_text(header + body + "\n", encoding="utf-8")
        out = predict_file(classifier.content, path)
        np.testing.assert_array_equal(
            np.asarray(out["outputs"]["output_0"]["values"], np.float32), want
        )
    path.write_text("1,2,3\n4,oops,6\n", encoding="utf-8")
    with pytest.raises(SampleError) as info:
        predict_file(classifier.content, path)
    assert info.value.reason == "bad_input_file" and "w.csv" in str(info.value)


def test_predict_json_list_and_labels(tmp_path: Path, classifier: zoo.ZooModel) -> None:
    xs = _windows(3, seed=4)
    path = tmp_path / "in.json"
    path.write_text(json.dumps(xs.tolist()), encoding="utf-8")
    out = predict_file(classifier.content, path, labels=["normal", "anomaly"])
    scores = np.asarray(out["outputs"]["output_0"]["values"])
    assert [p["label"] for p in out["predictions"]] == [
        ["normal", "anomaly"][int(np.argmax(s))] for s in scores
    ]
    assert [p["score"] for p in out["predictions"]] == [float(s.max()) for s in scores]
    with pytest.raises(ShapeMismatch, match="3 labels"):
        predict_file(classifier.content, path, labels=["a", "b", "c"])


def test_predict_multi_input(tmp_path: Path) -> None:
    zm = zoo.multi_io_model("int8")
    model = load_model(zm.content)
    a, b = zm.example
    want = model.run_named({"a": a, "b": b})
    npz = tmp_path / "in.npz"
    np.savez(npz, b=b, a=a)
    out = predict_file(zm.content, npz)
    assert list(out["outputs"]) == ["prod", "sum"]
    for name, arr in want.items():
        np.testing.assert_array_equal(np.asarray(out["outputs"][name]["values"], np.float32), arr)
    js = tmp_path / "in.json"
    js.write_text(json.dumps({"a": a[0].tolist(), "b": b[0].tolist()}), encoding="utf-8")
    assert predict_file(zm.content, js)["outputs"] == out["outputs"]

    np.savez(npz, a=a)
    with pytest.raises(ShapeMismatch, match=r"missing input\(s\) \['b'\]"):
        predict_file(zm.content, npz)
    np.savez(npz, a=a, b=b, c=b)
    with pytest.raises(ShapeMismatch, match="no model input 'c'"):
        predict_file(zm.content, npz)
    np.savez(npz, a=np.concatenate([a, a]), b=b)
    with pytest.raises(ShapeMismatch, match="different numbers of examples"):
        predict_file(zm.content, npz)
    single = tmp_path / "a.npy"
    np.save(single, a)
    with pytest.raises(ShapeMismatch, match="give them by name"):
        predict_file(zm.content, single)


def test_predict_lone_npz_array_feeds_a_single_input(
    tmp_path: Path, classifier: zoo.ZooModel
) -> None:
    path = tmp_path / "x.npz"
    np.savez(path, _windows(2))
    assert predict_file(classifier.content, path)["examples"] == 2


def test_predict_float_values_are_float32_exact(tmp_path: Path) -> None:
    zm = zoo.anomaly_autoencoder("float32")
    path = tmp_path / "x.npy"
    np.save(path, zm.example[0])
    out = predict_file(zm.content, path)
    want = load_model(zm.content).run(zm.example)[0]
    values = np.asarray(out["outputs"]["output_0"]["values"])
    np.testing.assert_array_equal(values.astype(np.float32), want)
    # the shortest repr that round-trips float32, not float64 noise
    flat = [v for row in out["outputs"]["output_0"]["values"][0] for v in row]
    assert all(isinstance(v, float) and len(repr(v)) <= 15 for v in flat)


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("x.txt", b"1,2,3", "unknown input format '.txt'"),
        ("x.json", b"[[1, 2], [3]]", "not a rectangular array"),
        ("x.json", b"[1, NaN]", "NaN or Inf"),
        ("x.json", b"{not json", "cannot read"),
        ("x.npy", b"garbage", "cannot read"),
        ("x.csv", b"a,b,c\n", "no data rows"),
    ],
)
def test_predict_bad_input_files(tmp_path: Path, name: str, content: bytes, match: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(SampleError, match=match) as info:
        predict_file(zoo.tiny_classifier("int8").content, path)
    assert info.value.reason == "bad_input_file"


def test_predict_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SampleError, match="cannot read"):
        predict_file(zoo.tiny_classifier("int8").content, tmp_path / "nope.npy")
