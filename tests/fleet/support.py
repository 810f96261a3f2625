"""Helpers for the observability and fleet tests: agent configs, manifests, simulated devices."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.release.manifest import (
    Announcement,
    Artifact,
    BuildInfo,
    EncodedArray,
    GoldenSample,
    Manifest,
    Targets,
    TensorSpec,
    utc_now,
)
from agent.wire.ota import OtaStateV1, Refusal
from tests.broker import Broker

WINDOW, CHANNELS = 32, 3
LABELS = ["normal", "anomaly"]

DEMO = "builtin:demo"
"""The demo model shipped in the package (agent/model/demo/model.tflite)."""


def agent_config(
    tmp: Path,
    broker: Broker,
    device: str = "dev-1",
    groups: list[str] | None = None,
    **tables: Any,
) -> dict[str, Any]:
    """An agent config dict (for ``tests.agentproc.write_config`` or ``parse_config``)."""
    cfg: dict[str, Any] = {
        "agent": {
            "device_id": device,
            "groups": groups or [],
            "state_dir": str(tmp / f"state-{device}"),
            "shutdown_timeout_s": 2.0,
        },
        "model": {"path": DEMO, "name": "demo", "version": "1.0.0"},
        "window": {"length": WINDOW, "hop": 16},
        "postprocess": {"type": "classification", "labels": LABELS},
        "mqtt": {
            "host": broker.host,
            "port": broker.port,
            "reconnect_min_s": 0.1,
            "reconnect_max_s": 1.0,
        },
        "sources": [{"type": "synthetic", "name": "accel", "channels": CHANNELS, "rate_hz": 200.0}],
    }
    for k, v in tables.items():
        cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) else v
    return cfg


# --------------------------------------------------------------------------- manifests


def make_manifest(name: str, version: str, content: bytes = b"TFL3-not-a-model") -> Manifest:
    """A valid (unsigned) manifest for ``content``: enough for announcements."""
    arr = EncodedArray.from_numpy(np.zeros((1, 2), np.float32))
    return Manifest(
        name=name,
        version=version,
        created=utc_now(),
        mode="float32",
        artifact=Artifact(sha256=hashlib.sha256(content).hexdigest(), size=len(content)),
        inputs=[TensorSpec(name="x", shape=[1, WINDOW, CHANNELS], dtype="float32")],
        outputs=[TensorSpec(name="y", shape=[1, 2], dtype="float32")],
        labels=LABELS,
        min_agent_version="0.1.0",
        build=BuildInfo(converter="0.1.0", runtime="test"),
        golden=[GoldenSample(name="g0", inputs=[arr], outputs=[arr], atol=0.1)],
    )


def make_announcement(
    name: str, version: str, channel: str, targets: Targets | None = None
) -> Announcement:
    m = make_manifest(name, version)
    return Announcement(
        channel=channel,
        manifest=m.to_bytes().decode(),
        signature=base64.b64encode(b"x" * 64).decode(),
        key_id="0123456789abcdef",
        url=f"http://store.invalid/{name}/{version}/model.tflite",
        targets=targets or Targets(),
        published_at=utc_now(),
    )


def retained_announcement(broker: Broker, topic: str) -> Announcement | None:
    """The retained announcement on ``topic`` as an independent client sees it."""
    got: list[bytes] = []
    done = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"peek-{uuid.uuid4().hex[:8]}")

    def on_connect(cl: mqtt.Client, u: object, f: object, rc: object, p: object) -> None:
        cl.subscribe(topic, 1)

    def on_subscribe(cl: mqtt.Client, u: object, mid: int, rc: object, p: object) -> None:
        threading.Timer(0.5, done.set).start()  # retained arrive right after SUBACK

    def on_message(cl: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        if msg.retain:
            got.append(bytes(msg.payload))
            done.set()

    c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
    c.connect(broker.host, broker.port)
    c.loop_start()
    try:
        done.wait(10)
    finally:
        c.disconnect()
        c.loop_stop()
    return Announcement.model_validate_json(got[0]) if got and got[0] else None


# --------------------------------------------------------------------------- devices


class SimulatedDevice:
    """A device that is not an agent: plain paho, retained status (with a last will), metrics,
    and an OTA updater that answers every announcement it is targeted by with ``answer``
    (e.g. ``failed``), publishing the retained OTA state the real updater would."""

    def __init__(
        self,
        broker: Broker,
        device: str,
        groups: list[str],
        *,
        answer: str = "failed",
        model: str = "demo",
        version: str = "1.0.0",
        channels: tuple[str, ...] = ("canary", "stable"),
        prefix: str = "edge",
    ) -> None:
        self.broker = broker
        self.device = device
        self.groups = groups
        self.answer = answer
        self.model = model
        self.version = version
        self.channels = channels
        self.prefix = prefix
        self.seen: list[str] = []
        self._stop = threading.Event()
        c = self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sim-{device}")
        c.will_set(f"{prefix}/{device}/status", b"offline", 1, True)
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        self._thread = threading.Thread(target=self._metrics_loop, daemon=True)

    def _on_connect(self, c: mqtt.Client, u: object, f: object, rc: object, p: object) -> None:
        c.publish(f"{self.prefix}/{self.device}/status", b"online", 1, True)
        c.subscribe([(f"{self.prefix}/ota/{ch}/{self.model}", 1) for ch in self.channels])

    def _on_message(self, c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        if not msg.payload:
            return
        ann = Announcement.model_validate_json(msg.payload)
        manifest = json.loads(ann.manifest)
        version, sha = manifest["version"], manifest["artifact"]["sha256"]
        self.seen.append(version)
        if version == self.version:
            return
        if not ann.targets.includes(self.device, self.groups, self.model, version):
            return
        self.report(version, sha)

    def report(self, version: str, sha256: str) -> None:
        """Publish the retained OtaStateV1 a real updater would after ``answer`` for it."""
        fields: dict[str, Any] = {"running": self.version, "version": version, "sha256": sha256}
        if self.answer == "active":
            fields |= {"state": "active", "health": "passed", "running": version}
            fields["running_sha256"] = sha256
            self.version = version
        elif self.answer == "refused":
            refusal = Refusal(
                version=version,
                sha256=sha256,
                reason="bad_signature",
                detail="signature does not verify",
                source="channel:canary",
                at=time.time(),
            )
            fields |= {"state": "idle", "version": self.version, "refusal": refusal}
            fields["sha256"] = None
        else:  # failed / rolled_back
            fields |= {"state": self.answer, "reason": "smoke_test", "detail": "golden mismatch"}
        state = OtaStateV1(device=self.device, model=self.model, ts=time.time(), **fields)
        self.client.publish(
            f"{self.prefix}/{self.device}/ota", state.model_dump_json().encode(), 1, True
        )

    def _metrics_loop(self) -> None:
        while not self._stop.wait(0.2):
            m = {
                "v": 1,
                "device": self.device,
                "groups": self.groups,
                "ota_channels": list(self.channels),
                "ts": time.time(),
                "agent_version": "sim",
                "model": {"name": self.model, "version": self.version},
                "rates": {"samples_per_s": 0.0, "predictions_per_s": 0.0},
                "queue": {"depth": 0, "dropped": 0},
            }
            self.client.publish(f"{self.prefix}/{self.device}/metrics", json.dumps(m).encode(), 0)

    def crash(self) -> None:
        """Die without a DISCONNECT (like ``kill -9`` or a pulled plug): the broker sees the
        connection drop and publishes the last will (``offline``, retained)."""
        self._stop.set()
        self._thread.join(2)
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.close()

    def __enter__(self) -> SimulatedDevice:
        self.client.connect(self.broker.host, self.broker.port)
        self.client.loop_start()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)
        self.client.disconnect()
        self.client.loop_stop()
