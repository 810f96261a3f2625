"""Configuration: one pydantic model per TOML table, loaded from config.toml + environment.

Every model forbids unknown keys (a typo fails loudly) and describes each field. Cross-field
rules live in ``model_validator(mode="after")``. ``load_config`` collects *every* problem with
its key path (``mqtt.tls.ca_file: ...``) into one ``ConfigError``.

Environment overrides use ``EDGE_AGENT__<TABLE>__<KEY>`` (double underscore between levels,
case-insensitive, list items by index: ``EDGE_AGENT__SOURCES__0__RATE_HZ=25``). Values are read
as TOML literals when they parse (``25``, ``true``, ``["a","b"]``) and as plain strings otherwise.

Secrets never live inline: the MQTT password comes from ``password_file`` (systemd
``LoadCredential=`` puts it in ``$CREDENTIALS_DIRECTORY``) or ``password_env``.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

__all__ = [
    "BUILTIN_DEMO_MODEL",
    "MAX_STREAMS",
    "NO_MODEL",
    "RESERVED_DEVICE_IDS",
    "AgentSection",
    "AnomalyInjection",
    "AnomalyPost",
    "BatchSection",
    "ClassificationPost",
    "CommandSource",
    "Config",
    "DetectionPost",
    "HomeAssistantSection",
    "HttpSection",
    "MetricsSection",
    "ModelSection",
    "MqttSection",
    "MqttSource",
    "OtaSection",
    "PostprocessConfig",
    "PreprocessSection",
    "QueueSection",
    "RawPost",
    "RegressionPost",
    "ReplaySource",
    "SourceConfig",
    "SyntheticSource",
    "TlsSection",
    "WindowSection",
    "check_topic_id",
]

_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
BUILTIN_DEMO_MODEL = "builtin:demo"
NO_MODEL = "none"
"""``model.path = "none"``: no model yet; with OTA on, the first release on the channel of
``model.name`` is installed (the agent reports ``awaiting_model`` until then)."""
RESERVED_DEVICE_IDS = frozenset({"ota"})
MAX_STREAMS = 1024
"""Default cap on streams tracked at once (an MQTT wildcard must not grow state unbounded)."""


def check_topic_id(value: str, what: str = "id") -> str:
    """A topic part chosen by the user: no MQTT wildcards, no '/', not empty."""
    if not _ID_RE.match(value):
        raise ValueError(
            f"{what} {value!r} must be 1-64 characters of letters, digits, '_', '.', '-' "
            "(no '/', '+', '#' or spaces: it becomes part of MQTT topics)"
        )
    return value


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True)


# --------------------------------------------------------------------------- agent


class AgentSection(_Table):
    """The ``[agent]`` table: device id, groups, state directory, logging."""

    device_id: str = Field(
        "demo-device",
        description="This device's id: MQTT client id and topic part. Letters, digits, _ . -",
    )
    groups: list[str] = Field(
        default_factory=list, description="Device groups, used by OTA targeting and the fleet view."
    )
    state_dir: Path = Field(
        Path("state"),
        description="Directory for the store-and-forward queue, OTA state and model versions. "
        "Relative paths are relative to the config file. systemd: $STATE_DIRECTORY.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level."
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="'json' writes one JSON object per line for journald/log shippers."
    )
    shutdown_timeout_s: float = Field(
        4.0, gt=0, le=30, description="SIGTERM: seconds to finish in-flight work before exiting."
    )

    @model_validator(mode="after")
    def _ids(self) -> AgentSection:
        check_topic_id(self.device_id, "device_id")
        if self.device_id in RESERVED_DEVICE_IDS:
            raise ValueError(
                f"device_id {self.device_id!r} is reserved (<prefix>/{self.device_id}/... "
                "carries OTA announcements; the broker ACLs rely on it)"
            )
        for g in self.groups:
            check_topic_id(g, "group")
        return self


# --------------------------------------------------------------------------- model


class ModelSection(_Table):
    """The ``[model]`` table: which model to run, its name and version, the runtime."""

    path: str = Field(
        BUILTIN_DEMO_MODEL,
        description="A .tflite file, a signed .eapkg package, 'builtin:demo' (the shipped demo "
        "model), or 'none' (OTA on: wait for the first release of model.name on the channel). "
        "Relative paths are relative to the config file.",
        json_schema_extra={"path": True},
    )
    name: str = Field(
        "demo", description="Model name: topic part of predictions and the OTA channel."
    )
    version: str = Field(
        "0.0.0", description="Version label of a bare .tflite (packages carry their own)."
    )
    runtime: Literal["auto", "litert", "tflite-runtime", "tensorflow"] = Field(
        "auto",
        description="Interpreter package: 'auto' tries ai-edge-litert, tflite-runtime, "
        "tensorflow in that order.",
    )
    num_threads: int = Field(1, ge=1, le=64, description="Interpreter threads.")
    reference_kernels: bool = Field(
        False,
        description="Use the builtin reference kernels without the XNNPACK delegate: bit-exact "
        "with TFLite Micro / the C library, slower.",
    )
    signature: str | None = Field(
        None, description="Signature runner to use (default: the model's only signature, if any)."
    )
    input: str | None = Field(
        None,
        description="Name of the input tensor the window feeds, checked against the model "
        "(default: the model's only input; the streaming pipeline runs single-input models).",
    )
    max_invoke_batch: int = Field(
        32,
        ge=1,
        le=1024,
        description="Most queued windows run in one invoke() (the input's batch dimension "
        "resized), when the model allows it: stateless, one input with a batch dimension of 1 "
        "or -1, and a smoke run at load equal to single invokes (else one invoke per window, "
        "logged with the reason). 1 = one invoke per window.",
    )
    stream_state_limit_mb: float = Field(
        64.0,
        gt=0,
        description="A stateful (streaming) model gets one interpreter per stream; start-up is "
        "refused when window.max_streams such interpreters could need more than this (MiB).",
    )

    @model_validator(mode="after")
    def _name(self) -> ModelSection:
        check_topic_id(self.name, "model name")
        return self


# --------------------------------------------------------------------------- sources


class _SourceBase(_Table):
    name: str = Field("sensor", description="Stream name: carried in every prediction.")
    channels: int = Field(3, ge=1, le=4096, description="Values per sample.")
    max_queue: int = Field(
        1024, ge=1, description="Blocks buffered between this source and inference."
    )

    @model_validator(mode="after")
    def _name(self) -> _SourceBase:
        check_topic_id(self.name, "source name")
        return self


class AnomalyInjection(_Table):
    """Synthetic anomalies injected into a synthetic source (``anomalies`` of a source)."""

    probability: float = Field(
        0.0, ge=0, le=1, description="Chance per sample of starting an anomaly."
    )
    magnitude: float = Field(5.0, description="Added to every channel during an anomaly.")
    duration_samples: int = Field(20, ge=1, description="Samples an anomaly lasts.")


class SyntheticSource(_SourceBase):
    """A ``[[sources]]`` entry with ``type = "synthetic"``: seeded sines plus noise."""

    type: Literal["synthetic"] = "synthetic"
    rate_hz: float = Field(50.0, gt=0, le=1_000_000, description="Samples per second.")
    seed: int = Field(0, description="Seed: the same seed gives the same signal.")
    frequency_hz: list[float] = Field(
        default_factory=lambda: [1.0],
        min_length=1,
        description="Sine frequency per channel (cycled).",
    )
    amplitude: float = Field(1.0, description="Sine amplitude.")
    noise_std: float = Field(0.1, ge=0, description="Gaussian noise standard deviation.")
    block_size: int = Field(
        1, ge=1, description="Samples emitted per block (raise it for very high rates)."
    )
    max_samples: int | None = Field(
        None, ge=1, description="Stop after this many samples (default: run forever)."
    )
    anomalies: AnomalyInjection = Field(
        default_factory=lambda: AnomalyInjection(), description="Injected anomalies."
    )


class ReplaySource(_SourceBase):
    """A ``[[sources]]`` entry with ``type = "replay"``: samples read back from a file."""

    type: Literal["replay"] = "replay"
    path: Path = Field(description="CSV, .npy or JSON-lines file of samples.")
    rate: Literal["recorded", "fixed", "fast"] = Field(
        "fixed",
        description="'recorded': the file's timestamps; 'fixed': rate_hz; 'fast': no pacing.",
    )
    rate_hz: float = Field(50.0, gt=0, description="Samples per second for rate = 'fixed'.")
    timestamp_column: str | None = Field(
        "ts", description="CSV/JSON column with the sample time in seconds, if present."
    )
    loop: bool = Field(False, description="Start again at the end of the file.")
    exit_when_done: bool = Field(
        False,
        description="Batch evaluation: `run` exits 0 once every source has finished and every "
        "prediction has been delivered (the spool is empty). Not with loop = true.",
    )
    block_size: int = Field(
        1, ge=1, description="Samples per block ('fast' mode reads up to this many at once)."
    )


class MqttSource(_SourceBase):
    """A ``[[sources]]`` entry with ``type = "mqtt"``: samples from subscribed topics."""

    type: Literal["mqtt"] = "mqtt"
    topic: str = Field(
        description="Topic filter to subscribe to (wildcards allowed; each topic is a stream)."
    )
    qos: Literal[0, 1, 2] = Field(0, description="Subscription QoS.")
    format: Literal["json", "binary"] = Field(
        "json",
        description='\'json\': an array, {"values": [...], "ts": t} or an array of those; '
        "'binary': little-endian values of `dtype`, shape (n, channels).",
    )
    dtype: Literal["float32", "float64", "int16", "int32", "uint16", "int8", "uint8"] = Field(
        "float32", description="Element type of binary payloads."
    )
    max_payload_bytes: int = Field(
        65536, ge=1, description="Larger payloads are counted and dropped."
    )


class CommandSource(_SourceBase):
    """A ``[[sources]]`` entry with ``type = "command"``: JSON lines from a child program."""

    type: Literal["command"] = "command"
    argv: list[str] = Field(
        description="Program and arguments; it prints one JSON sample per line."
    )
    restart_backoff_min_s: float = Field(
        1.0, gt=0, description="First restart delay after it exits."
    )
    restart_backoff_max_s: float = Field(60.0, gt=0, description="Restart delay cap.")
    max_line_bytes: int = Field(65536, ge=1, description="Longer lines are counted and dropped.")

    @model_validator(mode="after")
    def _argv(self) -> CommandSource:
        if not self.argv:
            raise ValueError("argv must name a program")
        if self.restart_backoff_max_s < self.restart_backoff_min_s:
            raise ValueError("restart_backoff_max_s must be >= restart_backoff_min_s")
        return self


SourceConfig = Annotated[
    SyntheticSource | ReplaySource | MqttSource | CommandSource, Field(discriminator="type")
]


def _demo_sources() -> list[SourceConfig]:
    return [_demo_source()]


def _demo_source() -> SyntheticSource:
    """The embedded default: the signal the demo model is trained on (make_demo_model.py)."""
    return SyntheticSource(
        name="accel",
        frequency_hz=[1.0, 0.5, 2.0],
        anomalies=AnomalyInjection(probability=0.005, magnitude=3.0, duration_samples=20),
    )


# --------------------------------------------------------------------------- window & preprocess


class WindowSection(_Table):
    """The ``[window]`` table: window length and hop, in samples."""

    length: int = Field(32, ge=1, description="Samples per window.")
    hop: int = Field(16, ge=1, description="Samples between window starts.")
    max_streams: int = Field(
        MAX_STREAMS,
        ge=1,
        description="Streams tracked at once per source (further streams are dropped and "
        "counted as too_many_streams); a stateful model keeps one interpreter per stream.",
    )

    @model_validator(mode="after")
    def _hop(self) -> WindowSection:
        if self.hop > self.length:
            raise ValueError(f"hop ({self.hop}) must be <= length ({self.length})")
        return self


class PreprocessSection(_Table):
    """The ``[preprocess]`` table: per-channel normalisation."""

    normalize: Literal["none", "standard", "minmax"] = Field(
        "none", description="'standard': (x-mean)/std; 'minmax': (x-min)/(max-min) to [0,1]."
    )
    mean: list[float] | None = Field(None, description="Per-channel mean (standard).")
    std: list[float] | None = Field(None, description="Per-channel std, > 0 (standard).")
    min: list[float] | None = Field(None, description="Per-channel minimum (minmax).")
    max: list[float] | None = Field(None, description="Per-channel maximum (minmax).")

    @model_validator(mode="after")
    def _stats(self) -> PreprocessSection:
        if self.normalize == "standard":
            if self.mean is None or self.std is None:
                raise ValueError("normalize = 'standard' needs mean and std")
            if len(self.mean) != len(self.std):
                raise ValueError("mean and std must have one value per channel")
            if any(s <= 0 for s in self.std):
                raise ValueError("std values must be > 0")
        if self.normalize == "minmax":
            if self.min is None or self.max is None:
                raise ValueError("normalize = 'minmax' needs min and max")
            if len(self.min) != len(self.max):
                raise ValueError("min and max must have one value per channel")
            if any(hi <= lo for lo, hi in zip(self.min, self.max, strict=True)):
                raise ValueError("each max must be > its min")
        return self


# --------------------------------------------------------------------------- postprocess


Precision = Annotated[int, Field(ge=1, le=17)] | Literal["lossless"]


class _PostBase(_Table):
    precision: Precision = Field(
        6,
        description="Significant digits of the floats in `outputs` (6: 0.996094), or "
        "'lossless': every float32 output value exactly (its shortest round-trip repr).",
    )


class ClassificationPost(_PostBase):
    """``[postprocess] type = "classification"``: labels, top-k, threshold, smoothing."""

    type: Literal["classification"] = "classification"
    labels: list[str] = Field(default_factory=list, description="Class names, in output order.")
    output: str | None = Field(None, description="Output tensor (default: the first).")
    top_k: int = Field(1, ge=1, description="How many classes to report.")
    threshold: float = Field(0.0, ge=0, le=1, description="Below this top score the label is null.")
    smoothing: int = Field(1, ge=1, description="Average scores over the last N windows.")
    publish_on_change: bool = Field(False, description="Publish only when the top label changes.")


class RegressionPost(_PostBase):
    """``[postprocess] type = "regression"``: the output values, named."""

    type: Literal["regression"] = "regression"
    names: list[str] = Field(default_factory=list, description="Names of the output values.")
    output: str | None = Field(None, description="Output tensor (default: the first).")


class AnomalyPost(_PostBase):
    """``[postprocess] type = "anomaly"``: an anomaly score against a threshold."""

    type: Literal["anomaly"] = "anomaly"
    threshold: float = Field(description="Score above which the window is an anomaly.")
    output: str | None = Field(None, description="Output tensor holding the score.")
    score: Literal["value", "mse"] = Field(
        "value",
        description="'value': the output is the score; 'mse': mean squared error between the "
        "output and the model input (autoencoders).",
    )


class RawPost(_PostBase):
    """``[postprocess] type = "raw"``: the output tensors as they are."""

    type: Literal["raw"] = "raw"


class DetectionPost(_PostBase):
    """Events, not a firehose: rising edges of a sliding mean (docs/payloads.md, detection)."""

    type: Literal["detection"] = "detection"
    labels: list[str] = Field(
        default_factory=list, description="Class names, in output order (default '0', '1', ...)."
    )
    output: str | None = Field(None, description="Output tensor of scores (default: the first).")
    average_windows: int = Field(
        3,
        ge=1,
        description="Scores are averaged over the last N windows of the stream; nothing is "
        "decided before N windows have been seen.",
    )
    threshold: float = Field(
        0.5, ge=0, le=1, description="A label is on while its mean score > threshold (strict)."
    )
    thresholds: dict[str, float] = Field(
        default_factory=dict, description="Per-label thresholds overriding `threshold`."
    )
    ignore: list[str] = Field(
        default_factory=list,
        description="Labels that never make events (background, silence, unknown).",
    )
    refractory_windows: int = Field(
        0,
        ge=0,
        description="After an event of a label, its rising edges in the next N windows make "
        "no event.",
    )
    heartbeat_windows: int = Field(
        0,
        ge=0,
        description="Publish a heartbeat (current means, no event) after N windows without a "
        "message on a stream (0 = never).",
    )

    @model_validator(mode="after")
    def _thresholds(self) -> DetectionPost:
        for label, t in self.thresholds.items():
            if not 0.0 <= t <= 1.0:
                raise ValueError(f"thresholds[{label!r}] = {t}: must be between 0 and 1")
        return self


PostprocessConfig = Annotated[
    ClassificationPost | RegressionPost | AnomalyPost | RawPost | DetectionPost,
    Field(discriminator="type"),
]


# --------------------------------------------------------------------------- mqtt


class TlsSection(_Table):
    """The ``[mqtt.tls]`` table: TLS to the broker, optionally mutual."""

    enabled: bool = Field(False, description="Connect with TLS.")
    ca_file: Path | None = Field(
        None, description="CA bundle to verify the broker (default: system)."
    )
    cert_file: Path | None = Field(None, description="Client certificate (mutual TLS).")
    key_file: Path | None = Field(None, description="Client private key (mutual TLS).")
    insecure: bool = Field(
        False, description="Skip hostname verification (testing only: never in production)."
    )

    @model_validator(mode="after")
    def _pair(self) -> TlsSection:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (mutual TLS needs both)")
        return self


class BatchSection(_Table):
    """The ``[mqtt.batch]`` table: several predictions per MQTT message."""

    max_predictions: int = Field(
        1, ge=1, le=10_000, description="Predictions per MQTT message (1 = batching off)."
    )
    max_delay_ms: float = Field(
        20.0, ge=0, description="Longest a prediction waits for its batch to fill."
    )


class MqttSection(_Table):
    """The ``[mqtt]`` table: broker, protocol, topic prefix, QoS, credentials."""

    host: str = Field("localhost", description="Broker host.")
    port: int = Field(1883, ge=1, le=65535, description="Broker port (8883 is usual for TLS).")
    protocol: Literal["5", "3.1.1"] = Field("5", description="MQTT protocol version.")
    keepalive_s: int = Field(30, ge=5, le=65535, description="Keepalive interval.")
    topic_prefix: str = Field("edge", description="First topic level of everything we publish.")
    qos: Literal[0, 1, 2] = Field(1, description="QoS of predictions.")
    profile: Literal["generic", "aws-iot-core", "emqx", "hivemq"] = Field(
        "generic",
        description="The broker platform; its limits (QoS, payload size, topic depth, client "
        "id, MQTT 5) are checked against the whole config (agent/config/profiles.py).",
    )
    username: str | None = Field(None, description="User name.")
    password_file: Path | None = Field(
        None,
        description="File holding the password (relative names are looked up in "
        "$CREDENTIALS_DIRECTORY first, then in the config file's folder).",
        json_schema_extra={"path": "credential"},
    )
    _config_dir: Path | None = PrivateAttr(None)

    @property
    def config_dir(self) -> Path | None:
        """The folder relative names resolve against (set when loaded from a file)."""
        return self._config_dir

    password_env: str | None = Field(None, description="Environment variable holding the password.")
    tls: TlsSection = Field(default_factory=lambda: TlsSection(), description="TLS settings.")
    reconnect_min_s: float = Field(0.5, gt=0, description="First reconnect delay.")
    reconnect_max_s: float = Field(30.0, gt=0, description="Reconnect delay cap (jittered).")
    max_inflight: int = Field(
        1000, ge=1, le=65535, description="Unacknowledged QoS>0 messages on the wire."
    )
    batch: BatchSection = Field(
        default_factory=lambda: BatchSection(), description="Prediction batching."
    )

    @model_validator(mode="after")
    def _rules(self) -> MqttSection:
        for part in self.topic_prefix.split("/"):
            check_topic_id(part, "topic_prefix part")
        if self.password_file is not None and self.password_env is not None:
            raise ValueError("set password_file or password_env, not both")
        if (self.password_file or self.password_env) and not self.username:
            raise ValueError("a password needs a username")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be >= reconnect_min_s")
        return self


# --------------------------------------------------------------------------- queue


class QueueSection(_Table):
    """The ``[queue]`` table: the store-and-forward queue's file and cap."""

    path: Path | None = Field(
        None, description="SQLite file of the store-and-forward queue (default: state_dir)."
    )
    max_messages: int = Field(
        1_000_000,
        ge=1,
        description="Cap on queued messages; past it the oldest are dropped and counted.",
    )
    write_behind_ms: float = Field(
        200.0,
        ge=0,
        description="On a live connection with no backlog, predictions are published first "
        "and written to the queue file only if the broker has not acknowledged them after "
        "this long (acknowledged in time: never written). A kill -9 or crash of the agent "
        "can lose the unacknowledged predictions of this last interval; a broker outage "
        "loses nothing. 0: write every prediction before publishing it.",
    )


# --------------------------------------------------------------------------- ota


class OtaSection(_Table):
    """The ``[ota]`` table: channels, trusted keys, downloads, health checks."""

    enabled: bool = Field(False, description="Follow OTA channels.")
    channels: list[str] = Field(
        default_factory=lambda: ["stable"], description="Channels to follow."
    )
    trusted_keys: list[Path] = Field(
        default_factory=list, description="Ed25519 public keys (PEM) whose signatures we accept."
    )
    allow_unsigned: bool = Field(False, description="Accept unsigned packages (development only).")
    keep_versions: int = Field(3, ge=2, description="Model versions kept on disk.")
    download_timeout_s: float = Field(600.0, gt=0, description="Deadline for one download.")
    download_retries: int = Field(5, ge=0, description="Retries of a failed download.")
    bandwidth_limit_kbps: float | None = Field(
        None, gt=0, description="Cap on download speed (KiB/s)."
    )
    health_window_s: float = Field(60.0, ge=0, description="Watch a new model this long.")
    max_error_rate: float = Field(0.05, ge=0, le=1, description="Roll back above this error rate.")
    max_latency_factor: float = Field(
        3.0, gt=1, description="Roll back when latency exceeds this x the previous model's."
    )
    max_boot_failures: int = Field(3, ge=1, description="Roll back after this many crashed starts.")
    incoming_dir: Path | None = Field(
        None, description="Watched folder for dropped-in packages (default: state_dir/incoming)."
    )
    tuf_url: str | None = Field(
        None,
        description="Base URL of the store's TUF metadata (e.g. https://store/tuf). Set, the "
        "channel is TUF's and MQTT announcements are only hints to refresh.",
    )
    tuf_targets_url: str | None = Field(
        None, description="Base URL of the TUF targets (default: the parent of tuf_url)."
    )
    tuf_root: Path | None = Field(
        None, description="The first trusted TUF root.json, delivered with the install."
    )
    tuf_root_sha256: str | None = Field(
        None,
        pattern=r"^[0-9a-fA-F]{64}$",
        description="Or: pin the first root by hash (1.root.json fetched from tuf_url).",
    )
    tuf_refresh_s: float = Field(
        3600.0, gt=0, description="Refresh the TUF metadata this often (and on every hint)."
    )

    @model_validator(mode="after")
    def _channels(self) -> OtaSection:
        for c in self.channels:
            check_topic_id(c, "channel")
        if self.enabled and not self.trusted_keys and not self.allow_unsigned:
            raise ValueError("OTA needs trusted_keys (or allow_unsigned = true for development)")
        if self.tuf_url is not None and self.tuf_root is None and self.tuf_root_sha256 is None:
            raise ValueError(
                "ota.tuf_url needs the first trusted root: tuf_root or tuf_root_sha256"
            )
        return self


# --------------------------------------------------------------------------- health & api


class MetricsSection(_Table):
    """The ``[metrics]`` table: how often ``MetricsV1`` is published."""

    interval_s: float = Field(
        60.0, ge=0, description="Publish metrics every N seconds (0 = never)."
    )


class HttpSection(_Table):
    """The ``[http]`` table: the local HTTP API."""

    enabled: bool = Field(False, description="Serve the local HTTP API.")
    host: str = Field("127.0.0.1", description="Bind address (localhost unless you mean it).")
    port: int = Field(8787, ge=0, le=65535, description="Port (0 = any free port).")
    token_file: Path | None = Field(None, description="File holding a bearer token to require.")
    max_body_bytes: int = Field(1_048_576, ge=1, description="Larger request bodies are refused.")

    def exposure_warning(self) -> str | None:
        """A warning when the API is reachable from other machines without a token."""
        if not self.enabled or self.token_file is not None or _is_loopback(self.host):
            return None
        return (
            f"the HTTP API binds {self.host!r} (reachable from other machines) without "
            "http.token_file: anyone on the network can read status and run predictions"
        )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


class HomeAssistantSection(_Table):
    """The ``[homeassistant]`` table: Home Assistant MQTT discovery."""

    enabled: bool = Field(False, description="Publish Home Assistant MQTT discovery.")
    discovery_prefix: str = Field("homeassistant", description="HA discovery prefix.")


class DriftSection(_Table):
    enabled: bool = Field(
        True,
        description="Monitor drift when the model's package carries reference statistics "
        "(a model without them is never monitored).",
    )
    window_samples: int = Field(
        4096, ge=64, description="Rolling window: the last N samples per input channel."
    )
    window_predictions: int = Field(
        1024, ge=16, description="Rolling window: the last N predictions (output drift)."
    )
    chunks: int = Field(
        8, ge=2, le=64, description="The rolling windows move in this many steps (memory bound)."
    )
    threshold: float = Field(
        0.25, gt=0, description="Raise the drift alert when a channel's PSI reaches this."
    )
    clear_below: float = Field(
        0.1, gt=0, description="Clear it when every PSI is below this (hysteresis)."
    )
    min_fill: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Judge only once this share of the rolling window has been seen.",
    )

    @model_validator(mode="after")
    def _hysteresis(self) -> DriftSection:
        if self.clear_below > self.threshold:
            raise ValueError("clear_below must not be above threshold")
        return self


class ShadowSection(_Table):
    enabled: bool = Field(
        True, description="Run releases announced as shadows (refused when false)."
    )
    max_queue: int = Field(
        16,
        ge=1,
        description="Groups of windows waiting for the shadow model; more are skipped and "
        "counted. The shadow thread is woken early when half of them are pending.",
    )
    disagreement_samples: int = Field(
        5, ge=0, le=100, description="Disagreeing windows kept in the report (0: none)."
    )
    max_sample_bytes: int = Field(
        4096, ge=0, description="Cap on the bytes of one kept window's values."
    )


# --------------------------------------------------------------------------- root


class Config(_Table):
    """The whole agent configuration (one config.toml)."""

    agent: AgentSection = Field(default_factory=lambda: AgentSection(), description="This device.")
    model: ModelSection = Field(default_factory=lambda: ModelSection(), description="The model.")
    sources: list[SourceConfig] = Field(
        default_factory=_demo_sources, description="Sample sources."
    )
    window: WindowSection = Field(default_factory=lambda: WindowSection(), description="Windowing.")
    preprocess: PreprocessSection = Field(
        default_factory=lambda: PreprocessSection(), description="Normalisation."
    )
    postprocess: PostprocessConfig = Field(
        default_factory=lambda: ClassificationPost(), description="Output interpretation."
    )
    mqtt: MqttSection = Field(default_factory=lambda: MqttSection(), description="Broker.")
    queue: QueueSection = Field(
        default_factory=lambda: QueueSection(), description="Store-and-forward."
    )
    ota: OtaSection = Field(default_factory=lambda: OtaSection(), description="OTA updates.")
    metrics: MetricsSection = Field(
        default_factory=lambda: MetricsSection(), description="Metrics."
    )
    http: HttpSection = Field(default_factory=lambda: HttpSection(), description="Local HTTP API.")
    homeassistant: HomeAssistantSection = Field(
        default_factory=lambda: HomeAssistantSection(), description="Home Assistant discovery."
    )
    drift: DriftSection = Field(
        default_factory=lambda: DriftSection(), description="Drift monitoring."
    )
    shadow: ShadowSection = Field(
        default_factory=lambda: ShadowSection(), description="Shadow models."
    )

    @model_validator(mode="after")
    def _cross(self) -> Config:
        if self.model.path == NO_MODEL and not self.ota.enabled:
            raise ValueError(
                f"model.path = {NO_MODEL!r} needs ota.enabled = true (the first model comes "
                "over OTA)"
            )
        if not self.sources:
            raise ValueError("sources: at least one source is needed")
        names = [s.name for s in self.sources]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"sources: names must be unique, repeated: {dup}")
        channels = {s.channels for s in self.sources}
        if len(channels) > 1:
            raise ValueError(f"sources: all sources must have the same channels, got {channels}")
        if any(isinstance(s, ReplaySource) and s.exit_when_done and s.loop for s in self.sources):
            raise ValueError("sources: exit_when_done and loop = true exclude each other")
        n = self.sources[0].channels
        for key in ("mean", "std", "min", "max"):
            vals = getattr(self.preprocess, key)
            if vals is not None and len(vals) != n:
                raise ValueError(f"preprocess.{key} has {len(vals)} values for {n} channels")
        return self

    @property
    def awaiting_model(self) -> bool:
        """No model configured: the first one comes over OTA (``model.path = "none"``)."""
        return self.model.path == NO_MODEL

    @property
    def channels(self) -> int:
        return self.sources[0].channels

    def postprocess_labels(self) -> list[str]:
        return (
            list(self.postprocess.labels)
            if isinstance(self.postprocess, ClassificationPost | DetectionPost)
            else []
        )

    @property
    def exit_when_done(self) -> bool:
        """Batch evaluation: exit once every source has finished and the spool is empty."""
        return any(isinstance(s, ReplaySource) and s.exit_when_done for s in self.sources)

    def spool_path(self) -> Path:
        return self.queue.path or self.agent.state_dir / "spool.db"
