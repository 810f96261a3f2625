"""Shared fixtures: one small Keras classifier trained once per session, its data and keys."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.release.package import Package
from agent.release.signing import SigningKey, write_keypair
from converters.examples import CLASS_NAMES, SignalSet, signal_dataset, train_classifier


@dataclass(frozen=True)
class Trained:
    """A trained model and its files: calibration, validation (labelled) and held-out test."""

    model: Any
    keras_path: Path
    calibration: Path
    validation: Path
    test: Path
    train: SignalSet
    held_out: SignalSet
    labels: tuple[str, ...] = CLASS_NAMES


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    d = tmp_path_factory.mktemp("trained")
    train = signal_dataset(480, seed=1)
    val = signal_dataset(200, seed=2)
    held_out = signal_dataset(300, seed=3)
    model = train_classifier(train, epochs=12)
    keras_path = d / "classifier.keras"
    model.save(keras_path)
    np.savez(d / "calibration.npz", x=train.x[:128], y=train.y[:128])
    np.savez(d / "validation.npz", x=val.x, y=val.y)
    np.savez(d / "test.npz", x=held_out.x, y=held_out.y)
    return Trained(
        model,
        keras_path,
        d / "calibration.npz",
        d / "validation.npz",
        d / "test.npz",
        train,
        held_out,
    )


@dataclass(frozen=True)
class Keys:
    key: SigningKey
    private: Path
    public: Path


def _keys(d: Path, name: str) -> Keys:
    key = write_keypair(d / f"{name}.key", d / f"{name}.pub")
    return Keys(key, d / f"{name}.key", d / f"{name}.pub")


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return _keys(tmp_path_factory.mktemp("keys"), "release")


@pytest.fixture(scope="session")
def other_keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return _keys(tmp_path_factory.mktemp("other-keys"), "other")


@pytest.fixture(scope="session")
def int8_package(trained: Trained, keys: Keys) -> Package:
    """A signed int8 package of the trained model, built once."""
    from converters.build import build_package
    from converters.settings import BuildSettings

    settings = BuildSettings(
        name="classifier",
        version="1.0.0",
        mode="int8",
        calibration=trained.calibration,
        validation=trained.validation,
        labels=list(trained.labels),
        preprocess={"window": 32, "hop": 16, "channels": 3},  # type: ignore[arg-type]
        max_accuracy_drop=0.05,
    )
    return build_package(trained.keras_path, settings, key=keys.key).package


@pytest.fixture
def chdir_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(tmp_path)
    yield tmp_path
