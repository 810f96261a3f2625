"""``edge-agent predict`` at parity with ``run``: ``--stream`` windows a recording as the agent
does and carries state, bit for bit what a direct interpreter loop gives with reference
kernels; without ``--stream`` each example of a stateful model starts fresh (or carries state
with ``--carry-state``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from tests.modelzoo import CHANNELS, WINDOW, run_frames, streaming_model, tiny_classifier


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args], capture_output=True, text=True, check=False
    )


def lines(res: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert res.returncode == 0, res.stderr
    return [json.loads(line) for line in res.stdout.splitlines()]


def test_predict_stream_on_a_stateful_model_equals_a_direct_interpreter_loop(
    tmp_path: Path,
) -> None:
    zoo = streaming_model()
    x = np.random.default_rng(21).normal(0, 3, (40, CHANNELS)).astype(np.float32)
    np.save(tmp_path / "rec.npy", x)
    got = lines(
        cli(
            "predict",
            str(zoo.path),
            "-i",
            str(tmp_path / "rec.npy"),
            "--stream",
            "--reference-kernels",
        )
    )
    expected = run_frames(zoo.content, [{"x": row[None]} for row in x])
    assert [g["window"] for g in got] == list(range(len(x)))
    assert [g["sample"] for g in got] == list(range(len(x)))
    for g, e in zip(got, expected, strict=True):
        for name in ("ema", "count"):
            value = np.asarray(g["outputs"][name], np.float32)
            assert value.tobytes() == e[name].tobytes(), (g["window"], name, value, e[name])


def _direct_int8_loop(content: bytes, windows: list[np.ndarray]) -> list[np.ndarray]:
    """Quantize with NumPy, invoke with reference kernels, dequantize: one interpreter."""
    interp = Interpreter(
        model_content=content,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    (s_in, z_in), (s_out, z_out) = inp["quantization"], out["quantization"]
    results = []
    for w in windows:
        q = np.clip(np.round(w.astype(np.float64) / s_in) + z_in, -128, 127).astype(np.int8)
        interp.set_tensor(inp["index"], q.reshape(inp["shape"]))
        interp.invoke()
        y = interp.get_tensor(out["index"]).astype(np.float64)
        results.append(((y - z_out) * s_out).astype(np.float32))
    return results


def test_predict_stream_windows_a_recording_with_hop_like_run(tmp_path: Path) -> None:
    zoo = tiny_classifier("int8")
    hop = 8
    x = np.random.default_rng(5).normal(0, 1, (WINDOW + 9 * hop + 3, CHANNELS)).astype(np.float32)
    np.save(tmp_path / "rec.npy", x)
    got = lines(
        cli(
            "predict",
            str(zoo.path),
            "-i",
            str(tmp_path / "rec.npy"),
            "--stream",
            "--reference-kernels",
            "--hop",
            str(hop),
        )
    )
    windows = [x[k * hop : k * hop + WINDOW] for k in range(10)]
    expected = _direct_int8_loop(zoo.content, windows)
    assert [g["sample"] for g in got] == [k * hop for k in range(10)]
    for g, e in zip(got, expected, strict=True):
        (value,) = g["outputs"].values()
        assert np.asarray(value, np.float32).tobytes() == e.tobytes()


def test_predict_examples_of_a_stateful_model_start_fresh_unless_carried(tmp_path: Path) -> None:
    zoo = streaming_model()
    np.save(tmp_path / "x.npy", np.ones((4, CHANNELS), np.float32))
    fresh = lines(cli("predict", str(zoo.path), "-i", str(tmp_path / "x.npy")))[0]
    assert fresh["state"] == "fresh per example" and fresh["model"]["stateful"] is True
    assert fresh["outputs"]["count"]["values"] == [[1.0]] * 4
    carried = lines(cli("predict", str(zoo.path), "-i", str(tmp_path / "x.npy"), "--carry-state"))[
        0
    ]
    assert carried["state"] == "carried"
    assert carried["outputs"]["count"]["values"] == [[1.0], [2.0], [3.0], [4.0]]


def test_predict_reference_kernels_threads_and_signature_reach_the_model(tmp_path: Path) -> None:
    zoo = tiny_classifier("int8")
    np.save(tmp_path / "x.npy", zoo.example[0])
    out = lines(
        cli(
            "predict",
            str(zoo.path),
            "-i",
            str(tmp_path / "x.npy"),
            "--reference-kernels",
            "--threads",
            "2",
            "--signature",
            "serving_default",
        )
    )[0]
    assert out["model"]["reference_kernels"] is True
    assert out["model"]["num_threads"] == 2
    assert out["model"]["signature"] == "serving_default"
    bad = cli("predict", str(zoo.path), "-i", str(tmp_path / "x.npy"), "--signature", "nope")
    assert bad.returncode == 2 and "nope" in bad.stderr


def test_a_recording_without_stream_says_how_to_window_it(tmp_path: Path) -> None:
    zoo = tiny_classifier("int8")
    np.save(tmp_path / "rec.npy", np.zeros((100, CHANNELS), np.float32))
    res = cli("predict", str(zoo.path), "-i", str(tmp_path / "rec.npy"))
    assert res.returncode == 2 and "--stream" in res.stderr


def test_inspect_shows_ops_per_subgraph_and_flags_a_stateful_model() -> None:
    zoo = streaming_model()
    res = cli("inspect", str(zoo.path), "--json")
    assert res.returncode == 0, res.stderr
    d = json.loads(res.stdout)
    assert d["stateful"] is True
    subs = d["subgraphs"]
    assert len(subs) == 2
    assert sum(s["op_total"] for s in subs) == d["op_total"]
    assert subs[0]["ops"]["CALL_ONCE"] == 1 and "CALL_ONCE" not in subs[1]["ops"]
    table = cli("inspect", str(zoo.path)).stdout
    assert "STATEFUL" in table and "ops per subgraph (2 subgraphs)" in table
    plain = cli("inspect", str(tiny_classifier("int8").path)).stdout
    assert "STATEFUL" not in plain and "ops (" in plain


def test_predict_stream_feeds_features_already_in_the_input_type_as_they_are(
    tmp_path: Path,
) -> None:
    zoo = tiny_classifier("int8")
    feats = np.random.default_rng(9).integers(-128, 128, (WINDOW * 3, CHANNELS), dtype=np.int8)
    np.save(tmp_path / "feats.npy", feats)
    got = lines(
        cli(
            "predict",
            str(zoo.path),
            "-i",
            str(tmp_path / "feats.npy"),
            "--stream",
            "--reference-kernels",
        )
    )
    interp = Interpreter(
        model_content=zoo.content,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    s_out, z_out = out["quantization"]
    assert len(got) == 3
    for k, g in enumerate(got):
        interp.set_tensor(inp["index"], feats[k * WINDOW : (k + 1) * WINDOW][None])
        interp.invoke()
        y = ((interp.get_tensor(out["index"]).astype(np.float64) - z_out) * s_out).astype(
            np.float32
        )
        (value,) = g["outputs"].values()
        assert np.asarray(value, np.float32).tobytes() == y.tobytes()
