"""At start: finish or undo an interrupted update, then load the installed model.

``startup_model(cfg)`` is called once per build of the agent (``agent.app.service``). The first
time in a process it recovers the update path from ``state.json``:

- killed in ``downloading`` / ``verifying`` / ``staged``: back to ``idle`` (reason
  ``interrupted``). The ``.part`` file stays: when the retained announcement arrives again
  the download resumes where it stopped; a staged version is reused.
- killed in ``activating``: if ``current`` already names the new version the swap happened
  and this is a start in its trial; otherwise back to ``idle``.
- ``state.json`` damaged (garbage, unreadable): if ``current`` names a version that was never
  committed (``agent.ota.floor`` records every commit), the device was inside an update: that
  is a failed trial, rolled back to ``previous`` (reason ``state_damaged``), never taken as
  idle with the trial version running unwatched.
- in ``trial``: this start is counted (the boot counter); once ``ota.max_boot_failures``
  starts happened inside one health window, ``current`` goes back to ``previous``, the
  version is marked bad (``boot_failures``) and the state becomes ``rolled_back``.

Then it loads ``models/current``: the bytes are read once, checked against the manifest's
sha256 and size, the signature and the compatibility with the configuration are checked again,
and those same bytes are loaded. A version that fails is rolled back from (to ``previous``,
else the configured model). None means: run the configured ``model.path``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

from agent.config import Config
from agent.errors import EdgeAgentError, UpdateError
from agent.model.active import ActiveModel
from agent.model.runtime import load_model
from agent.ota.compat import resolve_installed
from agent.ota.decide import check_signature
from agent.ota.floor import VersionFloor
from agent.ota.health import boot_verdict
from agent.ota.layout import OtaPaths
from agent.ota.state import State, StateMachine
from agent.ota.store import ModelStore
from agent.release.signing import PublicKey, load_trusted_keys

log = logging.getLogger(__name__)

_RECOVERED: set[Path] = set()
"""State dirs already recovered in this process: a SIGHUP rebuild is not a new start."""


def load_installed(
    cfg: Config, store: ModelStore, version: str, keys: list[PublicKey]
) -> ActiveModel:
    """Load an installed version, checking it as if it were offered again (UpdateError)."""
    inst = store.read(version)
    sig = inst.signature
    check_signature(
        inst.manifest_bytes,
        sig.raw() if sig is not None else None,
        sig.key_id if sig is not None else None,
        keys,
        cfg.ota.allow_unsigned,
    )
    resolve_installed(cfg, inst.manifest)
    m = cfg.model
    try:
        model = load_model(
            inst.model,
            runtime=m.runtime,
            num_threads=m.num_threads,
            reference_kernels=m.reference_kernels,
            signature=m.signature,
            label=f"{inst.manifest.name} {version}",
        )
    except EdgeAgentError as exc:
        raise UpdateError("load_failed", f"{version}: {exc}") from exc
    return ActiveModel(
        model=model,
        name=inst.manifest.name,
        version=version,
        labels=list(inst.manifest.labels) or cfg.postprocess_labels(),
        sha256=inst.manifest.artifact.sha256,
        manifest=inst.manifest,
    )


def _roll_back(sm: StateMachine, store: ModelStore, reason: str, detail: str) -> None:
    r = sm.record
    if r.version is not None and r.sha256 is not None:
        store.mark_bad(r.version, r.sha256, reason)
    store.rollback()
    sm.transition(State.ROLLED_BACK, reason=reason, detail=detail)


def _committed(cfg: Config, store: ModelStore, version: str) -> bool:
    """Whether ``version`` (installed) is the one the floor says was committed."""
    try:
        committed = VersionFloor(OtaPaths.of(cfg).floor_file).get(cfg.model.name)
    except UpdateError as exc:
        log.error("%s", exc)
        return False  # cannot tell: the safe answer is "not committed"
    if committed is None or committed[0] != version:
        return False
    try:
        return store.read(version).manifest.artifact.sha256 == committed[1]
    except UpdateError:
        return False


def _damaged_state(cfg: Config, store: ModelStore, sm: StateMachine) -> None:
    """``state.json`` is garbage: a version never committed is a failed trial."""
    cur = store.current()
    if cur is None or _committed(cfg, store, cur):
        log.warning("OTA state file damaged (%s); the committed model runs", sm.damaged)
        return
    sha = None
    with contextlib.suppress(UpdateError):
        sha = store.read(cur).manifest.artifact.sha256
    log.error(
        "OTA state file damaged (%s) while %s was not committed: a failed trial, rolling back",
        sm.damaged,
        cur,
    )
    store.rollback()
    sm.transition(
        State.ROLLED_BACK,
        version=cur,
        sha256=sha,
        reason="state_damaged",
        detail=f"state.json was damaged during the trial of {cur}: {sm.damaged}",
    )
    sm.damaged = None


def recover(cfg: Config, store: ModelStore, sm: StateMachine, count_boot: bool = True) -> None:
    """Resume or undo what a kill interrupted (see the module doc).

    ``count_boot`` is False when the agent rebuilds itself in the same process (SIGHUP): that
    is not a start that could have crashed.
    """
    store.clean_staging()
    if sm.damaged is not None:
        _damaged_state(cfg, store, sm)
        return
    r = sm.record
    if r.state in (State.DOWNLOADING, State.VERIFYING, State.STAGED):
        sm.transition(State.IDLE, reason="interrupted", detail=f"the agent restarted in {r.state}")
    elif r.state is State.ACTIVATING:
        if store.current() == r.version:
            sm.transition(State.TRIAL, boots=0, trial_started=time.time())
        else:
            sm.transition(
                State.IDLE, reason="interrupted", detail="the agent restarted before the swap"
            )
    r = sm.record
    if r.state is not State.TRIAL:
        return
    if store.current() != r.version:  # killed inside a rollback, after the symlink swap
        sm.transition(State.ROLLED_BACK, reason=r.reason or "interrupted", detail=r.detail)
        return
    bad = store.bad_reason(r.version, r.sha256) if r.version and r.sha256 else None
    if bad is not None:  # killed inside a rollback, before the symlink swap
        _roll_back(sm, store, bad, r.detail or f"marked bad: {bad}")
        return
    if not count_boot:
        return
    boots = r.boots + 1
    if boot_verdict(boots, cfg.ota):
        log.error(
            "version %s: %d start(s) inside its health window: rolling back", r.version, boots
        )
        _roll_back(
            sm,
            store,
            "boot_failures",
            f"the agent started {boots} times without passing the health window",
        )
        return
    try:
        sm.transition(State.TRIAL, boots=boots, trial_started=time.time())
    except UpdateError as exc:  # runaway
        _roll_back(sm, store, exc.reason, exc.detail)
        return
    log.warning("version %s: start %d inside its health window", r.version, boots)


def startup_model(cfg: Config) -> ActiveModel | None:
    """The installed OTA model to run, or None for the configured one (see module doc)."""
    if not cfg.ota.enabled:
        return None
    paths = OtaPaths.of(cfg)
    store = ModelStore(paths.state_dir)
    keys = load_trusted_keys(cfg.ota.trusted_keys)
    sm = StateMachine(paths.state_file)
    key = paths.state_dir.resolve()
    recover(cfg, store, sm, count_boot=key not in _RECOVERED)
    _RECOVERED.add(key)
    while (version := store.current()) is not None:
        try:
            active = load_installed(cfg, store, version, keys)
        except UpdateError as exc:
            log.error("installed model %s cannot run (%s): rolling back", version, exc)
            if sm.state is State.TRIAL and sm.record.version == version:
                _roll_back(sm, store, exc.reason, exc.detail)
            else:  # not this model's fault (a corrupt copy, a changed config): no bad mark
                store.rollback()
                sm.transition(
                    State.ROLLED_BACK, version=version, reason=exc.reason, detail=exc.detail
                )
            continue
        log.info("running installed model %s %s (OTA)", active.name, active.version)
        return active
    return None
