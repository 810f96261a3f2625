"""``edge-convert`` as a user sees it: on a terminal a line while TensorFlow imports, a bar
with counts and an ETA over calibration and verification, and nothing of TensorFlow's own
stderr on it; into a pipe plain log lines without a single control code."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from tests.converters.conftest import Trained

REPO = Path(__file__).resolve().parents[2]
_TF_NATIVE = re.compile(r"tensorflow/|^[IWEF]\d{4} |oneDNN|cuda|XNNPACK", re.MULTILINE)


def _convert_args(trained: Trained, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "converters.cli",
        "convert",
        str(trained.keras_path),
        "--mode",
        "int8",
        "--calibration",
        str(trained.calibration),
        "--samples",
        "64",
        "-o",
        str(out),
    ]


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TERM": "xterm", "COLUMNS": "120"}
    env.pop("NO_COLOR", None)
    return env


@pytest.mark.slow
def test_progress_on_a_terminal(trained: Trained, tmp_path: Path) -> None:
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a real size
    proc = subprocess.Popen(
        _convert_args(trained, tmp_path / "m.tflite"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=child,
        env=_env(),
        cwd=tmp_path,
    )
    os.close(child)
    chunks = []
    while True:
        try:
            data = os.read(main, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(main)
    assert proc.wait(timeout=300) == 0, b"".join(chunks).decode(errors="replace")
    text = b"".join(chunks).decode("utf-8", "replace")
    assert "importing TensorFlow" in text
    # tqdm's line: "<label>: 100%|####| 64/64 [00:01<00:00, 50.1sample/s]"
    cal = [s for s in re.split(r"[\r\n]", text) if "calibrating" in s]
    assert any(re.search(r"64/64 \[[\d:]+<[\d:]+, +[\d.]+ ?sample/s\]", s) for s in cal), cal
    ver = [s for s in re.split(r"[\r\n]", text) if re.search(r"\d+/\d+ \[", s)]
    assert any("calibrating" not in s for s in ver), "no bar over the verification runs"
    assert not _TF_NATIVE.search(text), _TF_NATIVE.search(text)
    assert (tmp_path / "m.tflite").stat().st_size > 0


@pytest.mark.slow
def test_progress_into_a_pipe(trained: Trained, tmp_path: Path) -> None:
    proc = subprocess.run(
        _convert_args(trained, tmp_path / "m.tflite"),
        capture_output=True,
        env=_env(),
        cwd=tmp_path,
        timeout=300,
        check=False,
    )
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 0, err
    assert "\r" not in err and "\x1b" not in err, "control codes written into a pipe"
    assert "importing TensorFlow: started" in err
    assert "calibrating: started (64 items)" in err and "calibrating: done in" in err
    assert not _TF_NATIVE.search(err), _TF_NATIVE.search(err)
