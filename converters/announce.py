"""OTA announcements on MQTT: one retained message per channel and model.

The topic is ``<prefix>/ota/<channel>/<model>``; the payload is an
``agent.release.manifest.Announcement`` carrying the signed manifest as a string. Publishing goes
through ``agent.delivery.mqtt`` (the one module that speaks MQTT); the retained message *is*
the channel's current state, so reading it back
tells what a channel offers now.
"""

from __future__ import annotations

import logging
import uuid

from pydantic import ValidationError

from agent.config import MqttSection, read_password
from agent.delivery.mqtt import OutgoingMessage, collect_retained, publish_once
from agent.errors import ConversionError
from agent.release.manifest import Announcement, Targets, utc_now
from agent.release.package import Package
from agent.wire.topics import ota_topic

log = logging.getLogger(__name__)


def make_announcement(
    pkg: Package, channel: str, url: str, package_url: str | None, targets: Targets
) -> Announcement:
    """The OTA announcement of ``pkg`` on ``channel``, downloadable from ``url``."""
    return Announcement(
        channel=channel,
        manifest=pkg.manifest_bytes.decode("utf-8"),
        signature=pkg.signature.signature if pkg.signature else None,
        key_id=pkg.key_id,
        url=url,
        package_url=package_url,
        targets=targets,
        published_at=utc_now(),
    )


def announcement_topic(mqtt: MqttSection, channel: str, model: str) -> str:
    """The topic of ``model``'s announcement on ``channel``."""
    return ota_topic(mqtt.topic_prefix, channel, model)


def _client_id() -> str:
    return f"edge-convert-{uuid.uuid4().hex[:10]}"


def announce(mqtt: MqttSection, announcement: Announcement, model: str) -> str:
    """Publish ``announcement`` retained (QoS 1) and wait for the broker's ack; the topic."""
    topic = announcement_topic(mqtt, announcement.channel, model)
    msg = OutgoingMessage(topic, announcement.to_bytes(), qos=1, retain=True)
    publish_once(mqtt, _client_id(), [msg], password=read_password(mqtt))
    log.info("announced %s on %s", model, topic)
    return topic


def current_announcement(mqtt: MqttSection, channel: str, model: str) -> Announcement | None:
    """The retained announcement on the channel now, or None (nothing, or unreadable)."""
    topic = announcement_topic(mqtt, channel, model)
    retained = collect_retained(mqtt, _client_id(), [topic], password=read_password(mqtt))
    payload = retained.get(topic)
    if not payload:
        return None
    try:
        return Announcement.model_validate_json(payload)
    except ValidationError as exc:
        raise ConversionError(
            f"the retained message on {topic} is not an announcement ({exc.error_count()} "
            "problems); clear it or fix it before publishing"
        ) from exc
