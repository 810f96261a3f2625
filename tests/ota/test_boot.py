"""Start-up: resume or roll back an interrupted update, then load the installed version."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.config import Config, parse_config
from agent.ota import startup_model
from agent.ota.state import Record, State, StateMachine
from agent.ota.store import ModelStore
from agent.release.package import Package
from tests.ota import models, pkgs
from tests.ota.conftest import Keys

pytestmark = pytest.mark.slow  # converts small TensorFlow models (once per session)


def config(tmp_path: Path, keys: Keys, **ota: Any) -> Config:
    return parse_config(
        {
            "agent": {"device_id": "dev-1", "state_dir": str(tmp_path / "state")},
            "model": {"name": "m", "version": "1.0.0"},
            "postprocess": {"type": "raw"},
            "ota": {"enabled": True, "trusted_keys": [str(keys.release_pub)], **ota},
        }
    )


def install(cfg: Config, pkg: Package) -> None:
    store = ModelStore(cfg.agent.state_dir)
    sig = pkg.signature.to_bytes() if pkg.signature else None
    store.stage(pkg.manifest, pkg.manifest_bytes, sig, pkg.model)
    store.activate(pkg.manifest.version)


def set_state(cfg: Config, pkg: Package, state: State, **fields: Any) -> None:
    path = cfg.agent.state_dir / "ota" / "state.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    rec = Record(
        state=state,
        version=pkg.manifest.version,
        sha256=pkg.manifest.artifact.sha256,
        transitions=4,
        **fields,
    )
    path.write_text(json.dumps(rec.to_json()))


def state(cfg: Config) -> Record:
    return StateMachine(cfg.agent.state_dir / "ota" / "state.json").record


@pytest.fixture(scope="module")
def v2(keys: Keys) -> Package:
    return pkgs.build(models.dense(2), "2.0.0", keys.release)


@pytest.fixture(scope="module")
def v3(keys: Keys) -> Package:
    return pkgs.build(models.dense(3), "3.0.0", keys.release)


def test_nothing_installed_means_the_configured_model(tmp_path: Path, keys: Keys) -> None:
    assert startup_model(config(tmp_path, keys)) is None


def test_ota_disabled_ignores_the_store(tmp_path: Path, keys: Keys, v2: Package) -> None:
    cfg = config(tmp_path, keys)
    install(cfg, v2)
    assert (
        startup_model(cfg.model_copy(update={"ota": cfg.ota.model_copy(update={"enabled": False})}))
        is None
    )


def test_the_installed_version_is_loaded(tmp_path: Path, keys: Keys, v2: Package) -> None:
    cfg = config(tmp_path, keys)
    install(cfg, v2)
    active = startup_model(cfg)
    assert active is not None
    assert (active.name, active.version) == ("m", "2.0.0")
    assert active.sha256 == v2.manifest.artifact.sha256 == active.model.sha256


@pytest.mark.parametrize("killed_in", [State.DOWNLOADING, State.VERIFYING, State.STAGED])
def test_a_kill_before_the_swap_goes_back_to_idle(
    tmp_path: Path, keys: Keys, v2: Package, killed_in: State
) -> None:
    cfg = config(tmp_path, keys)
    set_state(cfg, v2, killed_in)
    assert startup_model(cfg) is None
    rec = state(cfg)
    assert (rec.state, rec.reason) == (State.IDLE, "interrupted")


def test_a_kill_in_activating_after_the_swap_is_a_trial_start(
    tmp_path: Path, keys: Keys, v2: Package
) -> None:
    cfg = config(tmp_path, keys)
    install(cfg, v2)
    set_state(cfg, v2, State.ACTIVATING)
    active = startup_model(cfg)
    assert active is not None and active.version == "2.0.0"
    rec = state(cfg)
    assert (rec.state, rec.boots) == (State.TRIAL, 1)


def test_a_kill_in_activating_before_the_swap_is_idle(
    tmp_path: Path, keys: Keys, v2: Package
) -> None:
    cfg = config(tmp_path, keys)
    ModelStore(cfg.agent.state_dir).stage(v2.manifest, v2.manifest_bytes, None, v2.model)
    set_state(cfg, v2, State.ACTIVATING)
    assert startup_model(cfg) is None
    assert state(cfg).state is State.IDLE


def test_crashing_starts_in_the_trial_roll_back(
    tmp_path: Path, keys: Keys, v2: Package, v3: Package
) -> None:
    cfg = config(tmp_path, keys, max_boot_failures=3)
    install(cfg, v2)
    install(cfg, v3)
    set_state(cfg, v3, State.TRIAL)
    import agent.ota.boot as boot

    for n in (1, 2):
        boot._RECOVERED.clear()  # a new process each time
        active = startup_model(cfg)
        assert active is not None and active.version == "3.0.0"
        assert (state(cfg).state, state(cfg).boots) == (State.TRIAL, n)
    boot._RECOVERED.clear()
    active = startup_model(cfg)
    assert active is not None and active.version == "2.0.0"
    rec = state(cfg)
    assert (rec.state, rec.reason, rec.version) == (State.ROLLED_BACK, "boot_failures", "3.0.0")
    store = ModelStore(cfg.agent.state_dir)
    assert store.current() == "2.0.0"
    assert store.bad_reason("3.0.0", v3.manifest.artifact.sha256) == "boot_failures"


def test_a_rebuild_in_the_same_process_is_not_a_start(
    tmp_path: Path, keys: Keys, v2: Package
) -> None:
    cfg = config(tmp_path, keys, max_boot_failures=2)
    install(cfg, v2)
    set_state(cfg, v2, State.TRIAL)
    for _ in range(3):  # SIGHUP rebuilds
        assert startup_model(cfg) is not None
    assert (state(cfg).state, state(cfg).boots) == (State.TRIAL, 1)


def test_a_corrupt_installed_copy_falls_back_to_previous(
    tmp_path: Path, keys: Keys, v2: Package, v3: Package
) -> None:
    cfg = config(tmp_path, keys)
    install(cfg, v2)
    install(cfg, v3)
    set_state(cfg, v3, State.ACTIVE)
    model = cfg.agent.state_dir / "models" / "3.0.0" / "model.tflite"
    model.write_bytes(model.read_bytes()[:-1] + b"\x00")
    active = startup_model(cfg)
    assert active is not None and active.version == "2.0.0"
    rec = state(cfg)
    assert (rec.state, rec.reason) == (State.ROLLED_BACK, "corrupt_install")


def test_an_installed_version_no_longer_trusted_is_not_run(
    tmp_path: Path, keys: Keys, v2: Package
) -> None:
    cfg = config(tmp_path, keys)
    install(cfg, v2)
    rotated = cfg.model_copy(
        update={"ota": cfg.ota.model_copy(update={"trusted_keys": [keys.other_pub]})}
    )
    assert startup_model(rotated) is None
    assert state(cfg).reason == "unknown_key"
