"""Rollouts started from the dashboard: the CLI's ``run_rollout`` on a thread, watched.

A ``RolloutJob`` builds the same ``Announcement`` ``edge-fleet rollout`` would (from a
package file and the store's base URL, or from what another channel announces) and runs
``agent.fleet.rollout.run_rollout`` with it: the same discovery, exact-build tracking, abort
threshold and restore of the previous announcement, and the same ``RolloutStore`` on disk
(so ``edge-fleet rollout --resume`` / ``--abort`` work on a rollout started here). The
dashboard takes the tracker's progress each time the rollout saves its state (on the
rollout's thread, so the snapshot is consistent) and the event lines; *abort* sets the
rollout's ``cancel`` event, which aborts and restores like the threshold does.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent.config import MqttSection
from agent.errors import EdgeAgentError
from agent.fleet.rollout import (
    Rollout,
    RolloutPolicy,
    RolloutReport,
    RolloutStore,
    RolloutTracker,
    announcement_from_package,
    current_announcements,
    manifest_version,
    promote,
    run_rollout,
)
from agent.release.manifest import Announcement, Targets, utc_now

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RolloutRequest:
    """What the rollout form asks for (the CLI's options)."""

    channel: str
    model: str | None = None
    from_channel: str | None = None
    package: Path | None = None
    base_url: str | None = None
    groups: tuple[str, ...] = ()
    percent: float = 100.0
    max_failure_fraction: float = 0.2
    timeout_s: float = 600.0
    discover_s: float = 5.0
    force: bool = False


@dataclass(frozen=True)
class Progress:
    """A running rollout's progress: targeted, succeeded, failed, pending."""

    targeted: int
    succeeded: list[str]
    failed: dict[str, str]
    pending: list[str]
    failure_fraction: float


@dataclass
class RolloutJob:
    """A rollout started from the dashboard: its request, state, events and report."""

    id: int
    request: RolloutRequest
    started: float
    model: str | None = None
    version: str | None = None
    state: str = "starting"
    """starting, running, then the outcome (completed, aborted, timed_out, announced) or error."""
    progress: Progress | None = None
    events: list[tuple[float, str]] = field(default_factory=list)
    report: RolloutReport | None = None
    error: str | None = None
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def finished(self) -> bool:
        return self.state not in {"starting", "running"}

    @property
    def abort_reason(self) -> str | None:
        """Why it was aborted, and what that did to the channel (None: not aborted)."""
        r = self.report
        if r is None or r.outcome.value != "aborted":
            return None
        if self.cancel.is_set():
            why = "aborted by the operator"
        else:
            reasons = ", ".join(f"{k} x{n}" for k, n in r.failure_reasons().items())
            involved = len(set(r.targeted) | set(r.succeeded) | set(r.failed))
            why = (
                f"{len(r.failed)} of {involved} device(s) failed "
                f"(> {self.request.max_failure_fraction:.0%}): {reasons}"
            )
        return f"{why}; {r.restored_text}" if r.restored_text else why


class _JobStore(RolloutStore):
    """The CLI's rollout store, telling the job each time the rollout saves its progress."""

    def __init__(self, directory: Path, on_save: Callable[[Rollout], None]) -> None:
        super().__init__(directory)
        self._on_save = on_save

    def save(self, r: Rollout) -> Path:
        self._on_save(r)
        return super().save(r)


def build_announcement(
    req: RolloutRequest, settings: MqttSection, password: str | None
) -> Announcement:
    """The announcement ``edge-fleet rollout`` would make for these options."""
    targets = Targets(groups=list(req.groups), percent=req.percent)
    if req.package is not None:
        if not req.base_url:
            raise EdgeAgentError("a package needs the base URL of the store that serves it")
        return announcement_from_package(req.package, req.channel, req.base_url, targets)
    if not (req.from_channel and req.model):
        raise EdgeAgentError("give a package, or a model and the channel to take it from")
    found = current_announcements(settings, password, req.model, [req.from_channel])
    src = found[req.from_channel]
    if src is None:
        raise EdgeAgentError(f"channel {req.from_channel} announces nothing for {req.model}")
    return src.model_copy(
        update={"channel": req.channel, "targets": targets, "published_at": utc_now()}
    )


class Rollouts:
    """Every rollout started from this dashboard, newest first."""

    def __init__(
        self,
        settings: MqttSection,
        password: str | None,
        on_change: Callable[[], None],
        state_dir: Path | None = None,
    ) -> None:
        self._settings = settings
        self._password = password
        self._on_change = on_change
        self._state_dir = state_dir or RolloutStore.default_dir()
        self._jobs: dict[int, RolloutJob] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def jobs(self) -> list[RolloutJob]:
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: -j.id)

    def get(self, job_id: int) -> RolloutJob | None:
        with self._lock:
            return self._jobs.get(job_id)

    def start(self, req: RolloutRequest) -> RolloutJob:
        job = RolloutJob(next(self._ids), req, time.time())
        with self._lock:
            self._jobs[job.id] = job
        threading.Thread(
            target=self._run, args=(job,), name=f"rollout-{job.id}", daemon=True
        ).start()
        return job

    def promote(
        self, model: str, source: str, dest: str, version: str | None, force: bool = False
    ) -> str:
        """``edge-fleet promote``: the version now offered on ``dest``."""
        ann = promote(
            self._settings,
            self._password,
            model,
            source=source,
            dest=dest,
            version=version,
            force=force,
        )
        self._on_change()
        return manifest_version(ann)[1]

    def abort(self, job_id: int) -> RolloutJob | None:
        job = self.get(job_id)
        if job is not None and not job.finished:
            job.cancel.set()
            self._event(job, "abort requested by the operator")
        return job

    def _event(self, job: RolloutJob, line: str) -> None:
        with self._lock:
            job.events.append((time.time(), line))
        self._on_change()

    def _progress(self, job: RolloutJob, t: RolloutTracker) -> None:
        p = Progress(
            targeted=len(t.targeted),
            succeeded=sorted(t.succeeded),
            failed=dict(sorted(t.failed.items())),
            pending=sorted(t.pending),
            failure_fraction=t.failure_fraction,
        )
        if p != job.progress:
            with self._lock:
                job.progress = p
                job.state = "running"
            self._on_change()

    def _run(self, job: RolloutJob) -> None:
        req = job.request
        try:
            ann = build_announcement(req, self._settings, self._password)
            job.model, job.version = manifest_version(ann)
            if req.model and req.model != job.model:
                raise EdgeAgentError(f"the package is model {job.model!r}, not {req.model!r}")
            policy = RolloutPolicy(req.max_failure_fraction, req.timeout_s, req.discover_s)
            store = _JobStore(self._state_dir, lambda r: self._progress(job, r.tracker))
            report = run_rollout(
                self._settings,
                self._password,
                ann,
                policy,
                force=req.force,
                on_event=lambda line: self._event(job, line),
                store=store,
                cancel=job.cancel,
            )
        except EdgeAgentError as exc:
            with self._lock:
                job.error, job.state = str(exc), "error"
            self._event(job, f"error: {exc}")
            return
        except Exception as exc:  # a thread's failure must show on the page
            log.exception("rollout %d failed", job.id)
            with self._lock:
                job.error, job.state = f"internal error: {exc}", "error"
            self._event(job, f"internal error: {exc}")
            return
        with self._lock:
            job.report, job.state = report, report.outcome.value
            job.progress = Progress(
                len(report.targeted),
                report.succeeded,
                report.failed,
                report.pending,
                report.failure_fraction,
            )
        self._event(job, f"{report.outcome.value}")
