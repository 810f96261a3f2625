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
import dataclasses
import hashlib
import io
import json
import logging
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from agent.clock import ClockStatus
from agent.config import Config
from agent.delivery.mqtt import OutgoingMessage
from agent.errors import EdgeAgentError, PackageError, UpdateError
from agent.metrics import Metrics
from agent.model.active import ActiveModel
from agent.model.loading import load_active_model
from agent.model.runtime import Model
from agent.ota import tufclient
from agent.ota.boot import load_installed, recover
from agent.ota.decide import (
    NOT_A_REFUSAL,
    Accepted,
    Decider,
    Offer,
    Running,
    check_shadow_claim,
    offer_from_file,
)
from agent.ota.download import DownloadSettings, Fetcher, HttpFetcher
from agent.ota.floor import VersionFloor
from agent.ota.health import CHECK_INTERVAL_S, HealthWatch
from agent.ota.intake import Intake, Job, open_regular
from agent.ota.layout import OtaPaths
from agent.ota.report import Reporter
from agent.ota.smoke import SmokeResult, smoke_test, zeros_for
from agent.ota.state import ALLOWED, RESTING, PauseHook, Record, State, StateMachine
from agent.ota.store import ModelStore
from agent.ota.tufclient import TufTarget
from agent.release.manifest import Targets, Version
from agent.release.package import (
    BUNDLE_SUFFIX,
    SignatureFile,
    check_artifact,
    read_model_entry,
)
from agent.release.signing import load_trusted_keys
from agent.wire.ota import MARKED_BAD_REASONS, TufStatus
from agent.wire.topics import INSTALL, Topics

if TYPE_CHECKING:
    from agent.pipeline.shadow import ShadowRunner

log = logging.getLogger(__name__)

CLOCK_RETRY_S = 30.0
"""How often a network offer waiting for a trustworthy clock is looked at again."""

TUF_MIN_INTERVAL_S = 5.0
"""Hints (announcements) closer together than this are coalesced into one TUF check."""

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

    def set_shadow(
        self, candidate: ActiveModel | None, counts_file: Path | None = None
    ) -> None: ...

    @property
    def shadow(self) -> ShadowRunner | None: ...


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


def _close(offer: Offer | None) -> None:
    """Close a dropped-in package file the offer holds open."""
    if offer is not None and offer.package is not None:
        offer.package.close()


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
        self._clock = ClockStatus(self._paths.state_dir)
        self._tuf = ota.tuf_url is not None
        self._tuf_next = 0.0  # monotonic time of the next timed TUF refresh (0: at start)
        self._tuf_last = -TUF_MIN_INTERVAL_S
        self._tuf_targets: dict[str, TufTarget] = {}  # offer source -> what TUF vouched for
        self._tuf_version: str | None = None  # the version the TUF check in progress names

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
                if self._tuf and time.monotonic() >= self._tuf_next:
                    self._tuf_next = time.monotonic() + self.cfg.ota.tuf_refresh_s
                    for c in self.cfg.ota.channels:
                        self._intake.hint(c)
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
        elif r.state is State.ACTIVE and self._store.current() == r.version:
            self._commit_floor()  # a kill between the commit and the floor write
        self._report()

    def _commit_floor(self) -> None:
        """Raise the floor to the committed version (the only place it rises; idempotent)."""
        r = self._sm.record
        if r.state is not State.ACTIVE or r.version is None or r.sha256 is None:
            return
        try:
            self._decider.commit(self.cfg.model.name, r.version, r.sha256)
        except UpdateError as exc:
            log.error("cannot raise the version floor to %s: %s", r.version, exc)

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
        self._tuf_version = None
        try:
            if job.path is None:
                self._check_clock(job)
            if self._tuf and job.path is None:
                if time.monotonic() - self._tuf_last < TUF_MIN_INTERVAL_S:
                    self._intake.later(job, TUF_MIN_INTERVAL_S)  # hints are coalesced
                    return
                offer = self._tuf_offer(job)
            elif job.path is not None and job.path.name.endswith(BUNDLE_SUFFIX):
                offer = self._bundle_offer(job)
            elif job.path is not None and self._tuf:
                raise UpdateError(
                    "tuf_required",
                    f"{job.path.name}: with ota.tuf_url set, drop in an offline TUF bundle "
                    f"(*{BUNDLE_SUFFIX}, edge-convert tuf bundle), not a bare package",
                )
            else:
                offer = self._intake.offer(job)
            accepted = self._decider.decide(offer, self._running())
            self._check_tuf_target(accepted)
        except FileNotFoundError:
            return  # a dropped-in file that is gone already
        except OSError as exc:
            self._refused(None, None, UpdateError("unreadable", f"{job.key}: {exc}"), job.source)
            return
        except UpdateError as exc:
            _close(offer)
            if exc.reason in NOT_A_REFUSAL:
                log.info("offer from %s: %s", job.source, exc.detail)
            elif exc.reason == "malformed" and self._intake.settle(job):
                return
            else:
                claimed = _claimed(offer) if offer is not None else (self._tuf_version, None)
                self._refused(*claimed, exc, job.source)
            self._intake.done(job, exc.reason)
            return
        if self._shadowing(accepted):
            _close(offer)
            self._intake.done(job, "up_to_date")
            return
        try:
            outcome = self._apply(accepted)
        finally:
            _close(offer)
        self._intake.done(job, outcome)

    # ---------------------------------------------------------------- TUF

    def _check_clock(self, job: Job) -> None:
        """Network updates wait while the clock is known to be wrong (agent.clock): expiry
        checks on it would refuse good metadata or let a freeze through. Drop-ins do not wait
        (an offline device may never synchronise)."""
        ok, why = self._clock.ok()
        if ok:
            return
        self._intake.later(job, CLOCK_RETRY_S)
        raise UpdateError("clock_untrusted", f"{why}: updates wait")

    def _tuf_offer(self, job: Job) -> Offer:
        """Refresh the TUF metadata (child process) and fetch the target it vouches for.

        The announcement that woke us is only a hint: nothing in it is used, except that an
        announcement of the target's version must not contradict its signed shadow flag
        (``shadow_mismatch``, ``decide.check_shadow_claim``). Raises ``UpdateError`` with
        TUF's refusal reason (``metadata_expired``, ...), a download reason (the target's
        length and sha256 are TUF's), or ``up_to_date``.
        """
        assert job.channel is not None
        self._tuf_last = time.monotonic()
        try:
            res = tufclient.refresh(self.cfg, job.channel)
        except UpdateError as exc:
            if exc.reason == "metadata_expired":
                self.metrics.inc("ota_metadata_expired")
            old = self._reporter.last.tuf if self._reporter.last is not None else None
            self._reporter.tuf(
                TufStatus(
                    expires=old.expires if old else None,
                    expired=exc.reason == "metadata_expired",
                    root_version=old.root_version if old else None,
                    checked_at=time.time(),
                )
            )
            raise
        if res.signed_at is not None:
            self._clock.floor.raise_to(res.signed_at)
        self._reporter.tuf(
            TufStatus(
                expires=res.expires,
                expired=False,
                root_version=res.root_version,
                checked_at=time.time(),
            )
        )
        t = res.target
        running = self.pipeline.active.version
        if t is None:
            raise UpdateError("up_to_date", f"no TUF target for this device on {job.channel}")
        with contextlib.suppress(ValueError):
            if not _awaiting(self.pipeline) and Version.parse(t.version) <= Version.parse(running):
                raise UpdateError("up_to_date", f"TUF's newest is {t.version}; {running} runs")
        self._tuf_version = t.version  # named in a refusal from here on
        signed_shadow = bool(t.targets.shadow)
        check_shadow_claim(job.payload, job.channel, self.cfg.model.name, t.version, signed_shadow)
        part = self._paths.part(t.sha256)
        data = self._fetcher.fetch(t.url, t.length, t.sha256, part, stop=self._stop)
        part.unlink(missing_ok=True)
        offer = offer_from_file(t.path.rsplit("/", 1)[-1], io.BytesIO(data))
        source = f"tuf:{job.channel}"
        self._tuf_targets[source] = t
        return dataclasses.replace(offer, source=source, targets=t.targets)

    def _bundle_offer(self, job: Job) -> Offer:
        """An offline TUF bundle: its metadata verified against the trusted root (the child,
        reading the zip instead of the network), then its package read with TUF's length and
        sha256 as the bounds."""
        assert job.path is not None
        if not self._tuf:
            raise UpdateError("no_trusted_root", "a TUF bundle needs ota.tuf_url and its root")
        open_regular(job.path).close()  # a regular file of bounded size, or refused
        res = tufclient.refresh(self.cfg, self.cfg.ota.channels[0], bundle=job.path)
        t = res.target
        if t is None:
            raise UpdateError("no_target", f"{job.path.name} carries no target for this model")
        with zipfile.ZipFile(job.path) as zf, zf.open(t.url) as f:
            data = f.read(t.length + 1)
        if len(data) != t.length or hashlib.sha256(data).hexdigest() != t.sha256:
            raise UpdateError(
                "hash_mismatch", f"{job.path.name}: {t.path} is not the target TUF names"
            )
        offer = offer_from_file(t.path.rsplit("/", 1)[-1], io.BytesIO(data))
        source = f"incoming:{job.path.name}"
        self._tuf_targets[source] = t
        # a drop-in is for this device whatever the targeting; a signed shadow stays a shadow
        targets = Targets(shadow=True) if t.targets.shadow else None
        return dataclasses.replace(offer, source=source, targets=targets)

    def _check_tuf_target(self, acc: Accepted) -> None:
        """The package must be what TUF's custom metadata says it is (no mix-and-match)."""
        t = self._tuf_targets.pop(acc.offer.source, None)
        if t is None:
            return
        m = acc.manifest
        if (m.name, m.version) != (self.cfg.model.name, t.version):
            raise UpdateError(
                "target_mismatch",
                f"TUF target {t.path} is {self.cfg.model.name} {t.version}, the package inside "
                f"is {m.name} {m.version}",
            )

    def _shadowing(self, acc: Accepted) -> bool:
        """The offer is a shadow of the build shadowed now (a retained announcement delivered
        again on reconnect): keep it running, with its counts."""
        targets = acc.offer.targets
        current = self.pipeline.shadow
        if targets is None or not targets.shadow or current is None:
            return False
        cand = current.candidate
        if (cand.version, cand.sha256) != (acc.version, acc.sha256):
            return False
        log.info("%s runs as a shadow already", acc.version)
        return True

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
            if acc.offer.targets is not None and acc.offer.targets.shadow:
                self._shadow(acc, smoke)
            else:
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
        if acc.offer.package is not None:  # the signature verified: now inflate, capped
            self._transition(State.VERIFYING, **fields)
            try:
                return read_model_entry(acc.offer.package, m)
            except PackageError as exc:
                raise UpdateError(exc.reason, exc.detail) from exc
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
        self.pipeline.set_shadow(None)  # a new active model ends any shadow
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
        self._pause("swapped")  # test hook: `current` swapped, the trial not yet written
        self._previous_active = old
        self._transition(State.TRIAL, boots=0, trial_started=time.time())
        self._start_watch(smoke.model, smoke.running_latency_s)

    def _shadow(self, acc: Accepted, smoke: SmokeResult) -> None:
        """Run the staged version beside the active one (targets.shadow): it serves nothing;
        a later announcement of the same version without the flag activates it from the store."""
        m = acc.manifest
        if not self.cfg.shadow.enabled:
            raise UpdateError("shadow_disabled", f"{m.version}: shadow.enabled = false here")
        candidate = ActiveModel(
            model=smoke.model,
            name=m.name,
            version=m.version,
            labels=list(m.labels) or self.cfg.postprocess_labels(),
            sha256=acc.sha256,
            reference=m.reference,
        )
        try:
            self.pipeline.set_shadow(candidate, self._paths.shadow_counts)
        except EdgeAgentError as exc:
            raise UpdateError("incompatible_pipeline", f"{m.version}: {exc}") from exc
        self._transition(State.SHADOW, detail=f"shadowing {self.pipeline.active.version}")
        log.info("%s runs as a shadow beside %s", m.version, self.pipeline.active.version)

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
            self._commit_floor()
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
