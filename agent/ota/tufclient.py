"""The daemon's side of TUF: the trusted root, the child process, and what it vouched for.

With ``ota.tuf_url`` set the channel's metadata is TUF's (docs/ota.md): an MQTT announcement
is only a hint to refresh now (nothing in it is trusted), and the agent also refreshes every
``ota.tuf_refresh_s``. Each refresh runs ``agent.ota.tufcheck`` in a child process (``python -m
agent.ota.tufcheck``): the daemon never imports ``tuf`` (its RSS and start-up stay as they
were), and untrusted metadata is parsed in a process that exits afterwards.

The first trusted root comes with the install (``ota.tuf_root``: a ``root.json`` file), or is
pinned by hash (``ota.tuf_root_sha256``: ``1.root.json`` is fetched from ``tuf_url`` and must
have that sha256). It is copied once into ``<state_dir>/ota/tuf/root.json``; from then on the
root only changes by TUF's rotation (each new root signed by the old root's threshold).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config import Config
from agent.errors import UpdateError
from agent.ota.download import stream_url
from agent.ota.files import atomic_write
from agent.release.manifest import Targets

log = logging.getLogger(__name__)

MAX_ROOT_BYTES = 1024 * 1024
CHILD_GRACE_S = 30.0


@dataclass(frozen=True)
class TufTarget:
    """A package the TUF metadata vouches for (length and sha256 are TUF-verified)."""

    path: str
    url: str
    length: int
    sha256: str
    version: str
    channel: str
    targets: Targets
    """Who it is for and whether it runs as a shadow: the signed custom metadata's."""


@dataclass(frozen=True)
class TufResult:
    """The outcome of a TUF refresh: the target (None: none for us), expiry and root version."""

    target: TufTarget | None
    expires: float
    """When the trusted timestamp expires (epoch seconds)."""
    root_version: int
    signed_at: float | None = None
    """When the trusted timestamp was signed (a lower bound on the time), if it says."""


def metadata_dir(state_dir: Path) -> Path:
    """Where the trusted TUF metadata lives under ``state_dir``."""
    return state_dir / "ota" / "tuf"


def targets_url(cfg: Config) -> str:
    """The base URL of the TUF targets (``ota.tuf_targets_url``, else next to the metadata)."""
    ota = cfg.ota
    assert ota.tuf_url is not None
    return ota.tuf_targets_url or ota.tuf_url.rstrip("/").rsplit("/", 1)[0]


def ensure_root(cfg: Config, mdir: Path, timeout_s: float = 60.0) -> None:
    """Put the first trusted root in place (see the module doc); ``UpdateError`` if it cannot."""
    trusted = mdir / "root.json"
    if trusted.exists():
        return
    ota = cfg.ota
    if ota.tuf_root is not None:
        try:
            data = ota.tuf_root.read_bytes()
        except OSError as exc:
            raise UpdateError("no_trusted_root", f"cannot read ota.tuf_root: {exc}") from exc
    else:
        assert ota.tuf_url is not None and ota.tuf_root_sha256 is not None
        url = ota.tuf_url.rstrip("/") + "/1.root.json"
        chunks, n = [], 0
        for chunk in stream_url(url, deadline=time.monotonic() + timeout_s):
            n += len(chunk)
            if n > MAX_ROOT_BYTES:
                raise UpdateError("no_trusted_root", f"{url} is over {MAX_ROOT_BYTES} bytes")
            chunks.append(chunk)
        data = b"".join(chunks)
        got = hashlib.sha256(data).hexdigest()
        if got != ota.tuf_root_sha256.lower():
            raise UpdateError(
                "no_trusted_root",
                f"{url} has sha256 {got}, ota.tuf_root_sha256 pins {ota.tuf_root_sha256}",
            )
    atomic_write(trusted, data)
    log.info("TUF: first trusted root installed in %s", trusted)


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def refresh(cfg: Config, channel: str, bundle: Path | None = None) -> TufResult:
    """Run the TUF check in a child process; ``UpdateError`` with TUF's refusal reason."""
    ota = cfg.ota
    mdir = metadata_dir(cfg.agent.state_dir)
    ensure_root(cfg, mdir)
    req: dict[str, Any] = {
        "metadata_dir": str(mdir),
        "metadata_url": ota.tuf_url,
        "targets_url": targets_url(cfg) if ota.tuf_url else None,
        "bundle": str(bundle) if bundle is not None else None,
        "timeout_s": ota.download_timeout_s,
        "bandwidth_bps": ota.bandwidth_limit_kbps * 1024 if ota.bandwidth_limit_kbps else None,
        "model": cfg.model.name,
        "channel": channel,
        "device": cfg.agent.device_id,
        "groups": list(cfg.agent.groups),
    }
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "agent.ota.tufcheck"],
            input=json.dumps(req).encode(),
            capture_output=True,
            timeout=ota.download_timeout_s + CHILD_GRACE_S,
            env=_child_env(),
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise UpdateError("metadata_timeout", "the TUF check did not finish in time") from exc
    except OSError as exc:
        raise UpdateError("metadata_rejected", f"cannot run the TUF check: {exc}") from exc
    try:
        ans = json.loads(proc.stdout)
    except ValueError:
        tail = proc.stderr.decode(errors="replace")[-2000:]
        raise UpdateError(
            "metadata_rejected", f"the TUF check failed (exit {proc.returncode}): {tail}"
        ) from None
    if not ans.get("ok"):
        raise UpdateError(str(ans.get("reason", "metadata_rejected")), str(ans.get("detail", "")))
    t = ans.get("target")
    target = None
    if t is not None:
        target = TufTarget(
            path=t["path"],
            url=t["url"],
            length=int(t["length"]),
            sha256=str(t["sha256"]),
            version=str(t["version"]),
            channel=channel,
            targets=Targets(
                groups=t["groups"],
                percent=t["percent"],
                devices=t.get("devices"),
                shadow=True if t.get("shadow") else None,
            ),
        )
    signed_at = ans.get("signed_at")
    return TufResult(
        target,
        float(ans["expires"]),
        int(ans["root_version"]),
        float(signed_at) if isinstance(signed_at, int | float) else None,
    )
