"""Every MQTT topic the agent uses, built in one place and validated when built.

<prefix>/<device>/status                 retained "online" / "offline" (last will)
<prefix>/<device>/prediction/<model>     predictions (payloads.PredictionV1 / batch)
<prefix>/<device>/metrics                retained periodic metrics (telemetry.MetricsV1)
<prefix>/<device>/ota                    retained OTA state (ota.report.OtaStateV1)
<prefix>/ota/<channel>/<model>           retained release announcements (manifest.Announcement)
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.config import check_topic_id


@dataclass(frozen=True)
class Topics:
    prefix: str
    device_id: str

    def __post_init__(self) -> None:
        for part in self.prefix.split("/"):
            check_topic_id(part, "topic prefix part")
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

    def prediction(self, model: str) -> str:
        return f"{self.base}/prediction/{check_topic_id(model, 'model name')}"

    def ota_channel(self, channel: str, model: str) -> str:
        check_topic_id(channel, "channel")
        check_topic_id(model, "model name")
        return f"{self.prefix}/ota/{channel}/{model}"


ONLINE = b"online"
OFFLINE = b"offline"
