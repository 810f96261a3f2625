"""The package built here is accepted by the agent's loader and its golden samples reproduce."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from agent.config import parse_config
from agent.errors import ModelError
from agent.model.loading import load_active_model
from agent.model.runtime import load_model
from agent.release.package import Package, make_package, read_package
from tests.converters.conftest import Keys

pytestmark = pytest.mark.slow


def _config(pkg_path: Path, trusted: Path) -> dict[str, object]:
    return {
        "model": {"path": str(pkg_path), "name": "classifier"},
        "window": {"length": 32, "hop": 16},
        "ota": {"trusted_keys": [str(trusted)]},
    }


def test_loader_accepts_the_package(int8_package: Package, keys: Keys, tmp_path: Path) -> None:
    path = tmp_path / int8_package.filename
    path.write_bytes(int8_package.to_bytes())
    active = load_active_model(parse_config(_config(path, keys.public)))
    m = int8_package.manifest
    assert (active.name, active.version, active.labels) == (m.name, m.version, m.labels)
    assert [t.name for t in active.model.inputs] == [t.name for t in m.inputs]
    assert [t.shape for t in active.model.inputs] == [tuple(t.shape) for t in m.inputs]
    for spec, info in zip(m.inputs, active.model.inputs, strict=True):
        assert spec.dtype == info.dtype
        assert spec.quantization is not None
        assert (spec.quantization.scale, spec.quantization.zero_point) == (
            info.scale,
            info.zero_point,
        )


@pytest.mark.parametrize("reference_kernels", [False, True])
def test_golden_samples_reproduce_on_the_agent_runtime(
    int8_package: Package, reference_kernels: bool
) -> None:
    pkg = read_package(int8_package.to_bytes())
    model = load_model(pkg.model, reference_kernels=reference_kernels)
    assert len(pkg.manifest.golden) == 3
    for g in pkg.manifest.golden:
        outputs = model.run([x.to_numpy() for x in g.inputs])
        assert g.mismatches(outputs) == [], g.name


def test_loader_refuses_a_package_from_another_key(
    int8_package: Package, keys: Keys, other_keys: Keys, tmp_path: Path
) -> None:
    forged = make_package(int8_package.manifest, int8_package.model, other_keys.key)
    path = tmp_path / "forged.eapkg"
    path.write_bytes(forged.to_bytes())
    with pytest.raises(ModelError, match="unknown_key"):
        load_active_model(parse_config(_config(path, keys.public)))


def test_loader_checks_the_hash_even_without_trusted_keys(
    int8_package: Package, tmp_path: Path
) -> None:
    """No key to check a signature against: a model that is not the manifest's is still refused."""
    intact = make_package(int8_package.manifest, int8_package.model, None)
    tampered = bytearray(intact.model)
    tampered[len(tampered) // 2] ^= 0xFF
    path = tmp_path / intact.filename
    path.write_bytes(dataclasses.replace(intact, model=bytes(tampered)).to_bytes())
    cfg = parse_config({"model": {"path": str(path)}, "window": {"length": 32, "hop": 16}})
    with pytest.raises(ModelError, match="hash_mismatch"):
        load_active_model(cfg)
    path.write_bytes(intact.to_bytes())
    assert load_active_model(cfg).version == int8_package.manifest.version
