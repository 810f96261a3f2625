"""install.sh's interpreter choice, proved with pip's platform resolution on the real index.

``install.sh --explain-python --as MACHINE,PYTHON,GLIBC`` runs the same probe a device runs
(``pip install --dry-run --only-binary=:all:`` of every device dependency), with pip's
``--platform``/``--python-version`` standing for the device. One install.sh call decides every
case below: a handful of dry-run resolutions against PyPI (marker ``network``: CI reaches it).

The cases are the machines people run the agent on: Raspberry Pi OS 12 (bookworm: Python 3.11,
glibc 2.36) and 13 (trixie: Python 3.13, glibc 2.41) on aarch64, the same Debian releases on
x86_64, Python 3.12 (Ubuntu 24.04), and an older aarch64 userland (glibc 2.26, below the
manylinux_2_27 wheels of the 2.x runtimes), where only the managed CPython 3.12 has a runtime.
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]

CASES = [
    # machine, python, glibc, expected choice
    ("x86_64", "3.11", "2.36", "system"),
    ("x86_64", "3.12", "2.36", "system"),
    ("x86_64", "3.13", "2.41", "system"),
    ("aarch64", "3.11", "2.36", "system"),  # Raspberry Pi OS 12
    ("aarch64", "3.12", "2.36", "system"),
    ("aarch64", "3.13", "2.41", "system"),  # Raspberry Pi OS 13
    ("aarch64", "3.13", "2.26", "managed"),  # no runtime wheel for 3.13 there: CPython 3.12
]


def runtime_requirement(machine: str) -> Requirement:
    """The pinned ai-edge-litert range pyproject.toml gives this machine."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    env = {"platform_machine": machine, "python_version": "3.12", "sys_platform": "linux"}
    for line in deps:
        req = Requirement(line)
        if req.name == "ai-edge-litert" and (req.marker is None or req.marker.evaluate(env)):
            return req
    raise AssertionError(f"pyproject.toml pins no ai-edge-litert for {machine}")


@pytest.fixture(scope="module")
def choices() -> dict[tuple[str, str, str], tuple[str, str, str]]:
    args = []
    for machine, python, glibc, _ in CASES:
        args += ["--as", f"{machine},{python},{glibc}"]
    out = subprocess.run(
        ["/bin/sh", str(ROOT / "deploy/install.sh"), "--explain-python", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    found = {}
    lines = out.stdout.splitlines()
    for i, line in enumerate(lines):
        m = re.fullmatch(r"choice=(\w+) machine=(\S+) python=(\S+) glibc=(\S+) runtime=(\S+)", line)
        if m:
            why = lines[i + 1].strip() if i + 1 < len(lines) else ""
            found[(m[2], m[3], m[4])] = (m[1], m[5], why)
    assert len(found) == len(CASES), out.stdout
    return found


@pytest.mark.network
@pytest.mark.parametrize(("machine", "python", "glibc", "expected"), CASES)
def test_install_sh_picks_an_interpreter_with_runtime_wheels(
    choices: dict[tuple[str, str, str], tuple[str, str, str]],
    machine: str,
    python: str,
    glibc: str,
    expected: str,
) -> None:
    choice, runtime, why = choices[(machine, python, glibc)]
    assert choice == expected, f"{machine} Python {python} glibc {glibc}: {choice} ({why})"
    # The runtime pip picked (for the system Python, or for the managed 3.12) is in the range
    # pyproject.toml pins for that machine: the pin itself resolves there.
    req = runtime_requirement(machine)
    assert runtime != "-", why
    assert Version(runtime) in req.specifier, f"{runtime} not in {req}"
    if expected == "managed":
        assert f"Python {python}: " in why and "No matching distribution" in why, why
        assert "CPython 3.12 has them" in why


@pytest.mark.network
def test_pinned_runtime_resolves_on_aarch64_for_3_11_and_3_12(
    choices: dict[tuple[str, str, str], tuple[str, str, str]],
) -> None:
    """What a Raspberry Pi OS 12 device and the managed interpreter get: a runtime, from the
    pinned range, for Python 3.11 and 3.12."""
    for python in ("3.11", "3.12"):
        choice, runtime, why = choices[("aarch64", python, "2.36")]
        assert choice == "system", why
        assert Version(runtime) in runtime_requirement("aarch64").specifier
