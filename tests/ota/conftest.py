from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.release.signing import SigningKey
from tests.ota import pkgs
from tests.ota.httpserver import FileServer


@dataclass(frozen=True)
class Keys:
    release: SigningKey
    release_pub: Path
    other: SigningKey
    other_pub: Path


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    d = tmp_path_factory.mktemp("keys")
    release, release_pub = pkgs.keypair(d, "release")
    other, other_pub = pkgs.keypair(d, "other")
    return Keys(release, release_pub, other, other_pub)


@pytest.fixture
def http(tmp_path: Path) -> Iterator[FileServer]:
    root = tmp_path / "store"
    root.mkdir()
    with FileServer(root) as srv:
        yield srv
