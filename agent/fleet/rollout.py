"""Rollouts: announce a model version on a channel, follow the fleet, stop when too many fail.

As Greengrass deployments and hawkBit rollouts do, a rollout has an abort threshold:

1. read the channel's current retained announcement (``<prefix>/ota/<channel>/<model>``): the
   version to go back to;
2. start watching the fleet (``FleetView``), wait up to ``discover_s`` for every online
   device's metrics (groups, channels), then publish the new ``Announcement`` retained;
3. follow the devices' OTA reports (``OtaStateV1``) for *this exact build*: the version and
   the artifact sha256 of the announced manifest. Success is that build ``active`` through
   the health window (or already running when the rollout starts: counted at once);
   failure is ``failed``, ``rolled_back`` or a refusal such as ``bad_signature`` or
   ``version_reused`` (a re-built version with other bytes), each with its reason; reports
   from devices the targets leave out are ignored. ``targeted`` are the devices that should
   take it: online, running this model, following this channel
   (``MetricsV1.ota_channels``) and inside ``Targets`` (groups and percent); devices that
   report for the build count too;
4. abort when ``failed / (targeted + reporting) > max_failure_fraction``: re-announce the
   previous announcement (with a fresh ``published_at``) or, when there was none, clear the
   channel, and say which;
5. complete when every targeted device has finished; give up following after ``timeout_s``
   (the announcement stays: a device that was offline takes it when it comes back).

A finished report counts when it is at most ``STALE_S`` older than the rollout (by its ``ts``,
else by when it arrived), so a failure left over from an old attempt at the same version
aborts a new rollout only when it is recent.

The rollout (announcement, the one it replaced, policy, progress) is kept on disk by a
``RolloutStore`` after every change, so ``resume_rollout`` continues it from another process
and ``abort_rollout`` stops it from anywhere. ``start_rollout`` / ``follow_rollout`` /
``abort_rollout`` / ``resume_rollout`` / ``promote`` are the functions every front end uses
(the CLI, a dashboard).

``promote`` re-announces the *same* signed manifest from one channel on another (canary ->
stable). Versions only go up within a channel: announcing an older version than the channel
has is refused unless ``force``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agent.config import MqttSection
from agent.delivery.mqtt import OutgoingMessage, collect_retained, publish_once
from agent.durable import atomic_write
from agent.errors import PackageError, UpdateError
from agent.fleet.view import (
    IN_PROGRESS,
    DeviceState,
    FleetView,
    OtaReport,
    all_reported,
    watch_fleet,
)
from agent.release.manifest import (
    Announcement,
    Targets,
    Version,
    parse_manifest,
    utc_now,
)
from agent.release.package import read_package
from agent.wire.topics import ota_topic

log = logging.getLogger(__name__)

FOLLOW_EVERY_S = 0.25
"""Shortest time between two passes of the tracker over the fleet."""

STALE_S = 60.0
"""Finished reports older than this before the rollout started do not count."""


def _client_id() -> str:
    return f"edge-fleet-{uuid.uuid4().hex[:10]}"


# --------------------------------------------------------------------------- announcements


def manifest_version(ann: Announcement) -> tuple[str, str]:
    """(model name, version) of the manifest an announcement carries."""
    name, version, _ = manifest_build(ann)
    return name, version


def manifest_build(ann: Announcement) -> tuple[str, str, str]:
    """(model name, version, artifact sha256): the exact build an announcement offers."""
    try:
        m = parse_manifest(ann.manifest_bytes)
    except PackageError as exc:
        raise UpdateError("bad_manifest", f"announcement on {ann.channel}: {exc}") from exc
    return m.name, m.version, m.artifact.sha256


def announcement_from_package(
    path: Path, channel: str, base_url: str, targets: Targets
) -> Announcement:
    """Announce a package file whose files are in the artifact store under ``base_url``
    (``<base>/<model>/<version>/model.tflite`` and ``.../<model>-<version>.eapkg``)."""
    pkg = read_package(path)
    name, version = pkg.manifest.name, pkg.manifest.version
    base = f"{base_url.rstrip('/')}/{name}/{version}"
    return Announcement(
        channel=channel,
        manifest=pkg.manifest_bytes.decode("utf-8"),
        signature=pkg.signature.signature if pkg.signature else None,
        key_id=pkg.key_id,
        url=f"{base}/model.tflite",
        package_url=f"{base}/{pkg.filename}",
        targets=targets,
        published_at=utc_now(),
    )


def _parse(topic: str, payload: bytes | None) -> Announcement | None:
    if not payload:
        return None
    try:
        return Announcement.model_validate_json(payload)
    except ValidationError as exc:
        raise UpdateError(
            "bad_announcement",
            f"the retained message on {topic} is not an announcement ({exc.error_count()} "
            "problem(s)); clear or fix it first",
        ) from None


def current_announcements(
    settings: MqttSection, password: str | None, model: str, channels: Iterable[str]
) -> dict[str, Announcement | None]:
    """Channel -> its retained announcement for ``model`` (None when there is none)."""
    topics = {c: ota_topic(settings.topic_prefix, c, model) for c in channels}
    retained = collect_retained(settings, _client_id(), list(topics.values()), password=password)
    return {c: _parse(t, retained.get(t)) for c, t in topics.items()}


def check_newer(new: Announcement, current: Announcement | None, force: bool) -> None:
    """Versions only go up within a channel (the same version may be re-announced)."""
    if current is None or force:
        return
    _, new_v = manifest_version(new)
    _, cur_v = manifest_version(current)
    if Version.parse(new_v) < Version.parse(cur_v):
        raise UpdateError(
            "version_not_newer",
            f"channel {new.channel} offers {cur_v}; announcing the older {new_v} needs --force",
        )


def announce(settings: MqttSection, password: str | None, model: str, ann: Announcement) -> str:
    """Publish ``ann`` retained on its channel's topic; the topic."""
    topic = ota_topic(settings.topic_prefix, ann.channel, model)
    msg = OutgoingMessage(topic, ann.to_bytes(), qos=1, retain=True)
    publish_once(settings, _client_id(), [msg], password=password)
    return topic


def promote(
    settings: MqttSection,
    password: str | None,
    model: str,
    *,
    source: str = "canary",
    dest: str = "stable",
    version: str | None = None,
    targets: Targets | None = None,
    force: bool = False,
) -> Announcement:
    """Re-announce ``source``'s signed manifest on ``dest`` (same signature, same URLs)."""
    current = current_announcements(settings, password, model, [source, dest])
    src = current[source]
    if src is None:
        raise UpdateError("no_announcement", f"channel {source} announces nothing for {model}")
    _, src_version = manifest_version(src)
    if version is not None and Version.parse(version) != Version.parse(src_version):
        raise UpdateError(
            "version_mismatch", f"channel {source} offers {model} {src_version}, not {version}"
        )
    new = src.model_copy(
        update={"channel": dest, "targets": targets or Targets(), "published_at": utc_now()}
    )
    check_newer(new, current[dest], force)
    topic = announce(settings, password, model, new)
    log.info("promoted %s %s from %s to %s (%s)", model, src_version, source, dest, topic)
    return new


# --------------------------------------------------------------------------- following


@dataclass(frozen=True)
class RolloutPolicy:
    """When a rollout aborts and how long it is followed."""

    max_failure_fraction: float = 0.2
    """Abort when more than this share of the devices involved failed (0: any failure)."""
    timeout_s: float = 600.0
    """Stop following (not the rollout) after this long."""
    discover_s: float = 5.0
    """Before announcing, wait up to this long for metrics from every online device (their
    groups and channels decide who is targeted); set it to the agents' metrics interval."""

    def to_json(self) -> dict[str, float]:
        return {
            "max_failure_fraction": self.max_failure_fraction,
            "timeout_s": self.timeout_s,
            "discover_s": self.discover_s,
        }


class Outcome(StrEnum):
    """How a rollout ended (or where it stands)."""

    ANNOUNCED = "announced"
    RUNNING = "running"
    COMPLETED = "completed"
    ABORTED = "aborted"
    TIMED_OUT = "timed_out"


@dataclass
class RolloutTracker:
    """Progress of one rollout of an exact build (version + artifact sha256); no I/O.

    * succeeded: the device reports this build (same sha256) ``active`` and through its health
      window -- or already ran it when the rollout started (counted at once);
    * failed: it refused this build (a reason other than "not for me"), or reports it
      ``failed`` / ``rolled_back``; an agent that reports no sha256 is matched on the version
      for failures (the safe side) but never for success;
    * the abort threshold counts every failure against every device involved.
    """

    model: str
    version: str
    sha256: str
    channel: str
    targets: Targets
    policy: RolloutPolicy
    started: float
    targeted: set[str] = field(default_factory=set)
    succeeded: set[str] = field(default_factory=set)
    already: set[str] = field(default_factory=set)
    """Targeted devices that were running this build already."""
    failed: dict[str, str] = field(default_factory=dict)

    def _eligible(self, d: DeviceState) -> bool:
        if not (d.online and d.has_metrics and d.model == self.model):
            return False
        if d.ota_channels is None or self.channel not in d.ota_channels:
            return False
        return self.targets.includes(d.device, d.groups, self.model, self.version)

    def _runs_it(self, d: DeviceState) -> bool:
        ota = d.ota
        return (
            ota is not None
            and ota.running == self.version
            and ota.running_sha256 == self.sha256
            and ota.state not in IN_PROGRESS
        )

    def update(self, devices: Iterable[DeviceState]) -> list[str]:
        """Take in the latest states; returns what changed, as lines for the operator."""
        events: list[str] = []
        for d in devices:
            if d.device not in self.targeted and self._eligible(d):
                self.targeted.add(d.device)
                if self._runs_it(d) and d.device not in self.failed:
                    self.already.add(d.device)
                    self.succeeded.add(d.device)
                    events.append(f"{d.device}: already runs {self.version}")
                else:
                    events.append(f"{d.device}: targeted")
            report = self._report(d)
            if report is None:
                continue
            if d.has_metrics and not self.targets.includes(
                d.device, d.groups, self.model, self.version
            ):
                continue  # e.g. refused (bad signature) by a device the rollout leaves out
            if report.failed:
                label = report.state + (f" ({report.reason})" if report.reason else "")
                if self.failed.get(d.device) != label:
                    self.succeeded.discard(d.device)
                    self.already.discard(d.device)
                    self.failed[d.device] = label
                    events.append(f"{d.device}: {label} {self.version}")
            elif (
                report.is_build(self.version, self.sha256)
                and d.device not in self.succeeded
                and d.device not in self.failed
            ):
                self.succeeded.add(d.device)
                events.append(f"{d.device}: {report.state} {self.version}")
        return events

    def _report(self, d: DeviceState) -> OtaReport | None:
        """The device's latest finished report about this build (recent enough)."""
        found = [
            r
            for r in (
                d.outcomes.get((self.version, self.sha256)),
                d.outcomes.get((self.version, None)),
            )
            if r is not None and not (r.ts is not None and r.ts < self.started - STALE_S)
        ]
        failures = [r for r in found if r.failed]
        return failures[0] if failures else (found[0] if found else None)

    @property
    def involved(self) -> set[str]:
        return self.targeted | self.succeeded | set(self.failed)

    @property
    def failure_fraction(self) -> float:
        return len(self.failed) / max(1, len(self.involved))

    @property
    def pending(self) -> set[str]:
        return self.targeted - self.succeeded - set(self.failed)

    def decision(self) -> Outcome | None:
        if self.failed and self.failure_fraction > self.policy.max_failure_fraction:
            return Outcome.ABORTED
        if self.targeted and not self.pending:
            return Outcome.COMPLETED
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "targeted": sorted(self.targeted),
            "succeeded": sorted(self.succeeded),
            "already": sorted(self.already),
            "failed": dict(sorted(self.failed.items())),
        }


@dataclass
class RolloutReport:
    """The result of a rollout: who was targeted, who succeeded or failed, the outcome."""

    model: str
    version: str
    sha256: str
    channel: str
    topic: str
    outcome: Outcome
    targeted: list[str]
    succeeded: list[str]
    already: list[str]
    failed: dict[str, str]
    pending: list[str]
    failure_fraction: float
    previous_version: str | None
    restored: bool = False
    restored_text: str | None = None
    """What the abort did to the channel (``re-announced 1.0.0`` / ``cleared the channel``)."""

    def failure_reasons(self) -> dict[str, int]:
        return dict(Counter(self.failed.values()).most_common())

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "sha256": self.sha256,
            "channel": self.channel,
            "topic": self.topic,
            "outcome": self.outcome.value,
            "targeted": self.targeted,
            "succeeded": self.succeeded,
            "already": self.already,
            "failed": self.failed,
            "failure_reasons": self.failure_reasons(),
            "pending": self.pending,
            "failure_fraction": round(self.failure_fraction, 4),
            "previous_version": self.previous_version,
            "restored": self.restored,
            "restored_text": self.restored_text,
        }


# --------------------------------------------------------------------------- rollout state


@dataclass
class Rollout:
    """One rollout, as kept on disk (``RolloutStore``) so it can be resumed or aborted from
    another process: the announcement, what it replaced, the policy and the progress."""

    announcement: Announcement
    previous: Announcement | None
    policy: RolloutPolicy
    tracker: RolloutTracker
    topic: str
    outcome: Outcome = Outcome.RUNNING
    restored_text: str | None = None

    @property
    def key(self) -> str:
        return f"{self.tracker.channel}-{self.tracker.model}"

    def to_json(self) -> dict[str, Any]:
        t = self.tracker
        return {
            "v": 1,
            "announcement": json.loads(self.announcement.to_bytes()),
            "previous": None if self.previous is None else json.loads(self.previous.to_bytes()),
            "policy": self.policy.to_json(),
            "started": t.started,
            "topic": self.topic,
            "outcome": self.outcome.value,
            "restored_text": self.restored_text,
            "progress": t.to_json(),
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Rollout:
        ann = Announcement.model_validate(obj["announcement"])
        prev = obj.get("previous")
        policy = RolloutPolicy(**obj["policy"])
        model, version, sha = manifest_build(ann)
        progress = obj.get("progress", {})
        tracker = RolloutTracker(
            model,
            version,
            sha,
            ann.channel,
            ann.targets,
            policy,
            float(obj["started"]),
            targeted=set(progress.get("targeted", [])),
            succeeded=set(progress.get("succeeded", [])),
            already=set(progress.get("already", [])),
            failed=dict(progress.get("failed", {})),
        )
        return cls(
            announcement=ann,
            previous=None if prev is None else Announcement.model_validate(prev),
            policy=policy,
            tracker=tracker,
            topic=str(obj["topic"]),
            outcome=Outcome(obj.get("outcome", "running")),
            restored_text=obj.get("restored_text"),
        )

    def report(self) -> RolloutReport:
        t = self.tracker
        return RolloutReport(
            model=t.model,
            version=t.version,
            sha256=t.sha256,
            channel=t.channel,
            topic=self.topic,
            outcome=self.outcome,
            targeted=sorted(t.targeted),
            succeeded=sorted(t.succeeded),
            already=sorted(t.already),
            failed=dict(sorted(t.failed.items())),
            pending=sorted(t.pending),
            failure_fraction=t.failure_fraction,
            previous_version=None if self.previous is None else manifest_version(self.previous)[1],
            restored=self.restored_text is not None,
            restored_text=self.restored_text,
        )


class RolloutStore:
    """Rollouts on disk, one JSON file per channel and model (``agent.durable``)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @staticmethod
    def default_dir() -> Path:
        base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        return Path(base) / "edge-fleet" / "rollouts"

    def path(self, channel: str, model: str) -> Path:
        return self.directory / f"{channel}-{model}.json"

    def save(self, r: Rollout) -> Path:
        path = self.path(r.tracker.channel, r.tracker.model)
        try:
            atomic_write(path, json.dumps(r.to_json(), indent=1).encode())
        except OSError as exc:
            raise UpdateError("storage", f"cannot keep the rollout in {path}: {exc}") from exc
        return path

    def load(self, channel: str, model: str) -> Rollout:
        path = self.path(channel, model)
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
            return Rollout.from_json(obj)
        except FileNotFoundError:
            raise UpdateError(
                "no_rollout", f"no rollout of {model} on {channel} to resume ({path} is missing)"
            ) from None
        except (ValueError, KeyError, TypeError, ValidationError) as exc:
            raise UpdateError("bad_rollout_state", f"{path}: not a rollout state: {exc}") from exc


def _restore(
    settings: MqttSection, password: str | None, topic: str, previous: Announcement | None
) -> None:
    if previous is not None:
        again = previous.model_copy(update={"published_at": utc_now()})
        msg = OutgoingMessage(topic, again.to_bytes(), qos=1, retain=True)
    else:
        msg = OutgoingMessage(topic, b"", qos=1, retain=True)  # clears the retained message
    publish_once(settings, _client_id(), [msg], password=password)


def start_rollout(
    settings: MqttSection,
    password: str | None,
    ann: Announcement,
    policy: RolloutPolicy,
    *,
    force: bool = False,
    store: RolloutStore | None = None,
) -> Rollout:
    """Check ``ann`` against the channel and prepare its rollout (nothing announced yet)."""
    model, version, sha = manifest_build(ann)
    topic = ota_topic(settings.topic_prefix, ann.channel, model)
    previous = current_announcements(settings, password, model, [ann.channel])[ann.channel]
    check_newer(ann, previous, force)
    if previous is not None and manifest_build(previous) == (model, version, sha):
        previous_of_previous = None
        if store is not None and store.path(ann.channel, model).exists():
            with contextlib.suppress(UpdateError):
                previous_of_previous = store.load(ann.channel, model).previous
        previous = previous_of_previous  # re-announcing the same build: keep the true one
    tracker = RolloutTracker(model, version, sha, ann.channel, ann.targets, policy, time.time())
    return Rollout(ann, previous, policy, tracker, topic)


def abort_rollout(
    settings: MqttSection,
    password: str | None,
    rollout: Rollout,
    *,
    store: RolloutStore | None = None,
) -> str:
    """Stop a rollout: re-announce the previous announcement (or clear the channel); says which."""
    _restore(settings, password, rollout.topic, rollout.previous)
    prev = rollout.previous
    text = (
        f"re-announced {manifest_version(prev)[1]}" if prev is not None else "cleared the channel"
    )
    rollout.outcome = Outcome.ABORTED
    rollout.restored_text = text
    if store is not None:
        store.save(rollout)
    log.warning(
        "rollout of %s %s on %s aborted: %s",
        rollout.tracker.model,
        rollout.tracker.version,
        rollout.tracker.channel,
        text,
    )
    return text


def follow_rollout(
    settings: MqttSection,
    password: str | None,
    rollout: Rollout,
    view: FleetView,
    *,
    store: RolloutStore | None = None,
    on_event: Callable[[str], None] = lambda line: None,
    cancel: threading.Event | None = None,
) -> Outcome:
    """Watch ``view`` until the rollout completes, aborts (and restores) or times out.

    Setting ``cancel`` (the dashboard's abort button) aborts it the same way."""
    tracker, policy = rollout.tracker, rollout.policy
    deadline = time.monotonic() + policy.timeout_s
    while True:
        if cancel is not None and cancel.is_set():
            text = abort_rollout(settings, password, rollout, store=store)
            on_event(f"ABORTED by the operator; {text}")
            return Outcome.ABORTED
        events = tracker.update(view.devices())
        for line in events:
            on_event(line)
        if events and store is not None:
            store.save(rollout)
        decided = tracker.decision()
        if decided is Outcome.ABORTED:
            text = abort_rollout(settings, password, rollout, store=store)
            on_event(
                f"ABORTED: {len(tracker.failed)} of {len(tracker.involved)} device(s) failed "
                f"(> {policy.max_failure_fraction:.0%}); {text}"
            )
            return Outcome.ABORTED
        if decided is not None:
            rollout.outcome = decided
            if store is not None:
                store.save(rollout)
            return decided
        left = deadline - time.monotonic()
        if left <= 0:
            return Outcome.TIMED_OUT
        checked = time.monotonic()
        view.wait_change(min(left, 1.0))
        # at most FOLLOW_EVERY_S between two passes over the fleet: thousands of devices
        # report many times a second, and each pass reads every device
        rest = checked + FOLLOW_EVERY_S - time.monotonic()
        if rest > 0:
            time.sleep(rest)


def run_rollout(
    settings: MqttSection,
    password: str | None,
    ann: Announcement,
    policy: RolloutPolicy,
    *,
    follow: bool = True,
    force: bool = False,
    on_event: Callable[[str], None] = lambda line: None,
    store: RolloutStore | None = None,
    cancel: threading.Event | None = None,
) -> RolloutReport:
    """Announce ``ann`` and (with ``follow``) watch it until it completes, aborts or times out
    (or ``cancel`` is set: aborted)."""
    rollout = start_rollout(settings, password, ann, policy, force=force, store=store)
    t = rollout.tracker
    with watch_fleet(settings, password) as view:
        if follow and policy.discover_s > 0:
            view.wait_for(synced_and_reported(view), policy.discover_s)
        # the devices already on this build are known before announcing
        for line in t.update(view.devices()):
            on_event(line)
        announce(settings, password, t.model, ann)
        if store is not None:
            store.save(rollout)
        on_event(f"announced {t.model} {t.version} on {ann.channel} ({_targets_text(ann.targets)})")
        outcome = Outcome.ANNOUNCED
        if follow:
            outcome = follow_rollout(
                settings, password, rollout, view, store=store, on_event=on_event, cancel=cancel
            )
    report = rollout.report()
    report.outcome = outcome
    return report


def resume_rollout(
    settings: MqttSection,
    password: str | None,
    store: RolloutStore,
    channel: str,
    model: str,
    *,
    timeout_s: float | None = None,
    on_event: Callable[[str], None] = lambda line: None,
) -> RolloutReport:
    """Continue following a rollout kept in ``store`` (after the operator's machine restarted)."""
    rollout = store.load(channel, model)
    if rollout.outcome is not Outcome.RUNNING:
        on_event(f"the rollout already ended: {rollout.outcome.value}")
        return rollout.report()
    if timeout_s is not None:
        rollout.policy = replace(rollout.policy, timeout_s=timeout_s)
        rollout.tracker.policy = rollout.policy
    now = current_announcements(settings, password, model, [channel])[channel]
    if now is None or manifest_build(now) != manifest_build(rollout.announcement):
        raise UpdateError(
            "rollout_superseded",
            f"channel {channel} no longer announces {model} {rollout.tracker.version} "
            f"(sha256 {rollout.tracker.sha256[:12]}); nothing to resume",
        )
    on_event(f"resuming {model} {rollout.tracker.version} on {channel}")
    with watch_fleet(settings, password) as view:
        view.wait_for(synced_and_reported(view), rollout.policy.discover_s)
        outcome = follow_rollout(settings, password, rollout, view, store=store, on_event=on_event)
    report = rollout.report()
    report.outcome = outcome
    return report


def synced_and_reported(view: FleetView) -> Callable[[list[DeviceState]], bool]:
    """Every retained message is in (``view.synced``) and every online device reported."""
    return lambda devices: view.synced.is_set() and all_reported(devices)


def _targets_text(t: Targets) -> str:
    groups = ", ".join(t.groups) if t.groups else "all groups"
    return f"{groups}, {t.percent:g}%"
