"""What a broker platform allows (``mqtt.profile``), checked against a whole config.

A fleet larger than one Mosquitto runs on a clustered broker or a cloud IoT endpoint. Their
limits are known, so a configuration that would break there is refused at ``check-config``
with the key and the platform's limit, instead of failing on the devices:

    generic        no limits beyond MQTT's own
    aws-iot-core   QoS <= 1, payload <= 128 KB, topic depth <= 7 slashes, topic <= 256 bytes,
                   client id <= 128 bytes, keepalive 30-1200 s
    emqx, hivemq   MQTT 5 (the fleet's consumers share subscriptions: ``$share/<group>/...``)

The topics are the agent's own (docs/payloads.md): ``<prefix>/<device>/prediction/<model>`` is
the deepest, ``<prefix>/ota/<channel>/<model>`` beside it, and Home Assistant's discovery
topics when enabled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.config.schema import Config

PREDICTION_BYTES = 320
"""A conservative size of one prediction's JSON, without its labels."""
LABEL_BYTES = 32
"""What each class label adds to a prediction (a name and a score)."""


@dataclass(frozen=True)
class Limits:
    """The limits of one broker platform (``mqtt.profile``); None: no limit."""

    name: str
    max_qos: int = 2
    max_payload: int | None = None
    max_slashes: int | None = None
    max_topic_bytes: int | None = None
    max_client_id: int | None = None
    keepalive: tuple[int, int] | None = None
    mqtt5: bool = False


PROFILES: dict[str, Limits] = {
    "generic": Limits("generic"),
    "aws-iot-core": Limits(
        "AWS IoT Core",
        max_qos=1,
        max_payload=128 * 1024,
        max_slashes=7,
        max_topic_bytes=256,
        max_client_id=128,
        keepalive=(30, 1200),
    ),
    "emqx": Limits("EMQX", mqtt5=True),
    "hivemq": Limits("HiveMQ", mqtt5=True),
}


def _topics(cfg: Config) -> list[tuple[str, str]]:
    """(key, topic) of the deepest topics this config makes, with the key that shapes each."""
    p = cfg.mqtt.topic_prefix
    dev = cfg.agent.device_id
    out = [("mqtt.topic_prefix", f"{p}/{dev}/prediction/{cfg.model.name}")]
    out += [("ota.channels", f"{p}/ota/{c}/{cfg.model.name}") for c in cfg.ota.channels]
    if cfg.homeassistant.enabled:
        dp = cfg.homeassistant.discovery_prefix
        out.append(("homeassistant.discovery_prefix", f"{dp}/sensor/{dev}/{dev}_x/config"))
    for i, s in enumerate(cfg.sources):
        topic = getattr(s, "topic", None)
        if isinstance(topic, str):
            out.append((f"sources.{i}.topic", topic))
    return out


def profile_problems(cfg: Config) -> list[tuple[str, str]]:
    """Every way ``cfg`` breaks the limits of ``cfg.mqtt.profile`` (key path, message)."""
    lim = PROFILES[cfg.mqtt.profile]
    on = f"on {lim.name} (mqtt.profile = {cfg.mqtt.profile!r})"
    problems: list[tuple[str, str]] = []
    if cfg.mqtt.qos > lim.max_qos:
        problems.append(
            ("mqtt.qos", f"QoS {cfg.mqtt.qos} is not supported {on}: at most QoS {lim.max_qos}")
        )
    for i, s in enumerate(cfg.sources):
        qos = getattr(s, "qos", 0)
        if qos > lim.max_qos:
            problems.append(
                (f"sources.{i}.qos", f"QoS {qos} is not supported {on}: at most QoS {lim.max_qos}")
            )
    if lim.max_payload is not None:
        labels = len(cfg.postprocess_labels())
        n = cfg.mqtt.batch.max_predictions
        size = n * (PREDICTION_BYTES + LABEL_BYTES * labels)
        if size > lim.max_payload:
            problems.append(
                (
                    "mqtt.batch.max_predictions",
                    f"{n} predictions per message make up to ~{size // 1024} KB {on}: the "
                    f"payload limit is {lim.max_payload // 1024} KB "
                    f"(at most {lim.max_payload // (PREDICTION_BYTES + LABEL_BYTES * labels)} "
                    "predictions per message)",
                )
            )
    for key, topic in _topics(cfg):
        slashes = topic.count("/")
        if lim.max_slashes is not None and slashes > lim.max_slashes:
            problems.append(
                (key, f"topic {topic!r} has {slashes} slashes {on}: at most {lim.max_slashes}")
            )
        size = len(topic.encode())
        if lim.max_topic_bytes is not None and size > lim.max_topic_bytes:
            problems.append(
                (key, f"topic {topic!r} is {size} bytes {on}: at most {lim.max_topic_bytes}")
            )
        if topic.startswith("$share/") and not lim.mqtt5:
            problems.append(
                (key, f"shared subscription {topic!r} needs mqtt.profile 'emqx' or 'hivemq'")
            )
    client_id = cfg.agent.device_id
    if lim.max_client_id is not None and len(client_id.encode()) > lim.max_client_id:
        problems.append(
            (
                "agent.device_id",
                f"the client id {client_id!r} is {len(client_id.encode())} bytes {on}: "
                f"at most {lim.max_client_id}",
            )
        )
    if lim.keepalive is not None:
        lo, hi = lim.keepalive
        if not lo <= cfg.mqtt.keepalive_s <= hi:
            problems.append(
                ("mqtt.keepalive_s", f"{cfg.mqtt.keepalive_s} s {on}: must be {lo}-{hi} s")
            )
    if lim.mqtt5 and cfg.mqtt.protocol != "5":
        problems.append(
            (
                "mqtt.protocol",
                f"MQTT {cfg.mqtt.protocol} {on}: the fleet's consumers use MQTT 5 shared "
                "subscriptions ($share/<group>/...), so use protocol '5'",
            )
        )
    return problems
