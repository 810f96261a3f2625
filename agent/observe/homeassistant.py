"""Home Assistant MQTT discovery: the device, its model's predictions and the model version.

With ``[homeassistant] enabled`` the agent publishes retained config messages under
``<discovery_prefix>/<component>/<node>/<object>/config`` (node = the device id made safe for
HA's ``[a-zA-Z0-9_-]``), after every (re)connect and whenever Home Assistant announces itself
on ``<discovery_prefix>/status`` = ``online`` (its birth message):

- ``sensor`` *<model> prediction*: state from the prediction topic (label / score / first
  value, by ``postprocess.type``; the last entry of a batch when batching is on), the whole
  ``outputs`` as attributes;
- ``binary_sensor`` *<model> anomaly* for ``postprocess.type = "anomaly"``;
- ``update`` *<model> model*: ``installed_version`` from the metrics topic
  (``model.version``), ``latest_version`` from the retained OTA state (``OtaStateV1``,
  agent/ota/report.py): the version being installed while ``downloading`` .. ``active``,
  else the running one (a failed or rolled-back update leaves the device "up to date"; the
  OTA state says why);
- diagnostic ``sensor``s from the metrics topic (when ``metrics.interval_s > 0``): invoke
  latency p95, predictions per second, queue depth, memory, CPU temperature.

Every entity carries the device's availability topic (``<prefix>/<device>/status``,
``online``/``offline``) and one device block (identifiers = device id, name, model, sw_version).
The pydantic models below are the schema of what we publish (a subset of HA's keys).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from agent.config import (
    AnomalyPost,
    ClassificationPost,
    Config,
    DetectionPost,
    PostprocessConfig,
    RegressionPost,
)
from agent.delivery.mqtt import OutgoingMessage
from agent.wire.topics import OFFLINE, ONLINE, Topics

log = logging.getLogger(__name__)

HA_ONLINE = b"online"
_UNSAFE = re.compile(r"[^a-zA-Z0-9_-]")
_BOARD_MODEL_FILES = (
    Path("/proc/device-tree/model"),
    Path("/sys/firmware/devicetree/base/model"),
)
# the newest prediction, whether the message is one prediction or a batch
_LAST = "{% set p = value_json.batch[-1] if value_json.batch is defined else value_json %}"


# --------------------------------------------------------------------------- schema


class _Ha(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HaDevice(_Ha):
    identifiers: list[str] = Field(min_length=1, description="The device id.")
    name: str
    model: str = Field(description="The board (device tree model) or 'edge-agent'.")
    manufacturer: str = "edge-agent"
    sw_version: str = Field(description="edge-agent version.")


class _Entity(_Ha):
    name: str
    unique_id: str
    availability_topic: str
    payload_available: str = ONLINE.decode()
    payload_not_available: str = OFFLINE.decode()
    device: HaDevice
    icon: str | None = None
    entity_category: Literal["diagnostic", "config"] | None = None


class HaSensorConfig(_Entity):
    state_topic: str
    value_template: str
    json_attributes_topic: str | None = None
    json_attributes_template: str | None = None
    unit_of_measurement: str | None = None
    device_class: str | None = None
    state_class: Literal["measurement", "total", "total_increasing"] | None = None
    suggested_display_precision: int | None = None


class HaBinarySensorConfig(_Entity):
    state_topic: str
    value_template: str
    payload_on: str = "ON"
    payload_off: str = "OFF"
    device_class: str | None = None


class HaUpdateConfig(_Entity):
    state_topic: str
    value_template: str
    latest_version_topic: str
    latest_version_template: str
    title: str
    device_class: Literal["firmware"] | None = None


HaConfig = HaSensorConfig | HaBinarySensorConfig | HaUpdateConfig
COMPONENTS: dict[type[_Entity], str] = {
    HaSensorConfig: "sensor",
    HaBinarySensorConfig: "binary_sensor",
    HaUpdateConfig: "update",
}


# --------------------------------------------------------------------------- building


def safe_id(text: str) -> str:
    """A discovery topic part HA accepts: ``[a-zA-Z0-9_-]`` (others become ``_``)."""
    return _UNSAFE.sub("_", text)


def board_model(files: Sequence[Path] = _BOARD_MODEL_FILES) -> str:
    """The board name from the device tree ('Raspberry Pi 4 Model B Rev 1.4'), or 'edge-agent'."""
    for f in files:
        try:
            text = f.read_bytes().rstrip(b"\0").decode("utf-8", "replace").strip()
        except OSError:
            continue
        if text:
            return text
    return "edge-agent"


def prediction_state_template(post: PostprocessConfig) -> str:
    """The Jinja template giving a prediction's headline value for its postprocess type.

    ``['values']`` and not ``.values``: Jinja's dot tries attributes first, and a dict's
    ``values`` is a method.
    """
    if isinstance(post, ClassificationPost):
        value = "p.outputs.label"
    elif isinstance(post, RegressionPost):
        key = f"['{post.names[0]}']" if post.names else "[0]"
        value = f"p.outputs['values']{key}"
    elif isinstance(post, AnomalyPost):
        value = "p.outputs.score"
    elif isinstance(post, DetectionPost):  # events (and heartbeats): the label that rose
        value = "p.outputs.label if p.outputs.type == 'event' else 'none'"
    else:
        value = "p.outputs.tensors | tojson | truncate(250)"
    return _LAST + "{{ " + value + " }}"


PREDICTION_ATTRIBUTES_TEMPLATE = (
    _LAST + "{{ {'outputs': p.outputs, 'stream': p.stream, 'seq': p.seq, "
    "'model_version': p.model.version, 'latency_ms': p.latency_ms} | tojson }}"
)
LATEST_VERSION_TEMPLATE = (
    "{{ value_json.version if value_json.state in "
    "['downloading', 'verifying', 'staged', 'active'] else value_json.running }}"
)
INSTALLED_VERSION_TEMPLATE = "{{ value_json.model.version }}"

# (object id, name, template on MetricsV1, unit, device_class, precision, icon)
_METRIC_SENSORS: tuple[tuple[str, str, str, str | None, str | None, int | None, str], ...] = (
    (
        "invoke_p95",
        "Invoke latency p95",
        "{{ value_json.latency_ms.invoke.p95 if value_json.latency_ms.invoke is defined else 0 }}",
        "ms",
        "duration",
        3,
        "mdi:timer-outline",
    ),
    (
        "prediction_rate",
        "Predictions per second",
        "{{ value_json.rates.predictions_per_s }}",
        "1/s",
        None,
        2,
        "mdi:speedometer",
    ),
    ("queue_depth", "Queue depth", "{{ value_json.queue.depth }}", None, None, 0, "mdi:tray-full"),
    (
        "drift_score",
        "Drift score (PSI)",
        "{{ value_json.drift.score if value_json.drift.score is defined else 0 }}",
        None,
        None,
        3,
        "mdi:chart-bell-curve",
    ),
    (
        "memory",
        "Memory (RSS)",
        "{{ value_json.memory_rss_bytes }}",
        "B",
        "data_size",
        0,
        "mdi:memory",
    ),
    (
        "cpu_temp",
        "CPU temperature",
        "{{ value_json.cpu_temp_c }}",
        "°C",
        "temperature",
        1,
        "mdi:thermometer",
    ),
)


def discovery_configs(
    cfg: Config,
    topics: Topics,
    model_name: str,
    agent_version: str,
    board: str,
    *,
    cpu_temp: bool = True,
) -> list[tuple[str, HaConfig]]:
    """``(discovery topic, config)`` for every entity of this device (``cpu_temp``: the board
    reports a CPU temperature)."""
    dev = cfg.agent.device_id
    node = safe_id(dev)
    model = safe_id(model_name)
    device = HaDevice(identifiers=[dev], name=dev, model=board, sw_version=agent_version)
    avail = topics.status
    prefix = cfg.homeassistant.discovery_prefix
    pred_topic = topics.prediction(model_name)
    out: list[tuple[str, HaConfig]] = []

    def add(obj: str, conf: HaConfig) -> None:
        out.append((f"{prefix}/{COMPONENTS[type(conf)]}/{node}/{obj}/config", conf))

    add(
        f"{model}_prediction",
        HaSensorConfig(
            name=f"{model_name} prediction",
            unique_id=f"{node}_{model}_prediction",
            state_topic=pred_topic,
            value_template=prediction_state_template(cfg.postprocess),
            json_attributes_topic=pred_topic,
            json_attributes_template=PREDICTION_ATTRIBUTES_TEMPLATE,
            icon="mdi:brain",
            state_class="measurement"
            if isinstance(cfg.postprocess, AnomalyPost | RegressionPost)
            else None,
            availability_topic=avail,
            device=device,
        ),
    )
    if isinstance(cfg.postprocess, AnomalyPost):
        add(
            f"{model}_anomaly",
            HaBinarySensorConfig(
                name=f"{model_name} anomaly",
                unique_id=f"{node}_{model}_anomaly",
                state_topic=pred_topic,
                value_template=_LAST + "{{ 'ON' if p.outputs.anomaly else 'OFF' }}",
                device_class="problem",
                availability_topic=avail,
                device=device,
            ),
        )
    add(
        f"{model}_drift",
        HaBinarySensorConfig(
            name=f"{model_name} drift",
            unique_id=f"{node}_{model}_drift",
            state_topic=topics.drift,
            value_template="{{ 'ON' if value_json.active else 'OFF' }}",
            device_class="problem",
            availability_topic=avail,
            device=device,
        ),
    )
    add(
        f"{model}_model",
        HaUpdateConfig(
            name=f"{model_name} model",
            unique_id=f"{node}_{model}_model",
            title=f"{model_name} model",
            state_topic=topics.metrics,
            value_template=INSTALLED_VERSION_TEMPLATE,
            latest_version_topic=topics.ota_state,
            latest_version_template=LATEST_VERSION_TEMPLATE,
            device_class="firmware",
            entity_category="diagnostic",
            availability_topic=avail,
            device=device,
        ),
    )
    if cfg.metrics.interval_s > 0:
        for obj, name, template, unit, dclass, precision, icon in _METRIC_SENSORS:
            if obj == "cpu_temp" and not cpu_temp:
                continue  # no thermal zone: the value would always be null
            add(
                obj,
                HaSensorConfig(
                    name=name,
                    unique_id=f"{node}_{obj}",
                    state_topic=topics.metrics,
                    value_template=template,
                    unit_of_measurement=unit,
                    device_class=dclass,
                    state_class="measurement",
                    suggested_display_precision=precision,
                    entity_category="diagnostic",
                    icon=icon,
                    availability_topic=avail,
                    device=device,
                ),
            )
    return out


def discovery_messages(
    cfg: Config,
    topics: Topics,
    model_name: str,
    agent_version: str,
    board: str,
    *,
    cpu_temp: bool = True,
) -> list[OutgoingMessage]:
    """The retained QoS 1 config messages, ``None`` fields left out."""
    configs = discovery_configs(cfg, topics, model_name, agent_version, board, cpu_temp=cpu_temp)
    return [
        OutgoingMessage(topic, conf.model_dump_json(exclude_none=True).encode(), 1, True)
        for topic, conf in configs
    ]


# --------------------------------------------------------------------------- publishing


class DiscoveryLink(Protocol):
    def publish(self, msg: OutgoingMessage, on_ack: Callable[[], None] | None = None) -> bool: ...
    def add_connect_listener(self, fn: Callable[[], None]) -> None: ...
    def subscribe(
        self, topic_filter: str, qos: int, handler: Callable[[str, bytes], None]
    ) -> None: ...


class HomeAssistantDiscovery:
    """Publishes the discovery configs on every connect and on Home Assistant's birth message.

    Both triggers arrive on the MQTT network thread; publishing a handful of small messages
    there is a non-blocking enqueue in paho.
    """

    def __init__(
        self,
        link: DiscoveryLink,
        messages: Callable[[], list[OutgoingMessage]],
        discovery_prefix: str,
    ) -> None:
        self._link = link
        self._messages = messages
        self.birth_topic = f"{discovery_prefix}/status"
        self.published = 0
        self._stopped = False

    def start(self) -> None:
        self._link.add_connect_listener(self.publish)
        self._link.subscribe(self.birth_topic, 1, self._on_birth)

    def stop(self) -> None:
        self._stopped = True

    def _on_birth(self, topic: str, payload: bytes) -> None:
        if payload.strip().lower() == HA_ONLINE:
            log.info("Home Assistant came online: publishing discovery again")
            self.publish()

    def publish(self) -> None:
        if self._stopped:
            return
        msgs = self._messages()
        sent = sum(1 for m in msgs if self._link.publish(m))
        self.published += sent
        log.debug("Home Assistant discovery: %d of %d config(s) sent", sent, len(msgs))
