"""The allocator settings of ``edge-agent run`` (agent.app.allocator)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from agent.app import allocator

GLIBC = (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_applied_on_glibc() -> None:
    # in a child: the settings are process-wide and stay for the rest of the process
    code = "from agent.app import allocator; print(allocator.tune({}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_the_operators_variables_win() -> None:
    env = {"MALLOC_ARENA_MAX": "4", "MALLOC_MMAP_THRESHOLD_": "65536"}
    assert allocator.tune(env) is False
