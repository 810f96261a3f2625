"""Rollouts: announce a model version on a channel, follow the fleet, stop when too many fail.

As Greengrass deployments and hawkBit rollouts do, a rollout has an abort threshold:

1. read the channel's current retained announcement (``<prefix>/ota/<channel>/<model>``): the
   version to go back to;
2. start watching the fleet (``FleetView``), wait up to ``discover_s`` for every online
   device's metrics (groups, channels), then publish the new ``Announcement`` retained;
3. follow the devices' OTA reports for *this* version (``agent.fleet.view``: success is
   ``active`` through the health window; failure is ``failed``, ``rolled_back`` or a refusal
   such as ``bad_signature``; reports from devices the targets leave out are ignored).
   ``targeted`` are the devices that should take it: online, running this model, following
   this channel (``MetricsV1.ota_channels``) and inside ``Targets`` (groups and percent);
   devices that report for the version count too;
4. abort when ``failed / (targeted + reporting) > max_failure_fraction``: re-announce the
   previous announcement (with a fresh ``published_at``) or, when there was none, clear the
   channel;
5. complete when every targeted device has finished; give up following after ``timeout_s``
   (the announcement stays: a device that was offline takes it when it comes back).

A finished report counts when it is at most ``STALE_S`` older than the rollout (by its ``ts``,
else by when it arrived), so a failure left over from an old attempt at the same version
aborts a new rollout only when it is recent.

``promote`` re-announces the *same* signed manifest from one channel on another (canary ->
stable). Versions only go up within a channel: announcing an older version than the channel
has is refused unless ``force``.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agent.config import MqttSection
from agent.delivery.mqtt import OutgoingMessage, collect_retained, publish_once
from agent.errors import PackageError, UpdateError
from agent.fleet.view import DeviceState, all_reported, watch_fleet
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

STALE_S = 60.0
"""Finished reports older than this before the rollout started do not count."""


def _client_id() -> str:
    return f"edge-fleet-{uuid.uuid4().hex[:10]}"


# --------------------------------------------------------------------------- announcements


def manifest_version(ann: Announcement) -> tuple[str, str]:
    """(model name, version) of the manifest an announcement carries."""
    try:
        m = parse_manifest(ann.manifest_bytes)
    except PackageError as exc:
        raise UpdateError("bad_manifest", f"announcement on {ann.channel}: {exc}") from exc
    return m.name, m.version


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
    max_failure_fraction: float = 0.2
    """Abort when more than this share of the devices involved failed (0: any failure)."""
    timeout_s: float = 600.0
    """Stop following (not the rollout) after this long."""
    discover_s: float = 5.0
    """Before announcing, wait up to this long for metrics from every online device (their
    groups and channels decide who is targeted); set it to the agents' metrics interval."""


class Outcome(StrEnum):
    ANNOUNCED = "announced"
    COMPLETED = "completed"
    ABORTED = "aborted"
    TIMED_OUT = "timed_out"


@dataclass
class RolloutTracker:
    """Progress of one rollout from the devices' states; no I/O."""

    model: str
    version: str
    channel: str
    targets: Targets
    policy: RolloutPolicy
    started: float
    targeted: set[str] = field(default_factory=set)
    succeeded: set[str] = field(default_factory=set)
    failed: dict[str, str] = field(default_factory=dict)

    def _targets(self, d: DeviceState) -> bool:
        if not (d.online and d.has_metrics and d.model == self.model):
            return False
        if d.ota_channels is None or self.channel not in d.ota_channels:
            return False
        if d.version is not None and d.version == self.version:
            return False  # already runs it
        return self.targets.includes(d.device, d.groups, self.model, self.version)

    def update(self, devices: Iterable[DeviceState]) -> list[str]:
        """Take in the latest states; returns what changed, as lines for the operator."""
        events: list[str] = []
        for d in devices:
            if d.device not in self.targeted and self._targets(d):
                self.targeted.add(d.device)
                events.append(f"{d.device}: targeted")
            report = d.outcomes.get(self.version)
            if report is None or (report.ts is not None and report.ts < self.started - STALE_S):
                continue
            if d.has_metrics and not self.targets.includes(
                d.device, d.groups, self.model, self.version
            ):
                continue  # e.g. refused (bad signature) by a device the rollout leaves out
            if report.failed:
                if self.failed.get(d.device) != report.state:
                    self.succeeded.discard(d.device)
                    why = f" ({report.reason})" if report.reason else ""
                    self.failed[d.device] = report.state + why
                    events.append(f"{d.device}: {report.state} {self.version}{why}")
            elif d.device not in self.succeeded and d.device not in self.failed:
                self.succeeded.add(d.device)
                events.append(f"{d.device}: {report.state} {self.version}")
        return events

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


@dataclass
class RolloutReport:
    model: str
    version: str
    channel: str
    topic: str
    outcome: Outcome
    targeted: list[str]
    succeeded: list[str]
    failed: dict[str, str]
    pending: list[str]
    failure_fraction: float
    previous_version: str | None
    restored: bool = False
    abort_reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "channel": self.channel,
            "topic": self.topic,
            "outcome": self.outcome.value,
            "targeted": self.targeted,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "pending": self.pending,
            "failure_fraction": round(self.failure_fraction, 4),
            "previous_version": self.previous_version,
            "restored": self.restored,
            "abort_reason": self.abort_reason,
        }


def _restore(
    settings: MqttSection, password: str | None, topic: str, previous: Announcement | None
) -> None:
    if previous is not None:
        again = previous.model_copy(update={"published_at": utc_now()})
        msg = OutgoingMessage(topic, again.to_bytes(), qos=1, retain=True)
    else:
        msg = OutgoingMessage(topic, b"", qos=1, retain=True)  # clears the retained message
    publish_once(settings, _client_id(), [msg], password=password)


def run_rollout(
    settings: MqttSection,
    password: str | None,
    ann: Announcement,
    policy: RolloutPolicy,
    *,
    follow: bool = True,
    force: bool = False,
    on_event: Callable[[str], None] = lambda line: None,
    on_progress: Callable[[RolloutTracker], None] = lambda tracker: None,
    cancel: threading.Event | None = None,
) -> RolloutReport:
    """Announce ``ann`` and (with ``follow``) watch it until it completes, aborts or times out.

    ``on_progress`` sees the tracker after every update (the dashboard draws it); setting
    ``cancel`` aborts the rollout as too many failures would: the previous announcement is
    restored."""
    model, version = manifest_version(ann)
    topic = ota_topic(settings.topic_prefix, ann.channel, model)
    previous = current_announcements(settings, password, model, [ann.channel])[ann.channel]
    check_newer(ann, previous, force)
    prev_version = manifest_version(previous)[1] if previous is not None else None
    tracker = RolloutTracker(model, version, ann.channel, ann.targets, policy, time.time())
    with watch_fleet(settings, password) as view:
        if follow and policy.discover_s > 0:
            view.wait_for(all_reported, policy.discover_s)
        announce(settings, password, model, ann)
        on_event(f"announced {model} {version} on {ann.channel} ({_targets_text(ann.targets)})")
        outcome = Outcome.ANNOUNCED
        reason: str | None = None
        if follow:
            deadline = time.monotonic() + policy.timeout_s
            while True:
                for line in tracker.update(view.devices()):
                    on_event(line)
                on_progress(tracker)
                if cancel is not None and cancel.is_set():
                    outcome, reason = Outcome.ABORTED, "aborted by the operator"
                    break
                decided = tracker.decision()
                if decided is not None:
                    outcome = decided
                    if decided is Outcome.ABORTED:
                        reason = (
                            f"{len(tracker.failed)} of {len(tracker.involved)} device(s) failed "
                            f"(> {policy.max_failure_fraction:.0%})"
                        )
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    outcome = Outcome.TIMED_OUT
                    break
                view.wait_change(min(left, 1.0))
    report = RolloutReport(
        model=model,
        version=version,
        channel=ann.channel,
        topic=topic,
        outcome=outcome,
        targeted=sorted(tracker.targeted),
        succeeded=sorted(tracker.succeeded),
        failed=dict(sorted(tracker.failed.items())),
        pending=sorted(tracker.pending),
        failure_fraction=tracker.failure_fraction,
        previous_version=prev_version,
        abort_reason=reason,
    )
    if outcome is Outcome.ABORTED:
        _restore(settings, password, topic, previous)
        report.restored = True
        back = f"re-announced {prev_version}" if prev_version else "cleared the channel"
        on_event(f"ABORTED: {reason}; {back}")
        log.warning("rollout of %s %s on %s aborted", model, version, ann.channel)
    return report


def _targets_text(t: Targets) -> str:
    groups = ", ".join(t.groups) if t.groups else "all groups"
    return f"{groups}, {t.percent:g}%"
