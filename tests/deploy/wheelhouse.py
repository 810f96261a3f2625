"""A wheelhouse for another machine, made here with pip's platform resolution.

    python -m tests.deploy.wheelhouse --machine aarch64 --python 3.11 --glibc 2.36 DIR [--tests]

Downloads wheels (never sdists) of the project's device dependencies for a manylinux machine
of that architecture, Python and glibc, plus setuptools to build the project offline and,
with ``--tests``, pytest and friends and the demo's broker (amqtt). A device or an image
build then installs offline: ``pip install --no-index --find-links DIR .``. Used by
scripts/test-arm64 and the container test (tests/deploy/test_container.py).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def requirements(machine: str, python: str, tests: bool = False) -> list[str]:
    """The project's device dependencies (and build/test tools), markers evaluated for the
    device: pip evaluates them for the machine it runs on, even with ``--platform``."""
    doc = tomllib.loads(PYPROJECT.read_text())
    lines = list(doc["project"]["dependencies"]) + list(doc["build-system"]["requires"])
    if tests:  # the suite's tools (not the linters) and the demo's pure-Python broker
        extras = doc["project"]["optional-dependencies"]
        lines += [r for r in extras["test"] if not r.startswith(("mypy", "ruff", "import-linter"))]
        lines += extras["demo"]
    env = {"platform_machine": machine, "python_version": python, "sys_platform": "linux"}
    out = []
    for line in lines:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate(env):
            req.marker = None
            out.append(str(req))
    return out


def platform_args(machine: str, glibc: str) -> list[str]:
    """pip's --platform options for a manylinux machine: every glibc up to its own."""
    minor = int(glibc.split(".")[1])
    args = ["--platform", f"manylinux2014_{machine}"]
    for g in range(17, minor + 1):
        args += ["--platform", f"manylinux_2_{g}_{machine}"]
    return args


def download(machine: str, python: str, glibc: str, dest: Path, tests: bool = False) -> None:
    """Fill ``dest`` (raises CalledProcessError naming pip's complaint when a wheel is missing)."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
        "--only-binary=:all:", *platform_args(machine, glibc), "--python-version", python,
        "--implementation", "cp", "-d", str(dest), *requirements(machine, python, tests),
    ]  # fmt: skip
    subprocess.run(cmd, check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--machine", required=True, help="aarch64 or x86_64")
    parser.add_argument("--python", required=True, help="the device's Python, e.g. 3.11")
    parser.add_argument("--glibc", required=True, help="the device's glibc, e.g. 2.36")
    parser.add_argument("--tests", action="store_true", help="add pytest and its plugins")
    parser.add_argument("dest", type=Path)
    args = parser.parse_args()
    download(args.machine, args.python, args.glibc, args.dest, args.tests)
    return 0


if __name__ == "__main__":
    sys.exit(main())
