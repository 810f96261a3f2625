"""Packages of the built-in demo model (input (1, 32, 3) int8, 2 classes) for the tests of
"the manifest decides": made with the converters' own packaging code, unsigned unless a key
is given."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.model.loading import demo_model_bytes
from agent.release.manifest import PostprocessSpec, PreprocessSpec
from agent.release.package import Package, write_package
from agent.release.signing import SigningKey
from converters.packaging import PackageSpec, package_model

STANDARD = PreprocessSpec(
    window=32, hop=16, channels=3, normalize="standard", mean=[1.0, 2.0, 3.0], std=[2.0, 4.0, 8.0]
)


def demo_package(
    version: str = "1.4.0",
    *,
    name: str = "vibration",
    preprocess: PreprocessSpec | None = STANDARD,
    labels: tuple[str, ...] = ("normal", "anomaly"),
    key: SigningKey | None = None,
    **spec: Any,
) -> Package:
    return package_model(
        PackageSpec(
            name=name,
            version=version,
            mode="int8",
            labels=labels,
            preprocess=preprocess,
            postprocess=spec.pop("postprocess", PostprocessSpec(type="classification")),
            **spec,
        ),
        demo_model_bytes(),
        key=key,
    )


def write_demo_package(directory: Path, version: str = "1.4.0", **kw: Any) -> Path:
    pkg = demo_package(version, **kw)
    path = directory / pkg.filename
    write_package(path, pkg)
    return path
