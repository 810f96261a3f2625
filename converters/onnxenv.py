"""onnx2tf in an environment of its own, made when an ONNX model first needs it.

onnx2tf pins every dependency exactly (``tensorflow==2.19.0``, ``numpy==1.26.4``,
``ai-edge-litert==2.1.0``, ...). Installed into the converter's venv it downgrades
tensorflow-cpu, NumPy and LiteRT there and adds the full GPU ``tensorflow`` wheel. So it never
goes there: ``OnnxEnv.ensure`` makes a separate venv holding exactly ``REQUIREMENTS`` (onnx2tf at
one version, with the set it pins), and ``OnnxEnv.to_saved_model`` runs onnx2tf's command line
in it. What crosses over is a SavedModel directory, which the converter's own TensorFlow loads.

Where it lives: ``$EDGE_CONVERT_ONNX_ENV``, else ``$XDG_CACHE_HOME/edge-agent/onnx2tf-<version>``
(``~/.cache/...``). It is made once (a few minutes and ~2.5 GB: TensorFlow), with the Python
running edge-convert (``$EDGE_CONVERT_ONNX_PYTHON`` overrides), and pip's usual settings
(mirrors, ``PIP_FIND_LINKS``). A stamp written last records what was installed: an interrupted
or outdated environment is made again. ``edge-convert onnx-env`` makes it ahead of time.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from agent.errors import ConversionError

log = logging.getLogger(__name__)

ONNX2TF_VERSION = "1.29.24"
REQUIREMENTS = (f"onnx2tf=={ONNX2TF_VERSION}",)
"""What the environment holds; onnx2tf's own exact pins make the rest one consistent set."""

STAMP = ".edge-convert-onnxenv"
INSTALL_TIMEOUT_S = 3600.0
CONVERT_TIMEOUT_S = 3600.0


def default_root() -> Path:
    """``$EDGE_CONVERT_ONNX_ENV``, else the per-user cache directory."""
    explicit = os.environ.get("EDGE_CONVERT_ONNX_ENV")
    if explicit:
        return Path(explicit)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "edge-agent" / f"onnx2tf-{ONNX2TF_VERSION}"


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


@dataclass(frozen=True)
class OnnxEnv:
    """The onnx2tf environment at ``root`` (a venv)."""

    root: Path
    requirements: tuple[str, ...] = REQUIREMENTS

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def key(self) -> str:
        """What a ready environment's stamp says: its requirements, hashed."""
        return hashlib.sha256("\n".join(self.requirements).encode()).hexdigest()

    def ready(self) -> bool:
        stamp = self.root / STAMP
        return self.python.exists() and stamp.exists() and stamp.read_text().strip() == self.key

    def ensure(self, python: str | None = None) -> None:
        """Make the environment unless it is ready. Raises ConversionError naming what failed."""
        if self.ready():
            return
        python = python or os.environ.get("EDGE_CONVERT_ONNX_PYTHON") or sys.executable
        log.info("making the onnx2tf environment in %s (once; it holds TensorFlow)", self.root)
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.parent.mkdir(parents=True, exist_ok=True)
        self._run([python, "-m", "venv", str(self.root)], "could not make the venv")
        self._run(
            [str(self.python), "-m", "pip", "install", "--disable-pip-version-check",
             *self.requirements],
            f"could not install {' '.join(self.requirements)}",
        )  # fmt: skip
        tmp = self.root / f"{STAMP}.tmp"
        tmp.write_text(self.key + "\n")
        tmp.replace(self.root / STAMP)

    def _run(self, argv: list[str], what: str) -> None:
        try:
            out = subprocess.run(
                argv, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ConversionError(f"onnx2tf environment {self.root}: {what}: {exc}") from exc
        if out.returncode != 0:
            raise ConversionError(
                f"onnx2tf environment {self.root}: {what}:\n{_tail(out.stdout + out.stderr)}"
            )

    def to_saved_model(self, onnx_file: Path, out_dir: Path) -> Path:
        """Run onnx2tf on ``onnx_file``; the SavedModel goes to ``out_dir`` (returned)."""
        self.ensure()
        argv = [str(self.root / "bin" / "onnx2tf"), "-i", str(onnx_file), "-o", str(out_dir)]
        argv.append("-n")  # non-verbose
        try:
            out = subprocess.run(
                argv, capture_output=True, text=True, timeout=CONVERT_TIMEOUT_S, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ConversionError(f"onnx2tf could not convert {onnx_file}: {exc}") from exc
        if out.returncode != 0 or not (out_dir / "saved_model.pb").exists():
            raise ConversionError(
                f"onnx2tf could not convert {onnx_file} (exit {out.returncode}):\n"
                f"{_tail(out.stdout + out.stderr)}"
            )
        return out_dir
