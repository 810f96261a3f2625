"""The terminal rules every command line follows, and --version on every command line."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

import agent
from agent.terminal import CLEAR_SCREEN, console, is_terminal, paint, use_color

REPO = Path(__file__).resolve().parents[2]


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_control_codes_only_to_a_terminal() -> None:
    tty, pipe = _Tty(), io.StringIO()
    assert is_terminal(tty, {"TERM": "xterm"}) and not is_terminal(pipe, {"TERM": "xterm"})
    assert not is_terminal(tty, {"TERM": "dumb"})
    assert use_color(tty, {}) and not use_color(pipe, {})
    assert not use_color(tty, {"NO_COLOR": "1"})  # no-color.org: any non-empty value
    assert use_color(tty, {"NO_COLOR": ""})
    assert use_color(pipe, {"FORCE_COLOR": "1"}) and not use_color(
        pipe, {"FORCE_COLOR": "1", "NO_COLOR": "1"}
    )
    assert paint("ok", "green", tty, {}) == "\033[32mok\033[0m"
    assert paint("ok", "green", tty, {"NO_COLOR": "1"}) == "ok"
    assert paint("ok", "green", pipe, {}) == "ok"
    assert CLEAR_SCREEN.startswith("\033[")


def test_console_is_a_copy_of_fd2() -> None:
    c = console()
    assert c is console()  # made once
    if c is not sys.stderr:
        assert os.path.sameopenfile(c.fileno(), 2) and c.fileno() != 2


@pytest.mark.parametrize(
    ("module", "prog"),
    [
        ("agent", "edge-agent"),
        ("agent.fleet.cli", "edge-fleet"),
        ("converters.cli", "edge-convert"),
    ],
)
def test_every_cli_has_version(module: str, prog: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", module, "--version"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{prog} {agent.__version__}"
