"""Home Assistant MQTT discovery: the device, its model's predictions, its model version.

With ``[homeassistant] enabled`` the agent publishes retained config messages under
``<discovery_prefix>/<component>/<node>/<object>/config`` (node = the device id made safe for
HA's ``[a-zA-Z0-9_-]``), after every (re)connect and whenever Home Assistant announces itself
on ``<discovery_prefix>/status`` = ``online`` (its birth message):

- ``sensor`` *<model> prediction*: state from the prediction topic (label / score / first
  value, by ``postprocess.type``; the last entry of a batch when batching is on); the only
  attribute is the model version. Nothing that changes with every message is an attribute:
  each change of state *or* attributes is a row in HA's recorder;
- ``binary_sensor`` *<model> anomaly* for ``postprocess.type = "anomaly"``;
- ``event`` *<model> detection* instead of the prediction sensor for ``postprocess.type =
  "detection"``: each detection event fires it once (``event_type`` = the label, with its
  mean, peak and stream); heartbeats are ignored;
- ``update`` *<model> model*, only with OTA on: everything from the retained OTA state
  (``OtaStateV1``): installed = ``running``; latest = the version being installed, or the one
  that failed in a way another try may fix; ``in_progress`` and ``update_percentage`` while
  downloading; *Install* publishes ``install`` on ``<prefix>/<device>/ota/set``;
- ``button`` *Restart*: ``restart`` on ``<prefix>/<device>/set`` (the config is read again
  and the pipeline rebuilt, as SIGHUP does);
- diagnostic ``sensor``s from the metrics topic (when ``metrics.interval_s > 0``): invoke
  latency p95, prediction rate, queue depth, memory, CPU temperature. Latency and rate are
  *unknown* until the first prediction (never a made-up 0).

Every template renders ``None`` (HA: *unknown*) or nothing (ignored) for an empty or
non-JSON payload (a cleared retained topic). Every entity carries the device's availability
topic, one device block and an ``origin`` block. Configs of entities this agent no longer
publishes (OTA or metrics turned off, another model name) are removed: the agent reads back
the retained configs under its node and clears the ones it does not publish now (an empty
retained message is HA's "delete").

The pydantic models below are the schema of what we publish (a subset of HA's keys;
tests/observe/ha_mqtt_schema.json holds HA's own, with where they come from).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal, Protocol, TypedDict

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
from agent.wire.ota import MARKED_BAD_REASONS
from agent.wire.topics import INSTALL, OFFLINE, ONLINE, RESTART, Topics

log = logging.getLogger(__name__)

HA_ONLINE = b"online"
ORIGIN_NAME = "edge-agent"
_UNSAFE = re.compile(r"[^a-zA-Z0-9_-]")
_BOARD_MODEL_FILES = (
    Path("/proc/device-tree/model"),
    Path("/sys/firmware/devicetree/base/model"),
)
# HA sets ``value_json`` only when the payload parses as JSON: an empty (cleared) retained
# message leaves it undefined, and every template says what to do then.
_JSON = "value_json is defined and value_json is mapping"
# the newest prediction, whether the message is one prediction or a batch
_LAST = "{% set p = value_json.batch[-1] if value_json.batch is defined else value_json %}"
NONE = "None"  # what HA's MQTT sensors read as "unknown"


def guarded(expr: str, *, pick_last: bool = False, otherwise: str = NONE) -> str:
    """A template rendering ``expr`` for a JSON object payload, else ``otherwise``."""
    inner = (_LAST if pick_last else "") + "{{ " + expr + " }}"
    return "{% if " + _JSON + " %}" + inner + "{% else %}" + otherwise + "{% endif %}"


# --------------------------------------------------------------------------- schema


class _Ha(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HaDevice(_Ha):
    """The ``device`` block of a Home Assistant discovery config."""

    identifiers: list[str] = Field(min_length=1, description="The device id.")
    name: str
    model: str = Field(description="The board (device tree model) or 'edge-agent'.")
    manufacturer: str = "edge-agent"
    sw_version: str = Field(description="edge-agent version.")


class HaOrigin(_Ha):
    """Who published the config (HA logs it with discovery problems)."""

    name: str = ORIGIN_NAME
    sw_version: str


class _Entity(_Ha):
    name: str
    unique_id: str
    availability_topic: str
    payload_available: str = ONLINE.decode()
    payload_not_available: str = OFFLINE.decode()
    device: HaDevice
    origin: HaOrigin
    icon: str | None = None
    entity_category: Literal["diagnostic", "config"] | None = None


class HaSensorConfig(_Entity):
    """Discovery config of a Home Assistant ``sensor`` entity."""

    state_topic: str
    value_template: str
    json_attributes_topic: str | None = None
    json_attributes_template: str | None = None
    unit_of_measurement: str | None = None
    device_class: str | None = None
    state_class: Literal["measurement", "total", "total_increasing"] | None = None
    suggested_display_precision: int | None = None


class HaBinarySensorConfig(_Entity):
    """Discovery config of a Home Assistant ``binary_sensor`` entity."""

    state_topic: str
    value_template: str
    payload_on: str = "ON"
    payload_off: str = "OFF"
    device_class: str | None = None


class HaUpdateConfig(_Entity):
    """Discovery config of a Home Assistant ``update`` entity (the model version)."""

    state_topic: str
    value_template: str
    command_topic: str
    payload_install: str = INSTALL.decode()
    title: str
    device_class: Literal["firmware"] | None = None


class HaEventConfig(_Entity):
    """Discovery config of a Home Assistant ``event`` entity."""

    state_topic: str
    value_template: str
    event_types: list[str] = Field(min_length=1)
    device_class: Literal["button", "doorbell", "motion"] | None = None


class HaButtonConfig(_Entity):
    """Discovery config of a Home Assistant ``button`` entity."""

    command_topic: str
    payload_press: str
    device_class: Literal["restart", "identify", "update"] | None = None


class _Common(TypedDict):
    availability_topic: str
    device: HaDevice
    origin: HaOrigin


HaConfig = HaSensorConfig | HaBinarySensorConfig | HaUpdateConfig | HaButtonConfig | HaEventConfig
COMPONENTS: dict[type[_Entity], str] = {
    HaSensorConfig: "sensor",
    HaBinarySensorConfig: "binary_sensor",
    HaUpdateConfig: "update",
    HaButtonConfig: "button",
    HaEventConfig: "event",
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
    ``values`` is a method. A classification below its threshold (``label: null``) renders
    ``None``: *unknown*.
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
    return guarded(value, pick_last=True)


PREDICTION_ATTRIBUTES_TEMPLATE = guarded(
    "{'model_version': p.model.version} | tojson", pick_last=True, otherwise=""
)
ANOMALY_TEMPLATE = guarded("'ON' if p.outputs.anomaly else 'OFF'", pick_last=True)
DETECTION_EVENT_TEMPLATE = guarded(
    "({'event_type': p.outputs.label, 'mean': p.outputs.mean, 'peak': p.outputs.peak, "
    "'stream': p.stream} | tojson) if p.outputs.type == 'event' else 'None'",
    pick_last=True,
)
"""A detection event as HA's event JSON; a heartbeat renders ``None``, which HA ignores."""
DRIFT_ALERT_TEMPLATE = guarded("'ON' if value_json.active else 'OFF'")
"""The retained ``DriftAlertV1`` on ``<prefix>/<device>/drift``: raised or cleared."""
DRIFT_SCORE_TEMPLATE = guarded(
    "value_json.drift.score if value_json.drift is defined and value_json.drift "
    "and value_json.drift.judged else None"
)
"""The largest PSI of the newest metrics; *unknown* until the rolling windows are judged."""

_INSTALLING = "['downloading', 'verifying', 'staged']"
_RETRYABLE = (
    "(value_json.state == 'failed' and value_json.reason not in "
    + "["
    + ", ".join(f"'{r}'" for r in sorted(MARKED_BAD_REASONS))
    + "])"
)
UPDATE_STATE_TEMPLATE = guarded(
    "{"
    "'installed_version': value_json.running, "
    "'latest_version': value_json.version if value_json.version and "
    f"(value_json.state in {_INSTALLING} or {_RETRYABLE}) else value_json.running, "
    f"'in_progress': value_json.state in {_INSTALLING}, "
    "'update_percentage': ((100 * value_json.progress.bytes / value_json.progress.total) "
    "| round(0) | int) if value_json.progress and value_json.progress.total else None, "
    "'release_summary': ('Last attempt failed: ' ~ value_json.reason) "
    "if value_json.state == 'failed' else ''"
    "} | tojson",
    otherwise="",
)
"""The OTA state as HA's update JSON (an empty render is ignored by HA). HA checks it against
a schema of its own: strings must be strings (``release_summary`` is ``''``, never null)."""

_PREDICTED = "value_json.predictions_out is defined and value_json.predictions_out > 0"

# (object id, name, value expression on MetricsV1, unit, device_class, precision, icon)
_METRIC_SENSORS: tuple[tuple[str, str, str, str | None, str | None, int | None, str], ...] = (
    (
        "invoke_p95",
        "Invoke latency p95",
        "value_json.latency_ms.invoke.p95 if value_json.latency_ms is defined "
        "and value_json.latency_ms.invoke is defined else None",
        "ms",
        "duration",
        3,
        "mdi:timer-outline",
    ),
    (
        "prediction_rate",
        "Prediction rate",
        f"value_json.rates.predictions_per_s if {_PREDICTED} else None",
        "Hz",
        "frequency",
        2,
        "mdi:speedometer",
    ),
    ("queue_depth", "Queue depth", "value_json.queue.depth", None, None, 0, "mdi:tray-full"),
    (
        "memory",
        "Memory (RSS)",
        "value_json.memory_rss_bytes",
        "B",
        "data_size",
        0,
        "mdi:memory",
    ),
    (
        "cpu_temp",
        "CPU temperature",
        "value_json.cpu_temp_c",
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
    labels: Sequence[str] = (),
    drift: bool = False,
) -> list[tuple[str, HaConfig]]:
    """``(discovery topic, config)`` for every entity of this device (``cpu_temp``: the board
    reports a CPU temperature; ``labels``: the running model's, for detection events;
    ``drift``: the running model is drift-monitored, its package carries a reference)."""
    dev = cfg.agent.device_id
    node = safe_id(dev)
    model = safe_id(model_name)
    device = HaDevice(identifiers=[dev], name=dev, model=board, sw_version=agent_version)
    origin = HaOrigin(sw_version=agent_version)
    avail = topics.status
    prefix = cfg.homeassistant.discovery_prefix
    pred_topic = topics.prediction(model_name)
    out: list[tuple[str, HaConfig]] = []
    common: _Common = {"availability_topic": avail, "device": device, "origin": origin}

    def add(obj: str, conf: HaConfig) -> None:
        out.append((f"{prefix}/{COMPONENTS[type(conf)]}/{node}/{obj}/config", conf))

    post = cfg.postprocess
    if isinstance(post, DetectionPost):
        # events, not states: HA's event entity (each detection fires it once)
        types = [x for x in (post.labels or labels) if x not in post.ignore]
        if types:
            add(
                f"{model}_detection",
                HaEventConfig(
                    name=f"{model_name} detection",
                    unique_id=f"{node}_{model}_detection",
                    state_topic=pred_topic,
                    value_template=DETECTION_EVENT_TEMPLATE,
                    event_types=types,
                    icon="mdi:bell-ring-outline",
                    **common,
                ),
            )
    else:
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
                **common,
            ),
        )
    if isinstance(cfg.postprocess, AnomalyPost):
        add(
            f"{model}_anomaly",
            HaBinarySensorConfig(
                name=f"{model_name} anomaly",
                unique_id=f"{node}_{model}_anomaly",
                state_topic=pred_topic,
                value_template=ANOMALY_TEMPLATE,
                device_class="problem",
                **common,
            ),
        )
    if cfg.ota.enabled:
        add(
            f"{model}_model",
            HaUpdateConfig(
                name=f"{model_name} model",
                unique_id=f"{node}_{model}_model",
                title=f"{model_name} model",
                state_topic=topics.ota_state,
                value_template=UPDATE_STATE_TEMPLATE,
                command_topic=topics.ota_command,
                device_class="firmware",
                entity_category="config",
                **common,
            ),
        )
    if drift:
        add(
            f"{model}_drift",
            HaBinarySensorConfig(
                name=f"{model_name} drift",
                unique_id=f"{node}_{model}_drift",
                state_topic=topics.drift,
                value_template=DRIFT_ALERT_TEMPLATE,
                device_class="problem",
                icon="mdi:chart-bell-curve",
                **common,
            ),
        )
        if cfg.metrics.interval_s > 0:
            add(
                f"{model}_drift_score",
                HaSensorConfig(
                    name=f"{model_name} drift score",
                    unique_id=f"{node}_{model}_drift_score",
                    state_topic=topics.metrics,
                    value_template=DRIFT_SCORE_TEMPLATE,
                    state_class="measurement",
                    suggested_display_precision=3,
                    entity_category="diagnostic",
                    icon="mdi:chart-bell-curve",
                    **common,
                ),
            )
    add(
        "restart",
        HaButtonConfig(
            name="Restart",
            unique_id=f"{node}_restart",
            command_topic=topics.command,
            payload_press=RESTART.decode(),
            device_class="restart",
            entity_category="config",
            **common,
        ),
    )
    if cfg.metrics.interval_s > 0:
        for obj, name, expr, unit, dclass, precision, icon in _METRIC_SENSORS:
            if obj == "cpu_temp" and not cpu_temp:
                continue  # no thermal zone: the value would always be null
            add(
                obj,
                HaSensorConfig(
                    name=name,
                    unique_id=f"{node}_{obj}",
                    state_topic=topics.metrics,
                    value_template=guarded(expr),
                    unit_of_measurement=unit,
                    device_class=dclass,
                    state_class="measurement",
                    suggested_display_precision=precision,
                    entity_category="diagnostic",
                    icon=icon,
                    **common,
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
    labels: Sequence[str] = (),
    drift: bool = False,
) -> list[OutgoingMessage]:
    """The retained QoS 1 config messages, ``None`` fields left out."""
    configs = discovery_configs(
        cfg,
        topics,
        model_name,
        agent_version,
        board,
        cpu_temp=cpu_temp,
        labels=labels,
        drift=drift,
    )
    return [
        OutgoingMessage(topic, conf.model_dump_json(exclude_none=True).encode(), 1, True)
        for topic, conf in configs
    ]


def node_filter(discovery_prefix: str, device_id: str) -> str:
    """Every discovery config of this device's node (to find the ones to remove)."""
    return f"{discovery_prefix}/+/{safe_id(device_id)}/+/config"


# --------------------------------------------------------------------------- publishing


class DiscoveryLink(Protocol):
    """What discovery needs of the MQTT link: publish, subscribe, reconnect callbacks."""

    def publish(self, msg: OutgoingMessage, on_ack: Callable[[], None] | None = None) -> bool: ...
    def add_connect_listener(self, fn: Callable[[], None]) -> None: ...
    def subscribe(
        self, topic_filter: str, qos: int, handler: Callable[[str, bytes], None]
    ) -> None: ...


class HomeAssistantDiscovery:
    """Publishes the discovery configs on every connect and on Home Assistant's birth
    message, removes the configs of entities no longer published, and takes the restart
    button's command.

    Everything arrives on the MQTT network thread; publishing a handful of small messages
    there is a non-blocking enqueue in paho, and ``on_restart`` must only set an event.
    """

    def __init__(
        self,
        link: DiscoveryLink,
        messages: Callable[[], list[OutgoingMessage]],
        discovery_prefix: str,
        *,
        node_topics: str,
        command_topic: str | None = None,
        on_restart: Callable[[], None] | None = None,
    ) -> None:
        self._link = link
        self._messages = messages
        self.birth_topic = f"{discovery_prefix}/status"
        self._node_topics = node_topics
        self._command_topic = command_topic
        self._on_restart = on_restart
        self._lock = threading.Lock()
        self._current: frozenset[str] = frozenset()
        self._stale: set[str] = set()  # configs to remove (empty retained) when connected
        self.published = 0
        self.removed: list[str] = []
        self._stopped = False

    def start(self) -> None:
        self._link.add_connect_listener(self.publish)
        self._link.subscribe(self.birth_topic, 1, self._on_birth)
        self._link.subscribe(self._node_topics, 1, self._on_config)
        if self._command_topic is not None and self._on_restart is not None:
            self._link.subscribe(self._command_topic, 1, self._on_command)

    def stop(self) -> None:
        self._stopped = True

    def _on_birth(self, topic: str, payload: bytes) -> None:
        if payload.strip().lower() == HA_ONLINE:
            log.info("Home Assistant came online: publishing discovery again")
            self.publish()

    def _on_config(self, topic: str, payload: bytes) -> None:
        """A config under our node (retained ones arrive at each subscribe, possibly before
        the connection counts as up): one we do not publish now is removed with an empty
        retained message, now or at the next ``publish``."""
        if self._stopped:
            return
        with self._lock:
            if not payload:
                self._stale.discard(topic)  # removed (our own removal, echoed back)
                return
            current = self._current
        if not current:
            current = frozenset(m.topic for m in self._messages())
        if topic in current:
            return
        with self._lock:
            self._stale.add(topic)
        self._remove_stale()

    def _remove_stale(self) -> None:
        with self._lock:
            stale = sorted(self._stale)
        for topic in stale:
            if self._link.publish(OutgoingMessage(topic, b"", 1, True)):
                log.info("Home Assistant: removed %s (no longer published)", topic)
                with self._lock:
                    self._stale.discard(topic)
                    self.removed.append(topic)

    def _on_command(self, topic: str, payload: bytes) -> None:
        if self._stopped or self._on_restart is None:
            return
        if payload.strip().lower() == RESTART:
            log.info("restart requested on %s", topic)
            self._on_restart()
        else:
            log.warning("command %r on %s ignored (expected %r)", payload[:32], topic, RESTART)

    def publish(self) -> None:
        if self._stopped:
            return
        msgs = self._messages()
        with self._lock:
            self._current = frozenset(m.topic for m in msgs)
        sent = sum(1 for m in msgs if self._link.publish(m))
        self.published += sent
        self._remove_stale()
        log.debug("Home Assistant discovery: %d of %d config(s) sent", sent, len(msgs))
