"""Packages and announcements for the OTA tests, made with the converters' own code.

``build`` runs ``converters.packaging.package_model`` (golden samples measured on the model,
manifest, Ed25519 signature), so what the device checks is what the build host makes.
The ``tampered_*`` helpers make the bad packages an attacker or a broken build would.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np

from agent.release.manifest import EncodedArray, Manifest, PostprocessSpec, Targets
from agent.release.package import Package, make_package
from agent.release.signing import SigningKey, load_private_key, write_keypair
from converters.announce import make_announcement
from converters.dataset import Dataset
from converters.packaging import PackageSpec, package_model

MODEL = "m"


def keypair(directory: Path, name: str = "release") -> tuple[SigningKey, Path]:
    """A new signing key and the path of its public PEM (what devices trust)."""
    directory.mkdir(parents=True, exist_ok=True)
    priv, pub = directory / f"{name}.key", directory / f"{name}.pub"
    write_keypair(priv, pub)
    return load_private_key(priv), pub


def quiet_data(n: int = 3) -> Dataset:
    """Near-silent windows: golden samples a 'fragile' model still answers finitely."""
    x = np.random.default_rng(0).normal(0, 0.01, (n, 32, 3)).astype(np.float32)
    return Dataset("quiet", [x], None)


def build(
    content: bytes,
    version: str,
    key: SigningKey | None,
    *,
    data: Dataset | None = None,
    name: str = MODEL,
) -> Package:
    spec = PackageSpec(
        name=name, version=version, mode="float32", postprocess=PostprocessSpec(type="raw")
    )
    return package_model(spec, content, data=data, key=key)


def resign(manifest: Manifest, model: bytes, key: SigningKey | None) -> Package:
    return make_package(manifest, model, key)


def tampered_golden(pkg: Package, key: SigningKey) -> Package:
    """Correctly signed, but the expected outputs are not what the model gives."""
    golden = []
    for g in pkg.manifest.golden:
        outs = [EncodedArray.from_numpy(o.to_numpy() + 1.0) for o in g.outputs]
        golden.append(g.model_copy(update={"outputs": outs}))
    return resign(pkg.manifest.model_copy(update={"golden": golden}), pkg.model, key)


def announcement(
    pkg: Package,
    url: str,
    *,
    channel: str = "stable",
    targets: Targets | None = None,
    manifest: str | None = None,
    signature: str | bool | None = True,
    key_id: str | bool | None = True,
) -> bytes:
    """The retained announcement for ``pkg``; ``manifest``/``signature``/``key_id`` override."""
    ann = make_announcement(pkg, channel, url, None, targets or Targets())
    update: dict[str, object] = {}
    if manifest is not None:
        update["manifest"] = manifest
    if signature is not True:
        update["signature"] = signature or None
    if key_id is not True:
        update["key_id"] = key_id or None
    return ann.model_copy(update=update).to_bytes() if update else ann.to_bytes()


def tamper_manifest(pkg: Package, **changes: object) -> str:
    """The package's manifest JSON with fields changed (its signature no longer matches)."""
    obj = json.loads(pkg.manifest_bytes)
    obj.update(changes)
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")
