"""Tiny wheels made by tests, for offline installs (PIP_NO_INDEX + a find-links folder)."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path


def build_wheel(
    directory: Path,
    name: str,
    version: str,
    modules: Mapping[str, str],
    console_scripts: Mapping[str, str] | None = None,
    requires: Sequence[str] = (),
) -> Path:
    """A pure-Python wheel of ``modules`` (path in the wheel -> source), with console scripts
    (name -> ``module:function``) and ``Requires-Dist`` lines."""
    base = name.replace("-", "_")
    dist = f"{base}-{version}.dist-info"
    files = dict(modules)
    files[f"{dist}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + (
        "".join(f"Requires-Dist: {r}\n" for r in requires)
    )
    files[f"{dist}/WHEEL"] = (
        "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    if console_scripts:
        files[f"{dist}/entry_points.txt"] = "[console_scripts]\n" + "".join(
            f"{k} = {v}\n" for k, v in console_scripts.items()
        )
    record = []
    for member, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{member},sha256={digest.decode()},{len(text.encode())}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = "\n".join(record) + "\n"
    path = directory / f"{base}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for member, text in files.items():
            zf.writestr(member, text)
    return path
