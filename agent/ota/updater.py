"""The OTA orchestrator: offers in, the state machine driven, the pipeline switched.

Threads: MQTT announcements arrive on the network thread and dropped-in files on watchdog's
thread; both only record a job (latest per topic / per file wins) and wake the updater's own
worker thread, which does everything else in order:

    offer ─▶ decide ─▶ downloading ─▶ verifying (sha256, smoke test) ─▶ staged
          ─▶ activating (Pipeline.swap_model between two windows; current -> new)
          ─▶ trial (health window) ─▶ active (committed, old versions pruned)
                                   └─▶ rolled_back (previous swapped back in, version marked bad)

Refused offers change nothing on the device; they are reported (``OtaStateV1.refusal``) and
counted (``ota_refused{reason}``). A failed attempt ends in ``failed`` with its reason; the
builds that failed in a way that will not change (smoke test, load) are marked bad. While a
health window runs, new offers wait for its verdict.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from agent.config import Config
from agent.delivery.mqtt import OutgoingMessage
from agent.errors import EdgeAgentError, PackageError, UpdateError
from agent.metrics import Metrics
from agent.model.active import ActiveModel
from agent.model.loading import load_active_model
from agent.model.runtime import Model
from agent.ota.boot import load_installed, recover
from agent.ota.decide import NOT_A_REFUSAL, Accepted, Decider, Offer, Running, VersionFloor
from agent.ota.download import DownloadSettings, Fetcher, HttpFetcher
from agent.ota.health import CHECK_INTERVAL_S, HealthWatch
from agent.ota.intake import Intake, Job
from agent.ota.layout import OtaPaths
from agent.ota.report import Reporter
from agent.ota.smoke import SmokeResult, smoke_test, zeros_for
from agent.ota.state import ALLOWED, RESTING, PauseHook, Record, State, StateMachine
from agent.ota.store import ModelStore
from agent.release.package import SignatureFile, check_artifact
from agent.release.signing import load_trusted_keys
from agent.wire.ota import MARKED_BAD_REASONS
from agent.wire.topics import INSTALL, Topics

log = logging.getLogger(__name__)

MARK_BAD = MARKED_BAD_REASONS
"""Failures that will not change on another try: the build is marked bad."""


class UpdaterLink(Protocol):
    """The part of ``agent.delivery.mqtt.MqttLink`` the updater uses."""

    def subscribe(
        self, topic_filter: str, qos: int, handler: Callable[[str, bytes], None]
    ) -> None: ...

    def publish(self, msg: OutgoingMessage, on_ack: Callable[[], None] | None = None) -> bool: ...

    def add_connect_listener(self, fn: Callable[[], None]) -> None: ...


class SwappablePipeline(Protocol):
    """The part of ``agent.pipeline.threads.Pipeline`` the updater uses."""

    @property
    def active(self) -> ActiveModel: ...

    def swap_model(self, active: ActiveModel) -> None: ...


def _awaiting(pipeline: SwappablePipeline) -> bool:
    """No model runs yet (``agent.app.provisioning.AwaitingModel``): provisioning over OTA."""
    return bool(getattr(pipeline, "awaiting", False))


def _claimed(offer: Offer | None) -> tuple[str | None, str | None]:
    """The version and artifact sha256 an offer claims (unverified: for the refusal report)."""
    if offer is None:
        return None, None
    try:
        m = json.loads(offer.manifest_bytes)
        v = m.get("version")
        art = m.get("artifact")
        sha = art.get("sha256") if isinstance(art, dict) else None
    except (ValueError, AttributeError):
        return None, None
    return (v if isinstance(v, str) else None), (sha if isinstance(sha, str) else None)


def _probe(model: Model) -> Callable[[], float] | None:
    """One timed call of the live model (thread-safe: ``Model.run`` holds its lock)."""
    if model.stateful:
        return None  # a probe would disturb the state a streaming model keeps
    inputs = zeros_for(model)

    def once() -> float:
        t0 = time.perf_counter()
        model.run(inputs)
        return time.perf_counter() - t0

    return once


def load_configured_model(cfg: Config) -> ActiveModel:
    """The model ``model.path`` names, ignoring installed OTA versions."""
    return load_active_model(cfg)


class Updater:
    """Follows the configured OTA channels and the drop-in folder; see the module doc."""

    def __init__(
        self,
        cfg: Config,
        link: UpdaterLink,
        pipeline: SwappablePipeline,
        metrics: Metrics,
        topics: Topics,
        *,
        fetcher: Fetcher | None = None,
    ) -> None:
        self.cfg = cfg
        self.pipeline = pipeline
        self.metrics = metrics
        self._link = link
        self._paths = OtaPaths.of(cfg)
        self._store = ModelStore(self._paths.state_dir)
        self._keys = load_trusted_keys(cfg.ota.trusted_keys)
        self._decider = Decider(cfg, self._keys, VersionFloor(self._paths.floor_file), self._store)
        self._sm = StateMachine(self._paths.state_file)
        ota = cfg.ota
        self._fetcher = fetcher or HttpFetcher(
            DownloadSettings(
                timeout_s=ota.download_timeout_s,
                retries=ota.download_retries,
                bandwidth_bps=ota.bandwidth_limit_kbps * 1024 if ota.bandwidth_limit_kbps else None,
            )
        )
        self._reporter = Reporter(link, topics.ota_state, cfg.agent.device_id, cfg.model.name)
        self._command_topic = topics.ota_command
        self._intake = Intake(
            {topics.ota_channel(c, cfg.model.name): c for c in ota.channels},
            cfg.model.name,
            self._paths.incoming,
        )
        self._stop = threading.Event()
        self._pause = PauseHook(self._paths.ota, self._stop)
        self._thread: threading.Thread | None = None
        self._watch: HealthWatch | None = None
        self._previous_active: ActiveModel | None = None

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        for topic in self._intake.topics:
            self._link.subscribe(topic, 1, self._intake.announcement)
        self._link.subscribe(self._command_topic, 1, self._on_command)
        self._intake.watcher.start()
        self._thread = threading.Thread(target=self._run, name="ota-updater", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        self._stop.set()
        self._intake.wake.set()
        deadline = time.monotonic() + timeout
        self._intake.watcher.stop(timeout / 2)
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))

    def ota_state(self) -> dict[str, Any] | None:
        """The last ``OtaStateV1`` reported (JSON), None before the first; for ``/status``."""
        last = self._reporter.last
        return None if last is None else last.model_dump(mode="json")

    def _on_command(self, topic: str, payload: bytes) -> None:
        """``<prefix>/<device>/ota/set``: ``install`` retries the latest offer (MQTT network
        thread: only queues)."""
        if payload.strip().lower() != INSTALL:
            log.warning("OTA command %r ignored (expected %r)", payload[:32], INSTALL)
            return
        n = self._intake.retry()
        log.info("install requested: %d announcement(s) queued again", n)

    @property
    def state(self) -> Record:
        return self._sm.record

    # ---------------------------------------------------------------- worker

    def _run(self) -> None:
        try:
            self._resume()
        except EdgeAgentError:
            log.exception("cannot resume the OTA state")
        self._intake.watcher.scan()
        while not self._stop.is_set():
            try:
                if self._watch is not None:
                    if self._stop.wait(CHECK_INTERVAL_S):
                        break
                    self._check_trial()
                    continue
                job, wait_s = self._intake.next()
                if job is None:
                    self._intake.wake.wait(wait_s)
                    self._intake.wake.clear()
                    continue
                self._handle(job)
            except Exception:
                log.exception("OTA updater: unexpected error (continuing)")
                self._stop.wait(1.0)

    def _resume(self) -> None:
        recover(self.cfg, self._store, self._sm, count_boot=False)
        r = self._sm.record
        if r.state is State.TRIAL:
            if self.pipeline.active.version == r.version and self._store.current() == r.version:
                log.info("version %s: health window starts again after a restart", r.version)
                self._start_watch(self.pipeline.active.model, r.baseline_latency_s)
            else:
                self._sm.transition(
                    State.ROLLED_BACK,
                    reason=r.reason or "interrupted",
                    detail=r.detail or "the trial version is not the one running",
                )
        self._report()

    def _running(self) -> Running:
        a = self.pipeline.active
        return Running(a.version, a.sha256)

    def _report(self, progress: tuple[int, int] | None = None) -> None:
        active = self.pipeline.active
        msg = self._reporter.state(
            self._sm.record,
            active.version,
            progress,
            awaiting=_awaiting(self.pipeline),
            running_sha256=active.sha256,
        )
        self.metrics.set("ota_state", msg.state)

    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise UpdateError("cancelled", "the agent is stopping")

    def _transition(self, state: State, **changes: Any) -> None:
        self._check_stop()  # a stopping agent writes no further step: the next start resumes
        self._sm.transition(state, **changes)
        self._report()
        if state is not State.DOWNLOADING:
            self._pause(state.value)
            self._check_stop()

    # ---------------------------------------------------------------- offers

    def _handle(self, job: Job) -> None:
        offer: Offer | None = None
        try:
            offer = self._intake.offer(job)
            accepted = self._decider.decide(offer, self._running())
        except FileNotFoundError:
            return  # a dropped-in file that is gone already
        except OSError as exc:
            self._refused(None, None, UpdateError("unreadable", f"{job.key}: {exc}"), job.source)
            return
        except UpdateError as exc:
            if exc.reason in NOT_A_REFUSAL:
                log.info("offer from %s: %s", job.source, exc.detail)
            elif exc.reason == "malformed" and self._intake.settle(job):
                return
            else:
                self._refused(*_claimed(offer), exc, job.source)
            self._intake.done(job, exc.reason)
            return
        self._decider.accept(accepted)
        self._intake.done(job, self._apply(accepted))

    def _refused(
        self, version: str | None, sha256: str | None, exc: UpdateError, source: str
    ) -> None:
        log.warning("refused %s from %s: %s", version or "an offer", source, exc)
        self.metrics.inc("ota_refused", reason=exc.reason)
        self._reporter.refused(version, exc.reason, exc.detail, source, sha256)

    # ---------------------------------------------------------------- the update path

    def _apply(self, acc: Accepted) -> str | None:
        """Run one accepted offer to the health window; the failure reason or None."""
        m = acc.manifest
        fields: dict[str, Any] = {
            "version": m.version,
            "sha256": acc.sha256,
            "previous": self.pipeline.active.version,
            "source": acc.offer.source,
        }
        try:
            content = self._obtain(acc, fields)
            running = None if _awaiting(self.pipeline) else self.pipeline.active.model
            smoke = smoke_test(content, m, self.cfg.model, running)
            signature = None
            if acc.signer is not None and acc.offer.signature is not None:
                signature = SignatureFile(
                    key_id=acc.signer,
                    signature=base64.b64encode(acc.offer.signature).decode("ascii"),
                ).to_bytes()
            self._store.stage(m, acc.offer.manifest_bytes, signature, content)
            self._paths.part(acc.sha256).unlink(missing_ok=True)
            self._transition(State.STAGED)
            self._activate(acc, smoke)
        except UpdateError as exc:
            if exc.reason == "cancelled":
                log.info("update to %s interrupted: the agent is stopping", m.version)
                return exc.reason
            self._fail(acc, exc)
            return exc.reason
        return None

    def _obtain(self, acc: Accepted, fields: dict[str, Any]) -> bytes:
        """The verified model bytes: carried by the offer, already staged, or downloaded."""
        m = acc.manifest
        if acc.offer.content is not None:
            self._transition(State.VERIFYING, **fields)
            try:
                check_artifact(m, acc.offer.content)
            except PackageError as exc:
                raise UpdateError(exc.reason, exc.detail) from exc
            return acc.offer.content
        with contextlib.suppress(UpdateError):
            staged = self._store.read(m.version)
            if staged.manifest.artifact.sha256 == acc.sha256:
                self._transition(State.VERIFYING, **fields)
                log.info("%s is staged already: no download", m.version)
                return staged.model
        self._transition(State.DOWNLOADING, **fields)
        if acc.offer.url is None:
            raise UpdateError("bad_announcement", "the offer names no URL")
        first = True

        def progress(done: int, total: int) -> None:
            nonlocal first
            if first:
                first = False
                self._pause("downloading")  # test hook: after the first bytes are on disk
                if self._stop.is_set():
                    raise UpdateError("cancelled", "the agent is stopping")
            if self._reporter.progress_due():
                self._report((done, total))

        content = self._fetcher.fetch(
            acc.offer.url,
            m.artifact.size,
            acc.sha256,
            self._paths.part(acc.sha256),
            progress=progress,
            stop=self._stop,
        )
        self._transition(State.VERIFYING)
        return content

    def _activate(self, acc: Accepted, smoke: SmokeResult) -> None:
        m = acc.manifest
        old = self.pipeline.active
        self._transition(State.ACTIVATING, baseline_latency_s=smoke.running_latency_s)
        new = ActiveModel(
            model=smoke.model,
            name=m.name,
            version=m.version,
            labels=list(m.labels) or self.cfg.postprocess_labels(),
            sha256=acc.sha256,
            manifest=m,
        )
        try:
            self.pipeline.swap_model(new)
        except EdgeAgentError as exc:
            raise UpdateError("incompatible_pipeline", f"{m.version}: {exc}") from exc
        try:
            self._store.activate(m.version)
        except UpdateError:  # the disk still names the old model: so must the pipeline
            self.pipeline.swap_model(old)
            raise
        self._previous_active = old
        self._transition(State.TRIAL, boots=0, trial_started=time.time())
        self._start_watch(smoke.model, smoke.running_latency_s)

    def _fail(self, acc: Accepted, exc: UpdateError) -> None:
        log.error("update to %s failed: %s", acc.version, exc)
        self.metrics.inc("ota_failed", reason=exc.reason)
        if exc.reason in MARK_BAD:
            self._store.mark_bad(acc.version, acc.sha256, exc.reason)
            self._paths.part(acc.sha256).unlink(missing_ok=True)
        if self._sm.state in RESTING or State.FAILED not in ALLOWED[self._sm.state]:
            self._refused(acc.version, acc.sha256, exc, acc.offer.source)
            return
        self._sm.transition(State.FAILED, reason=exc.reason, detail=exc.detail)
        self._report()

    # ---------------------------------------------------------------- health window

    def _start_watch(self, model: Model, baseline: float | None) -> None:
        self._watch = HealthWatch(
            self.metrics, self.cfg.ota, baseline_latency_s=baseline, probe=_probe(model)
        )

    def _check_trial(self) -> None:
        assert self._watch is not None
        verdict = self._watch.check()
        if verdict.status == "watching":
            return
        self._watch = None
        if verdict.status == "passed":
            self._sm.transition(State.ACTIVE, boots=0, detail=verdict.detail)
            self._previous_active = None
            self._store.prune(self.cfg.ota.keep_versions)
            self.metrics.inc("ota_updates")
            log.info(
                "version %s passed its health window: %s", self._sm.record.version, verdict.detail
            )
            self._report()
            return
        self._roll_back(verdict.reason or "unhealthy", verdict.detail or "")

    def _roll_back(self, reason: str, detail: str) -> None:
        r = self._sm.record
        log.error("version %s is unhealthy (%s: %s): rolling back", r.version, reason, detail)
        if r.version is not None and r.sha256 is not None:
            self._store.mark_bad(r.version, r.sha256, reason)
        prev = self._previous_active
        try:
            if prev is None:
                prev_v = self._store.previous()
                prev = (
                    load_installed(self.cfg, self._store, prev_v, self._keys)
                    if prev_v is not None
                    else load_configured_model(self.cfg)
                )
            self.pipeline.swap_model(prev)
        except EdgeAgentError:
            log.exception("cannot switch back in-process; the next start runs the previous model")
        self._store.rollback()
        self._previous_active = None
        self._sm.transition(State.ROLLED_BACK, reason=reason, detail=detail)
        self.metrics.inc("ota_rollbacks", reason=reason)
        self._report()
