"""The update path as an explicit, persisted state machine.

    idle / active / rolled_back / failed      (resting: nothing in progress)
        │  an offer is accepted
        ▼
    downloading ──▶ verifying ──▶ staged ──▶ activating ──▶ trial ──▶ active
        │               │            │  │         │            │
        └───────────────┴────────────┴──┼─────────┴──▶ failed  └──▶ rolled_back
                                        └──▶ shadow (resting: runs beside the active model)

Every transition is checked against ``ALLOWED`` and written to ``state.json`` before the step
it announces starts (temp file, fsync, rename, fsync the directory), so after a kill at any
point the next start knows where it was (``agent.ota.boot`` resumes or rolls back). Like
Mender, a counter bounds the transitions of one attempt: a loop (a model that crashes the
agent at every start, a bug) ends in ``failed``/``rolled_back`` instead of running forever.

``PauseHook`` is a **test-only** hook: with ``EDGE_AGENT_OTA_PAUSE_AT=<state>[,<state>...]``
in the environment the updater writes ``<state_dir>/ota/paused-<state>`` when it reaches that
point and blocks there, so a test can ``kill -9`` the agent at exactly that step.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from agent.errors import UpdateError
from agent.ota.files import atomic_write, atomic_write_json

log = logging.getLogger(__name__)

MAX_TRANSITIONS = 28
"""Most transitions one attempt may take (Mender's bound) before it is aborted."""

PAUSE_ENV = "EDGE_AGENT_OTA_PAUSE_AT"


class State(StrEnum):
    """The OTA state machine's states."""

    IDLE = "idle"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    STAGED = "staged"
    SHADOW = "shadow"
    """Resting: the staged version runs as a shadow beside the active one (targets.shadow)."""
    ACTIVATING = "activating"
    TRIAL = "trial"
    ACTIVE = "active"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"


RESTING = frozenset({State.IDLE, State.ACTIVE, State.ROLLED_BACK, State.FAILED, State.SHADOW})
"""Nothing in progress: a new attempt may start from here."""

_START = frozenset({State.DOWNLOADING, State.VERIFYING, State.ROLLED_BACK})
ABORT = frozenset({State.FAILED, State.ROLLED_BACK, State.IDLE})
"""Always reachable from an in-progress state, even past ``MAX_TRANSITIONS``."""

ALLOWED: Mapping[State, frozenset[State]] = {
    State.IDLE: _START,
    State.ACTIVE: _START,
    State.ROLLED_BACK: _START,
    State.FAILED: _START,
    State.SHADOW: _START,
    State.DOWNLOADING: frozenset({State.VERIFYING, State.FAILED, State.IDLE}),
    State.VERIFYING: frozenset({State.STAGED, State.FAILED, State.IDLE}),
    State.STAGED: frozenset({State.ACTIVATING, State.SHADOW, State.FAILED, State.IDLE}),
    State.ACTIVATING: frozenset({State.TRIAL, State.FAILED, State.IDLE, State.ROLLED_BACK}),
    State.TRIAL: frozenset({State.TRIAL, State.ACTIVE, State.ROLLED_BACK}),
}
"""The allowed transitions. A resting state goes to ``rolled_back`` when the installed model
cannot be loaded at start; ``trial -> trial`` counts a start during the health window."""


@dataclass(frozen=True)
class Record:
    """What ``state.json`` holds: the state and the attempt it belongs to."""

    state: State = State.IDLE
    version: str | None = None
    """The version this attempt installs (or the version rolled back from / that failed)."""
    sha256: str | None = None
    previous: str | None = None
    """The version that ran before the attempt (None: the configured model)."""
    source: str | None = None
    """Where the offer came from: ``channel:<name>`` or ``incoming:<file>``."""
    reason: str | None = None
    detail: str | None = None
    boots: int = 0
    """Starts of the agent during this attempt's health window (the boot counter)."""
    transitions: int = 0
    baseline_latency_s: float | None = None
    """p50 invoke latency of the previous model, measured before the swap."""
    trial_started: float | None = None
    updated_at: float = 0.0

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["state"] = self.state.value
        return d

    @classmethod
    def from_json(cls, obj: Any) -> Record:
        if not isinstance(obj, dict):
            raise ValueError("not an object")
        fields = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in obj.items() if k in fields}
        data["state"] = State(data.get("state", "idle"))
        return cls(**data)


class StateMachine:
    """The persisted state of the update path. Not thread-safe: one owner at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.damaged: str | None = None
        """Why ``state.json`` could not be read (it exists but is garbage), else None.
        ``agent.ota.boot.recover`` decides what that means (a trial's damage is a failed trial)."""
        self._record = self._load()

    def _load(self) -> Record:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return Record()
        except OSError as exc:
            self.damaged = f"cannot read {self.path}: {exc}"
            log.error("OTA state file: %s", self.damaged)
            return Record()
        try:
            return Record.from_json(json.loads(raw))
        except (ValueError, TypeError) as exc:
            self.damaged = f"{self.path} is not a valid state file: {exc}"
            log.error("OTA state file: %s", self.damaged)
            return Record()

    @property
    def record(self) -> Record:
        return self._record

    @property
    def state(self) -> State:
        return self._record.state

    def transition(self, to: State, **changes: Any) -> Record:
        """Move to ``to`` (checked against ``ALLOWED``), persist, return the new record.

        Leaving a resting state starts a new attempt: the record starts afresh from
        ``changes``. Otherwise ``changes`` update the current attempt's record.
        """
        cur = self._record
        if to not in ALLOWED[cur.state]:
            raise UpdateError(
                "bad_transition", f"the update path cannot go from {cur.state} to {to}"
            )
        if cur.state in RESTING:
            new = Record(state=to, transitions=1, updated_at=time.time(), **changes)
        else:
            new = dataclasses.replace(
                cur, state=to, transitions=cur.transitions + 1, updated_at=time.time(), **changes
            )
            if new.transitions > MAX_TRANSITIONS and to not in ABORT:
                raise UpdateError(
                    "runaway",
                    f"update to {cur.version} took {new.transitions} transitions "
                    f"(limit {MAX_TRANSITIONS}): aborting it",
                )
        atomic_write_json(self.path, new.to_json())
        log.info(
            "OTA state %s -> %s (version %s%s)",
            cur.state,
            to,
            new.version,
            f", {new.reason}" if new.reason else "",
        )
        self._record = new
        return new


class PauseHook:
    """Test-only: block at the points named in ``$EDGE_AGENT_OTA_PAUSE_AT`` (see module doc)."""

    def __init__(
        self, marker_dir: Path, stop: threading.Event, environ: Mapping[str, str] | None = None
    ) -> None:
        env = os.environ if environ is None else environ
        self._points = {p.strip() for p in env.get(PAUSE_ENV, "").split(",") if p.strip()}
        self._dir = marker_dir
        self._stop = stop
        if self._points:
            log.warning("TEST HOOK %s=%s: the updater will pause there", PAUSE_ENV, self._points)

    def marker(self, point: str) -> Path:
        return self._dir / f"paused-{point}"

    def __call__(self, point: str) -> None:
        if point not in self._points:
            return
        self._points.discard(point)
        atomic_write(self.marker(point), f"{os.getpid()}\n".encode())
        log.warning("TEST HOOK: paused at %s (pid %d)", point, os.getpid())
        self._stop.wait()
