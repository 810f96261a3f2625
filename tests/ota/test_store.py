"""Model versions on disk: complete-or-absent staging, atomic symlink swaps, pruning, bad marks."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from agent.errors import UpdateError
from agent.ota.files import atomic_symlink
from agent.ota.store import ModelStore
from agent.release.manifest import Artifact, Manifest
from tests.ota.test_decide import manifest as base_manifest


def version(store: ModelStore, v: str, content: bytes | None = None) -> Manifest:
    content = content if content is not None else f"model {v}".encode()
    m = base_manifest(
        v, artifact=Artifact(sha256=hashlib.sha256(content).hexdigest(), size=len(content))
    )
    store.stage(m, m.to_bytes(), None, content)
    return m


def test_stage_writes_a_complete_version(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    m = version(store, "1.0.0")
    inst = store.read("1.0.0")
    assert inst.model == b"model 1.0.0" and inst.manifest == m and inst.signature is None
    assert store.has("1.0.0", m.artifact.sha256)
    assert not store.has("1.0.0", "00" * 32)
    assert store.versions() == ["1.0.0"]
    assert [p.name for p in tmp_path.joinpath("models").iterdir()] == ["1.0.0"]


def test_a_tampered_copy_is_noticed(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    version(store, "1.0.0")
    (store.path("1.0.0") / "model.tflite").write_bytes(b"model 1.0.X")
    with pytest.raises(UpdateError) as err:
        store.read("1.0.0")
    assert err.value.reason == "corrupt_install"


def test_a_half_written_stage_is_invisible_and_cleaned(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    version(store, "1.0.0")
    junk = store.root / ".staging-2.0.0-abcd"
    junk.mkdir()
    (junk / "model.tflite").write_bytes(b"half")
    assert store.versions() == ["1.0.0"]
    store.clean_staging()
    assert not junk.exists()


def test_activate_and_roll_back(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    for v in ("1.0.0", "1.1.0", "2.0.0"):
        version(store, v)
    assert store.current() is None
    store.activate("1.0.0")
    assert (store.current(), store.previous()) == ("1.0.0", None)
    store.activate("1.1.0")
    assert (store.current(), store.previous()) == ("1.1.0", "1.0.0")
    store.activate("2.0.0")
    assert (store.current(), store.previous()) == ("2.0.0", "1.1.0")
    assert os.readlink(store.root / "current") == "2.0.0"  # relative: the state dir can move
    assert store.rollback() == "1.1.0"
    assert (store.current(), store.previous()) == ("1.1.0", None)
    assert store.rollback() is None  # back to the configured model
    assert store.current() is None


def test_symlink_swaps_are_atomic_for_readers(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    version(store, "1.0.0")
    version(store, "2.0.0")
    store.activate("1.0.0")
    link = store.root / "current"
    seen: set[str] = set()
    broken: list[BaseException] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            try:
                seen.add((link / "model.tflite").read_bytes().decode())
            except OSError as exc:
                broken.append(exc)

    t = threading.Thread(target=reader)
    t.start()
    for i in range(300):
        atomic_symlink(link, "2.0.0" if i % 2 == 0 else "1.0.0")
    done.set()
    t.join()
    assert broken == []
    assert seen <= {"model 1.0.0", "model 2.0.0"}


def test_prune_keeps_the_newest_and_never_current_or_previous(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    for v in ("0.1.0", "0.2.0", "1.0.0", "1.1.0", "2.0.0", "2.1.0"):
        version(store, v)
    store.activate("0.1.0")
    store.activate("0.2.0")  # current 0.2.0, previous 0.1.0: older than the rest
    removed = store.prune(keep=3)
    assert sorted(store.versions()) == ["0.1.0", "0.2.0", "2.1.0"]
    assert sorted(removed) == ["1.0.0", "1.1.0", "2.0.0"]


def test_bad_marks_outlive_pruning(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    m = version(store, "1.0.0")
    store.mark_bad("1.0.0", m.artifact.sha256, "non_finite")
    store.prune(keep=0)
    assert store.versions() == []
    assert ModelStore(tmp_path).bad_reason("1.0.0", m.artifact.sha256) == "non_finite"
    assert store.bad_reason("1.0.0", "00" * 32) is None


def test_restaging_a_version_with_other_bytes_replaces_it(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    version(store, "1.0.0", b"first")
    m = version(store, "1.0.0", b"second")
    assert store.read("1.0.0").model == b"second"
    assert store.has("1.0.0", m.artifact.sha256)
    assert store.versions() == ["1.0.0"]
