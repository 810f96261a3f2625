"""Store keys: where files live in an artifact store (local folder, HTTP or S3)."""

from __future__ import annotations

import re

from agent.errors import ConversionError

_KEY_PART = re.compile(r"^[A-Za-z0-9_.+-]{1,128}$")


def check_key(key: str) -> str:
    """Keys are '/'-joined parts of safe characters; no '..', no absolute paths."""
    parts = key.split("/")
    if not parts or any(not _KEY_PART.match(p) or p in {".", ".."} for p in parts):
        raise ConversionError(f"invalid store key {key!r}")
    return key
