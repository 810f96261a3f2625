"""converters.onnxenv: onnx2tf's own environment, made on demand and reused.

Offline here: a stand-in ``onnx2tf`` wheel (made by the test, with the same console script the
real one has) is installed from a find-links folder, so the environment is really made by
``python -m venv`` + pip and onnx2tf's command line really runs in it. One ``network`` test
checks that the pinned onnx2tf resolves on the real index as one consistent set.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.errors import ConversionError
from converters.onnxenv import ONNX2TF_VERSION, REQUIREMENTS, STAMP, OnnxEnv, default_root
from tests.wheelmaker import build_wheel

# onnx2tf's command line as edge-convert calls it: -i ONNX -o OUT_DIR -n; writes saved_model.pb.
FAKE_ONNX2TF = """
import sys
from pathlib import Path


def main() -> None:
    args = sys.argv[1:]
    src, out = Path(args[args.index("-i") + 1]), Path(args[args.index("-o") + 1])
    assert "-n" in args
    if src.read_bytes() == b"bad":
        print("onnx2tf: unsupported op Foo", file=sys.stderr)
        sys.exit(1)
    out.mkdir(parents=True)
    (out / "saved_model.pb").write_bytes(b"from " + src.read_bytes())
    (out / "python.txt").write_text(sys.prefix)
"""


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, ...]:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    build_wheel(
        wheels, "onnx2tf", "0.0.1", {"onnx2tf.py": FAKE_ONNX2TF}, {"onnx2tf": "onnx2tf:main"}
    )
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    return ("onnx2tf==0.0.1",)


@pytest.mark.slow
def test_environment_is_made_once_and_runs_onnx2tf_in_it(
    tmp_path: Path, offline: tuple[str, ...]
) -> None:
    env = OnnxEnv(tmp_path / "env", requirements=offline)
    assert not env.ready()
    (tmp_path / "m.onnx").write_bytes(b"model")
    out = env.to_saved_model(tmp_path / "m.onnx", tmp_path / "sm")
    assert (out / "saved_model.pb").read_bytes() == b"from model"
    # onnx2tf ran with the environment's interpreter, not this one
    assert Path((out / "python.txt").read_text()) == env.root
    assert env.ready()
    assert (env.root / STAMP).read_text().strip() == env.key

    # Made once: a second conversion reuses it (nothing is reinstalled).
    mtime = env.python.stat().st_mtime_ns
    env.to_saved_model(tmp_path / "m.onnx", tmp_path / "sm2")
    assert env.python.stat().st_mtime_ns == mtime

    # A failing conversion names onnx2tf's complaint.
    (tmp_path / "bad.onnx").write_bytes(b"bad")
    with pytest.raises(ConversionError, match="unsupported op Foo"):
        env.to_saved_model(tmp_path / "bad.onnx", tmp_path / "sm3")


@pytest.mark.slow
def test_interrupted_or_outdated_environment_is_made_again(
    tmp_path: Path, offline: tuple[str, ...]
) -> None:
    env = OnnxEnv(tmp_path / "env", requirements=offline)
    env.ensure()
    (env.root / STAMP).unlink()  # as if pip was killed before the stamp
    assert not env.ready()
    env.ensure()
    assert env.ready()
    newer = OnnxEnv(tmp_path / "env", requirements=(*offline, "onnx2tf-extra"))
    assert not newer.ready()  # other requirements: not this environment
    with pytest.raises(ConversionError, match="could not install"):
        newer.ensure()  # onnx2tf-extra is in no wheelhouse


def test_where_the_environment_lives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGE_CONVERT_ONNX_ENV", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_root() == tmp_path / "edge-agent" / f"onnx2tf-{ONNX2TF_VERSION}"
    monkeypatch.setenv("EDGE_CONVERT_ONNX_ENV", str(tmp_path / "x"))
    assert default_root() == tmp_path / "x"


@pytest.mark.network
def test_pinned_onnx2tf_resolves_as_one_set_without_touching_this_venv(tmp_path: Path) -> None:
    """The real onnx2tf at the pinned version resolves (from wheels) for this Python; its set
    holds the full tensorflow and NumPy 1.x, which is why it lives apart from `convert`."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
         "--only-binary=:all:", "--target", str(tmp_path / "t"), *REQUIREMENTS],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    would = next(line for line in out.stdout.splitlines() if line.startswith("Would install"))
    assert f"onnx2tf-{ONNX2TF_VERSION}" in would
    assert "tensorflow-" in would
