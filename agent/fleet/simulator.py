"""A fleet simulator: thousands of devices in one process, each a real MQTT client.

Every simulated device has its own client id and connection (``agent.delivery.mqtt.swarm``: one
network thread and one selector for all of them) and speaks the agent's wire format with the
agent's own models, imported, not copied:

    <prefix>/<device>/status     retained "online", last will "offline" (agent.wire.topics)
    <prefix>/<device>/metrics    retained ``MetricsV1`` every ``metrics_interval_s``
    <prefix>/<device>/ota        retained ``OtaStateV1`` (with the build's sha256)
    <prefix>/<device>/prediction/<model>   ``PredictionV1`` (``prediction_dict``) at a rate
    <prefix>/ota/<channel>/<model>         subscribed: ``Announcement``s it answers

A device answers an announcement that targets it (``Targets.includes``, the agent's rule) as
its scripted *behaviour* says:

    accept          downloading -> active (health watching) -> active (passed)
    refuse:REASON   a ``Refusal`` with that reason (default bad_signature)
    fail_health     active (watching) -> rolled_back (reason error_rate), old version back
    offline[:S]     goes away without DISCONNECT after S seconds (last will) and stays away
    flap[:S]        drops its connection every S seconds and comes back a few seconds later

Whatever the behaviour, the agent's own decisions come first, as ``agent/ota/decide.py``
makes them: the running build is up to date (nothing reported), an older version is a
``version_rollback``, the same version with other bytes a ``version_reused``, a build that
failed here before ``marked_bad``.

Behaviours are given as shares (``refuse:version_reused=0.02``); each device's behaviour is
fixed by a hash of its id and the seed, so a run is repeatable.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import logging
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum

from pydantic import ValidationError

from agent.delivery.mqtt import Swarm, SwarmClient, Will, raise_fd_limit
from agent.errors import ConfigError, PackageError
from agent.release.manifest import Announcement, Version, parse_manifest
from agent.wire.metrics import MetricsV1, MqttStats, QueueStats, Rates
from agent.wire.ota import OtaStateV1, Phase, Refusal
from agent.wire.predictions import ModelRef, prediction_dict
from agent.wire.topics import OFFLINE, ONLINE, Topics

log = logging.getLogger(__name__)

SIM_AGENT_VERSION = "sim"


class Behaviour(StrEnum):
    """What a simulated device does: accept or refuse offers, fail health, go offline, flap."""

    ACCEPT = "accept"
    REFUSE = "refuse"
    FAIL_HEALTH = "fail_health"
    OFFLINE = "offline"
    FLAP = "flap"


@dataclass(frozen=True)
class Script:
    """One scripted behaviour and the share of the fleet that follows it."""

    behaviour: Behaviour
    share: float
    arg: str | None = None

    @classmethod
    def parse(cls, text: str) -> Script:
        """``BEHAVIOUR[:ARG]=SHARE``, e.g. ``refuse:version_reused=0.02``, ``flap:30=0.01``."""
        head, sep, share = text.partition("=")
        name, _, arg = head.partition(":")
        try:
            behaviour = Behaviour(name.strip())
            value = float(share) if sep else 1.0
        except ValueError:
            raise ConfigError(
                [
                    (
                        "--behave",
                        f"{text!r}: want BEHAVIOUR[:ARG]=SHARE, BEHAVIOUR one of "
                        + ", ".join(b.value for b in Behaviour),
                    )
                ],
                "simulator",
            ) from None
        if not 0.0 <= value <= 1.0:
            raise ConfigError([("--behave", f"{text!r}: the share must be in [0, 1]")], "simulator")
        return cls(behaviour, value, arg.strip() or None)


@dataclass(frozen=True)
class SimSpec:
    """The simulated fleet: size, ids, model, rates and per-device behaviour."""

    devices: int = 100
    prefix: str = "edge"
    id_prefix: str = "sim-"
    model: str = "demo"
    version: str = "1.0.0"
    sha256: str = hashlib.sha256(b"sim-initial-build").hexdigest()
    """The artifact sha256 of the build every device runs at start."""
    groups: tuple[str, ...] = ()
    """Device i is in group ``groups[i % len(groups)]`` (none when empty)."""
    channels: tuple[str, ...] = ("canary", "stable")
    metrics_interval_s: float = 10.0
    prediction_rate: float = 0.1
    """Predictions per second per device (0: none)."""
    install_s: float = 1.0
    """From accepting an offer to running it (download, verify, smoke test)."""
    health_s: float = 5.0
    """The health window."""
    scripts: tuple[Script, ...] = ()
    """Shares of scripted behaviour; the rest accept."""
    seed: int = 0
    connect_rate: float = 2000.0
    """New connections per second while the fleet comes up."""
    keepalive: int = 60

    def device_id(self, i: int) -> str:
        return f"{self.id_prefix}{i:05d}"

    def behaviour_of(self, device: str) -> tuple[Behaviour, str | None]:
        digest = hashlib.sha256(f"{self.seed}/{device}".encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2**64
        acc = 0.0
        for s in self.scripts:
            acc += s.share
            if u < acc:
                return s.behaviour, s.arg
        return Behaviour.ACCEPT, None


@dataclass(frozen=True)
class _Offer:
    channel: str
    model: str
    version: str
    sha256: str
    announcement: Announcement


@dataclass
class SimDevice:
    """One simulated device: its MQTT client, its running build and its OTA behaviour."""

    spec: SimSpec
    index: int
    device: str
    topics: Topics
    behaviour: Behaviour
    arg: str | None
    version: str
    sha256: str
    groups: list[str]
    client: SwarmClient | None = None
    online: bool = False
    gone: bool = False
    """Went offline for good (``offline`` behaviour)."""
    seq: int = 0
    predictions: int = 0
    started: float = field(default_factory=time.time)
    floor: tuple[str, str] | None = None
    bad: set[tuple[str, str]] = field(default_factory=set)
    state: OtaStateV1 | None = None
    refusal: Refusal | None = None
    busy: int = 0
    """Generation of the update in progress (0: none)."""


class Simulator:
    """Runs ``spec.devices`` simulated devices against one broker until ``stop()``."""

    def __init__(self, spec: SimSpec, host: str, port: int) -> None:
        self.spec = spec
        raise_fd_limit(spec.devices + 256)
        self.swarm = Swarm(host, port, spec.keepalive)
        self._rng = random.Random(spec.seed)  # noqa: S311 (jitter, not secrets)
        self._offers: dict[bytes, _Offer | None] = {}
        self.devices = [self._make(i) for i in range(spec.devices)]
        self._connected = threading.Condition()
        self._online = 0
        self.counts: Counter[str] = Counter()
        self._gens = itertools.count(1)

    def _make(self, i: int) -> SimDevice:
        s = self.spec
        device = s.device_id(i)
        behaviour, arg = s.behaviour_of(device)
        groups = [s.groups[i % len(s.groups)]] if s.groups else []
        return SimDevice(
            spec=s,
            index=i,
            device=device,
            topics=Topics(s.prefix, device),
            behaviour=behaviour,
            arg=arg,
            version=s.version,
            sha256=s.sha256,
            groups=groups,
        )

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        step = 1.0 / self.spec.connect_rate if self.spec.connect_rate > 0 else 0.0
        t0 = time.monotonic()
        for d in self.devices:
            self.swarm.call_at(t0 + d.index * step, functools.partial(self._connect, d))
        self.swarm.start()

    def stop(self, *, clear: bool = False) -> None:
        """Stop every device as the agent stops: retained ``offline``, then DISCONNECT.
        ``clear``: remove the devices' retained messages instead (leave the broker clean)."""
        done = threading.Event()

        def bye() -> None:
            for d in self.devices:
                if d.client is not None and d.client.connected:
                    if clear:
                        for t in (d.topics.status, d.topics.metrics, d.topics.ota_state):
                            d.client.publish(t, b"", 1, True)
                    else:
                        d.client.publish(d.topics.status, OFFLINE, 1, True)
            done.set()

        self.swarm.call_soon_threadsafe(bye)
        done.wait(30)
        self.swarm.stop()

    @property
    def online(self) -> int:
        with self._connected:
            return self._online

    def wait_online(self, n: int, timeout: float) -> bool:
        """Block until at least ``n`` devices are connected and have said so."""
        with self._connected:
            return self._connected.wait_for(lambda: self._online >= n, timeout)

    def behaviours(self) -> Counter[str]:
        return Counter(d.behaviour.value for d in self.devices)

    # ------------------------------------------------------------------ connections

    def _connect(self, d: SimDevice) -> None:
        if d.gone:
            return
        d.client = self.swarm.client(
            f"{d.device}",
            will=Will(d.topics.status, OFFLINE, 1, True),
            on_connect=lambda c: self._on_connect(d, c),
            on_message=lambda c, t, p: self._on_message(d, t, p),
            on_lost=lambda c: self._on_lost(d, c),
        )

    def _set_online(self, d: SimDevice, online: bool) -> None:
        if d.online == online:
            return
        d.online = online
        with self._connected:
            self._online += 1 if online else -1
            self._connected.notify_all()

    def _on_connect(self, d: SimDevice, c: SwarmClient) -> None:
        if c is not d.client:
            return
        s = self.spec
        c.publish(d.topics.status, ONLINE, 1, True)
        if d.state is None:
            self._report(d, "idle", d.version, d.sha256)
        else:
            c.publish(d.topics.ota_state, _dump(d.state), 1, True)
        self._metrics(d, schedule=False)
        c.subscribe([(d.topics.ota_channel(ch, s.model), 1) for ch in s.channels])
        self._set_online(d, True)
        jitter = self._rng.random()
        self.swarm.call_later(s.metrics_interval_s * jitter, lambda: self._metrics(d, c))
        if s.prediction_rate > 0:
            self.swarm.call_later(jitter / s.prediction_rate, lambda: self._predict(d, c))
        if d.behaviour is Behaviour.OFFLINE:
            after = float(d.arg) if d.arg else 5.0
            self.swarm.call_later(after, lambda: self._vanish(d, c, forever=True))
        elif d.behaviour is Behaviour.FLAP:
            period = float(d.arg) if d.arg else 20.0
            self.swarm.call_later(period * (0.5 + jitter), lambda: self._vanish(d, c))

    def _vanish(self, d: SimDevice, c: SwarmClient, *, forever: bool = False) -> None:
        if c is not d.client or not c.connected:
            return
        self.counts["dropped"] += 1
        d.gone = forever
        c.drop()
        d.client = None
        self._set_online(d, False)
        if not forever:
            self.swarm.call_later(2.0 + 3.0 * self._rng.random(), lambda: self._connect(d))

    def _on_lost(self, d: SimDevice, c: SwarmClient) -> None:
        if c is not d.client:
            return
        self.counts["lost"] += 1
        d.client = None
        self._set_online(d, False)
        self.swarm.call_later(1.0 + 4.0 * self._rng.random(), lambda: self._connect(d))

    # ------------------------------------------------------------------ what devices send

    def _metrics(self, d: SimDevice, c: SwarmClient | None = None, schedule: bool = True) -> None:
        if c is not None and c is not d.client:
            return
        client = d.client
        if client is None or not client.connected:
            return
        s = self.spec
        now = time.time()
        rate = s.prediction_rate
        m = MetricsV1(
            device=d.device,
            groups=d.groups,
            ota_channels=list(s.channels),
            ts=now,
            agent_version=SIM_AGENT_VERSION,
            uptime_s=max(0.0, now - d.started),
            model=ModelRef(name=s.model, version=d.version),
            samples_in=d.predictions * 32,
            predictions_out=d.predictions,
            messages_acked=d.predictions,
            queue=QueueStats(depth=0, dropped=0),
            mqtt=MqttStats(connected=True, reconnects=0),
            rates=Rates(samples_per_s=rate * 32, predictions_per_s=rate),
        )
        client.publish(d.topics.metrics, m.model_dump_json().encode(), 1, True)
        self.counts["metrics"] += 1
        if schedule:
            self.swarm.call_later(s.metrics_interval_s, lambda: self._metrics(d, client))

    def _predict(self, d: SimDevice, c: SwarmClient) -> None:
        if c is not d.client or not c.connected:
            return
        s = self.spec
        payload = prediction_dict(
            d.seq,
            d.device,
            s.model,
            d.version,
            "accel",
            time.time(),
            {"label": "normal", "score": 0.9},
            0.5,
        )
        d.seq += 1
        d.predictions += 1
        c.publish(d.topics.prediction(s.model), json.dumps(payload).encode(), 1, False)
        self.counts["predictions"] += 1
        self.swarm.call_later(1.0 / s.prediction_rate, lambda: self._predict(d, c))

    def _report(
        self,
        d: SimDevice,
        phase: Phase,
        version: str,
        sha256: str | None,
        *,
        health: str | None = None,
        reason: str | None = None,
        previous: str | None = None,
        source: str | None = None,
    ) -> None:
        d.state = OtaStateV1.model_validate(
            {
                "device": d.device,
                "model": self.spec.model,
                "state": phase,
                "version": version,
                "sha256": sha256,
                "running": d.version,
                "running_sha256": d.sha256,
                "previous": previous,
                "source": source,
                "reason": reason,
                "detail": None if reason is None else f"simulated: {reason}",
                "health": health,
                "refusal": d.refusal,
                "ts": time.time(),
            }
        )
        if d.client is not None:
            d.client.publish(d.topics.ota_state, _dump(d.state), 1, True)
        self.counts[f"ota_{phase}"] += 1

    # ------------------------------------------------------------------ offers

    def _offer(self, topic: str, payload: bytes) -> _Offer | None:
        """Parse an announcement once for the whole fleet (they all get the same bytes)."""
        if payload in self._offers:
            return self._offers[payload]
        offer = None
        try:
            ann = Announcement.model_validate_json(payload)
            m = parse_manifest(ann.manifest_bytes)
            offer = _Offer(ann.channel, m.name, m.version, m.artifact.sha256, ann)
        except (ValidationError, PackageError):
            log.warning("not an announcement on %s", topic)
        if len(self._offers) > 64:
            self._offers.clear()
        self._offers[payload] = offer
        return offer

    def _on_message(self, d: SimDevice, topic: str, payload: bytes) -> None:
        if not payload:
            return
        offer = self._offer(topic, payload)
        if offer is None or offer.model != self.spec.model:
            return
        if not offer.announcement.targets.includes(d.device, d.groups, offer.model, offer.version):
            return
        if d.busy:
            return  # an update is in progress; the retained offer is seen again on reconnect
        self._decide(d, offer)

    def _refuse(self, d: SimDevice, offer: _Offer, reason: str) -> None:
        d.refusal = Refusal(
            version=offer.version,
            sha256=offer.sha256,
            reason=reason,
            detail=f"simulated: {reason}",
            source=f"channel:{offer.channel}",
            at=time.time(),
        )
        self.counts[f"refused_{reason}"] += 1
        state = d.state
        if state is not None:
            d.state = state.model_copy(update={"refusal": d.refusal, "ts": time.time()})
            if d.client is not None:
                d.client.publish(d.topics.ota_state, _dump(d.state), 1, True)

    def _decide(self, d: SimDevice, offer: _Offer) -> None:
        build = (offer.version, offer.sha256)
        if build == (d.version, d.sha256):
            return  # up_to_date: not a refusal
        if build in d.bad:
            self._refuse(d, offer, "marked_bad")
            return
        for floor_v, floor_sha in [(d.version, d.sha256), *([d.floor] if d.floor else [])]:
            if Version.parse(offer.version) < Version.parse(floor_v):
                self._refuse(d, offer, "version_rollback")
                return
            if offer.version == floor_v and offer.sha256 != floor_sha:
                self._refuse(d, offer, "version_reused")
                return
        if d.behaviour is Behaviour.REFUSE:
            self._refuse(d, offer, d.arg or "bad_signature")
            return
        d.floor = build
        d.busy = gen = next(self._gens)
        source = f"channel:{offer.channel}"
        self._report(d, "downloading", offer.version, offer.sha256, source=source)
        s = self.spec

        def install() -> None:
            if d.busy != gen:
                return
            previous = (d.version, d.sha256)
            d.version, d.sha256 = build
            self._report(
                d,
                "active",
                offer.version,
                offer.sha256,
                health="watching",
                previous=previous[0],
                source=source,
            )
            self.swarm.call_later(s.health_s, lambda: verdict(previous))

        def verdict(previous: tuple[str, str]) -> None:
            if d.busy != gen:
                return
            d.busy = 0
            if d.behaviour is Behaviour.FAIL_HEALTH:
                d.bad.add(build)
                d.version, d.sha256 = previous
                self._report(
                    d,
                    "rolled_back",
                    offer.version,
                    offer.sha256,
                    reason="error_rate",
                    previous=previous[0],
                    source=source,
                )
            else:
                self._report(
                    d,
                    "active",
                    offer.version,
                    offer.sha256,
                    health="passed",
                    previous=previous[0],
                    source=source,
                )
            self._metrics(d, schedule=False)

        self.swarm.call_later(s.install_s, install)


def _dump(state: OtaStateV1) -> bytes:
    return state.model_dump_json().encode()
