"""``edge-convert`` end to end: keygen, package, verify-package (good and tampered), convert."""

from __future__ import annotations

import json
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest

from agent.release.package import read_package
from converters.cli import EXIT_FAILED, EXIT_VERIFICATION, main
from tests.converters.conftest import Keys, Trained

pytestmark = pytest.mark.slow


def _rezip(src: Path, dst: Path, name: str, content: bytes) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for n in zin.namelist():
            zout.writestr(n, content if n == name else zin.read(n))
    return dst


def test_keygen(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keygen", str(tmp_path / "keys" / "release")]) == 0
    out = capsys.readouterr().out
    assert stat.S_IMODE((tmp_path / "keys" / "release.key").stat().st_mode) == 0o600
    assert (tmp_path / "keys" / "release.pub").read_text().startswith("-----BEGIN PUBLIC KEY")
    assert "key id:" in out
    assert main(["keygen", str(tmp_path / "keys" / "release")]) == 2  # refuses to overwrite


def test_package_and_verify_package(
    trained: Trained,
    keys: Keys,
    other_keys: Keys,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "classifier-1.2.0.eapkg"
    report = tmp_path / "report.json"
    rc = main(
        [
            "package",
            str(trained.keras_path),
            "--name",
            "classifier",
            "--version",
            "1.2.0",
            "--mode",
            "int8",
            "--calibration",
            str(trained.calibration),
            "--samples",
            "64",
            "--validation",
            str(trained.validation),
            "--labels",
            ",".join(trained.labels),
            "--key",
            str(keys.private),
            "--max-accuracy-drop",
            "0.05",
            "--min-agreement",
            "0.9",
            "--window",
            "32",
            "--hop",
            "16",
            "--channels",
            "3",
            "--normalize",
            "standard",
            "--mean",
            "0,0,0",
            "--std",
            "1,1,1",
            "--report",
            str(report),
            "-o",
            str(out),
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "PASSED" in text and "output_0" in text
    pkg = read_package(out)
    m = pkg.manifest
    assert (m.name, m.version, m.mode, m.labels) == (
        "classifier",
        "1.2.0",
        "int8",
        list(trained.labels),
    )
    assert m.preprocess is not None and m.preprocess.normalize == "standard"
    assert m.inputs[0].quantization is not None and m.inputs[0].dtype == "int8"
    assert m.verification is not None and m.verification.passed
    assert m.build.tensorflow and m.build.runtime.startswith("litert")
    assert m.build.source == "classifier.keras" and m.build.source_sha256
    assert json.loads(report.read_text())["passed"] is True

    ok = ["verify-package", str(out), "--trusted-key", str(keys.public), "--golden"]
    assert main(ok) == 0
    text = capsys.readouterr().out
    assert "signature OK" in text and "golden samples OK (3)" in text and text.endswith("OK\n")

    flipped = bytearray(pkg.model)
    flipped[len(flipped) // 2] ^= 0xFF
    cases = {
        "hash_mismatch": _rezip(out, tmp_path / "a.eapkg", "model.tflite", bytes(flipped)),
        "bad_signature": _rezip(
            out,
            tmp_path / "b.eapkg",
            "manifest.json",
            pkg.manifest_bytes.replace(b'"version":"1.2.0"', b'"version":"1.2.1"'),
        ),
        "malformed": tmp_path / "c.eapkg",
    }
    (tmp_path / "c.eapkg").write_bytes(b"garbage")
    for reason, path in cases.items():
        assert main(["verify-package", str(path), "--trusted-key", str(keys.public)]) == EXIT_FAILED
        assert f"FAIL {reason}" in capsys.readouterr().out
    assert main(["verify-package", str(out), "--trusted-key", str(other_keys.public)]) == 1
    assert "FAIL unknown_key" in capsys.readouterr().out


def test_convert_writes_model_and_report(
    trained: Trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "model.tflite"
    rc = main(
        [
            "convert",
            str(trained.keras_path),
            "--mode",
            "float16",
            "--validation",
            str(trained.validation),
            "--min-agreement",
            "0.99",
            "-o",
            str(out),
        ]
    )
    assert rc == 0
    assert out.read_bytes()[4:8] == b"TFL3"
    report = json.loads((tmp_path / "model.tflite.report.json").read_text())
    assert report["variants"][1]["mode"] == "float16" and report["passed"]
    assert "float16" in capsys.readouterr().out


def test_bad_calibration_fails_the_build(
    trained: Trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=trained.train.x[:64] * 0.01)
    out = tmp_path / "pkg.eapkg"
    report = tmp_path / "report.json"
    rc = main(
        [
            "package",
            str(trained.keras_path),
            "--name",
            "classifier",
            "--version",
            "1.0.0",
            "--calibration",
            str(bad),
            "--validation",
            str(trained.test),
            "--max-accuracy-drop",
            "0.05",
            "--report",
            str(report),
            "-o",
            str(out),
        ]
    )
    assert rc == EXIT_VERIFICATION
    assert not out.exists()
    assert "FAILED" in capsys.readouterr().out
    assert json.loads(report.read_text())["passed"] is False
    # the HTML report goes where the package would have: the failure as a picture
    assert "FAILED" in (tmp_path / "pkg.eapkg.report.html").read_text()


def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["package", str(tmp_path / "m.tflite"), "--name", "bad/name", "--version", "1"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "name" in err and "version" in err  # every problem, not just the first
    (tmp_path / "m.tflite").write_bytes(b"x")
    rc = main(["package", str(tmp_path / "m.tflite"), "--name", "ok", "--version", "1.0.0"])
    assert rc == 1
    assert "TFL3" in capsys.readouterr().err


def test_golden_failure_is_reported(
    tmp_path: Path,
    keys: Keys,
    capsys: pytest.CaptureFixture[str],
    int8_package: object,
) -> None:
    """A package whose golden outputs are wrong (signed, so only the smoke test can tell)."""
    from agent.release.manifest import EncodedArray
    from agent.release.package import Package, make_package

    assert isinstance(int8_package, Package)
    m = int8_package.manifest
    g = m.golden[0]
    wrong = g.model_copy(
        update={"outputs": [EncodedArray.from_numpy(1.0 - g.outputs[0].to_numpy())]}
    )
    bad = make_package(m.model_copy(update={"golden": [wrong]}), int8_package.model, keys.key)
    path = tmp_path / "bad-golden.eapkg"
    path.write_bytes(bad.to_bytes())
    rc = main(["verify-package", str(path), "--trusted-key", str(keys.public), "--golden"])
    assert rc == 1
    assert "FAIL golden" in capsys.readouterr().out
