"""``edge-agent doctor``: the environment beyond the config, as a table; non-zero on failure.

Rows (``ok``, ``FAIL``, or ``-`` for not applicable / not tried):

- config: every start-up check (``agent.app.preflight``: what ``check-config`` runs);
- broker TCP / TLS / CONNACK: the broker reachable, the TLS handshake with the configured CA
  and client certificate, and the CONNACK with the configured credentials (a client id of its
  own: a running agent's session is not disturbed);
- runtime: the runtime that will be used (``model.runtime``), and whether the XNNPACK delegate
  or the reference kernels run;
- state dir: writable (a file is written, fsynced and removed) and its free space;
- trusted keys: every ``ota.trusted_keys`` file loads;
- clock: not before this agent was installed (a Pi without RTC or network time starts in 1970:
  certificates and manifests look not yet valid);
- credentials: with systemd's ``$CREDENTIALS_DIRECTORY``, the password/token files named
  relatively are there.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from agent.app.preflight import check
from agent.config import Config, read_password
from agent.delivery.mqtt import probe_broker
from agent.errors import ConfigError, EdgeAgentError

MIN_FREE_BYTES = 64 * 1024 * 1024
"""Below this, a model download, its staging copy and the spool do not fit."""
CLOCK_FLOOR = datetime(2025, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Row:
    """One line of the ``doctor`` report: a check, its result (None: not applicable), detail."""

    check: str
    ok: bool | None
    detail: str


def _config(cfg: Config) -> tuple[Row, Row]:
    _, active, problems = check(cfg)
    if problems:
        detail = "; ".join(f"{p.key}: {p.reason}" for p in problems)
        cfg_row = Row("config", False, detail)
    else:
        cfg_row = Row("config", True, "every start-up check passes")
    m = cfg.model
    if active is None:
        why = "no model yet (model.path = 'none')" if cfg.awaiting_model else "model not loaded"
        return cfg_row, Row("runtime", None if cfg.awaiting_model else False, why)
    kernels = (
        "reference kernels (no XNNPACK)" if m.reference_kernels else "XNNPACK delegate (default)"
    )
    runtime = active.model.runtime_name
    return cfg_row, Row(
        "runtime", True, f"{runtime} ({m.runtime}), {kernels}, {m.num_threads} thread(s)"
    )


def _state_dir(cfg: Config) -> Row:
    d = cfg.agent.state_dir
    try:
        d.mkdir(parents=True, exist_ok=True)
        probe = d / f".doctor-{os.getpid()}"
        with probe.open("wb") as f:
            f.write(b"edge-agent doctor\n")
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
        free = shutil.disk_usage(d).free
    except OSError as exc:
        return Row("state dir", False, f"{d}: not writable: {exc}")
    text = f"{d}: writable, {free / 2**20:,.0f} MiB free"
    if free < MIN_FREE_BYTES:
        return Row("state dir", False, f"{text} (< {MIN_FREE_BYTES // 2**20} MiB)")
    return Row("state dir", True, text)


def _trusted_keys(cfg: Config) -> Row:
    from agent.release.signing import load_trusted_keys

    paths = cfg.ota.trusted_keys
    if not paths:
        if cfg.ota.enabled and not cfg.ota.allow_unsigned:
            return Row("trusted keys", False, "OTA is on and no ota.trusted_keys are configured")
        return Row("trusted keys", None, "none configured")
    try:
        keys = load_trusted_keys(paths)
    except ConfigError as exc:
        return Row("trusted keys", False, "; ".join(f"{k}: {r}" for k, r in exc.problems))
    return Row("trusted keys", True, ", ".join(k.key_id for k in keys))


def _clock(now: float | None = None) -> Row:
    import agent

    now = time.time() if now is None else now
    floor = CLOCK_FLOOR.timestamp()
    installed = Path(agent.__file__).stat().st_mtime
    floor = max(floor, installed)
    at = datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds")
    if now < floor:
        since = datetime.fromtimestamp(floor, UTC).isoformat(timespec="seconds")
        return Row("clock", False, f"{at} is before {since} (no RTC / network time yet?)")
    return Row("clock", True, at)


def _credentials(cfg: Config, environ: dict[str, str]) -> Row:
    creds = environ.get("CREDENTIALS_DIRECTORY")
    named = [
        ("mqtt.password_file", cfg.mqtt.password_file),
        ("http.token_file", cfg.http.token_file if cfg.http.enabled else None),
    ]
    relative = [(k, p) for k, p in named if p is not None and not p.is_absolute()]
    if not creds:
        return Row("credentials", None, "not under systemd ($CREDENTIALS_DIRECTORY unset)")
    missing = [f"{k} {p}" for k, p in relative if not (Path(creds) / p).is_file()]
    if missing:
        return Row("credentials", False, f"not in {creds}: " + ", ".join(missing))
    return Row("credentials", True, f"{creds}: {len(relative)} credential(s) present")


def _broker(cfg: Config, timeout_s: float) -> list[Row]:
    try:
        password = read_password(cfg.mqtt)
    except ConfigError as exc:
        return [Row("broker CONNACK", False, "; ".join(f"{k}: {r}" for k, r in exc.problems))]
    try:
        steps = probe_broker(cfg.mqtt, f"{cfg.agent.device_id}-doctor", password, timeout_s)
    except EdgeAgentError as exc:
        return [Row("broker", False, str(exc))]
    return [Row(s.name, s.ok, s.detail) for s in steps]


def diagnose(cfg: Config, environ: dict[str, str], timeout_s: float = 5.0) -> list[Row]:
    """Run every ``doctor`` check against ``cfg``: config, broker, runtime, state dir, keys, ..."""
    cfg_row, runtime = _config(cfg)
    return [
        cfg_row,
        *_broker(cfg, timeout_s),
        runtime,
        _state_dir(cfg),
        _trusted_keys(cfg),
        _clock(),
        _credentials(cfg, environ),
    ]


def format_rows(rows: list[Row]) -> str:
    """The ``doctor`` rows as an aligned text table (ok / FAIL / -)."""
    width = max(len(r.check) for r in rows)
    mark = {True: "ok", False: "FAIL", None: "-"}
    return "\n".join(f"{r.check:<{width}}  {mark[r.ok]:<4}  {r.detail}" for r in rows)
