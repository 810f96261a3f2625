"""Every MQTT topic the agent uses, built in one place and validated when built.

<prefix>/<device>/status                 retained "online" / "offline" (last will)
<prefix>/<device>/prediction/<model>     predictions (wire.predictions.PredictionV1 / batch)
<prefix>/<device>/metrics                retained periodic metrics (wire.metrics.MetricsV1)
<prefix>/<device>/ota                    retained OTA state (wire.ota.OtaStateV1)
<prefix>/<device>/drift                  retained drift alert (wire.fieldcheck.DriftAlertV1)
<prefix>/<device>/shadow/<model>         retained shadow report (wire.fieldcheck.ShadowReportV1)
<prefix>/<device>/ota/set                command: "install" tries the latest offer again
<prefix>/<device>/set                    command: "restart" (Home Assistant's button)
<prefix>/ota/<channel>/<model>           retained release announcements (release.Announcement)

``FleetTopics`` builds the wildcard filters an operator's tool subscribes to.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.config import check_topic_id


def _check_prefix(prefix: str) -> str:
    for part in prefix.split("/"):
        check_topic_id(part, "topic prefix part")
    return prefix


def ota_topic(prefix: str, channel: str, model: str) -> str:
    """``<prefix>/ota/<channel>/<model>``, with the parts checked (no wildcards, no '/')."""
    _check_prefix(prefix)
    return f"{prefix}/ota/{check_topic_id(channel, 'channel')}/{check_topic_id(model, 'model')}"


@dataclass(frozen=True)
class Topics:
    """The topics of one device."""

    prefix: str
    device_id: str

    def __post_init__(self) -> None:
        _check_prefix(self.prefix)
        check_topic_id(self.device_id, "device_id")

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.device_id}"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def metrics(self) -> str:
        return f"{self.base}/metrics"

    @property
    def ota_state(self) -> str:
        return f"{self.base}/ota"

    @property
    def drift(self) -> str:
        return f"{self.base}/drift"

    def shadow(self, model: str) -> str:
        return f"{self.base}/shadow/{check_topic_id(model, 'model name')}"

    @property
    def ota_command(self) -> str:
        """``install``: take the latest announcement of every channel again (a retry)."""
        return f"{self.base}/ota/set"

    @property
    def command(self) -> str:
        """``restart``: re-read the config and rebuild the pipeline (as SIGHUP does)."""
        return f"{self.base}/set"

    def prediction(self, model: str) -> str:
        return f"{self.base}/prediction/{check_topic_id(model, 'model name')}"

    def ota_channel(self, channel: str, model: str) -> str:
        return ota_topic(self.prefix, channel, model)


@dataclass(frozen=True)
class FleetTopics:
    """The wildcard filters over every device under one prefix (the operator's view)."""

    prefix: str

    def __post_init__(self) -> None:
        _check_prefix(self.prefix)

    @property
    def status(self) -> str:
        return f"{self.prefix}/+/status"

    @property
    def ota_state(self) -> str:
        return f"{self.prefix}/+/ota"

    @property
    def metrics(self) -> str:
        return f"{self.prefix}/+/metrics"

    @property
    def drift(self) -> str:
        return f"{self.prefix}/+/drift"

    @property
    def shadow(self) -> str:
        return f"{self.prefix}/+/shadow/+"

    @property
    def filters(self) -> list[str]:
        return [self.status, self.ota_state, self.metrics, self.drift, self.shadow]

    def split(self, topic: str) -> tuple[str, str] | None:
        """``(device, kind)`` of a topic these filters match (kind: status, ota, metrics)."""
        head = self.prefix + "/"
        if not topic.startswith(head):
            return None
        parts = topic[len(head) :].split("/")
        if len(parts) == 3 and parts[1] == "shadow":
            return parts[0], "shadow"
        if len(parts) != 2:
            return None
        return parts[0], parts[1]


ONLINE = b"online"
OFFLINE = b"offline"
INSTALL = b"install"
"""The command on ``<prefix>/<device>/ota/set`` (Home Assistant's update entity sends it)."""
RESTART = b"restart"
"""The command on ``<prefix>/<device>/set`` (Home Assistant's restart button sends it)."""
