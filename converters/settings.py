"""Build-host settings: what to build and where to publish it, as pydantic models.

The same models back the CLI flags and the drop folder's ``edge-convert.toml`` (watch mode),
so both validate the same way: unknown keys fail (``extra="forbid"``) and every problem is
reported with its key path. Relative paths in a TOML file are relative to that file.

    [build]                       # BuildSettings
    name = "vibration"
    mode = "int8"
    calibration = "calibration.npz"
    [build.preprocess]            # agent.release.manifest.PreprocessSpec
    window = 32
    hop = 16
    [publish]                     # PublishSettings
    store = "/srv/ota"
    channel = "canary"
    [publish.targets]             # agent.release.manifest.Targets
    percent = 25
    [publish.mqtt]                # agent.config.MqttSection
    host = "broker.local"
    [watch]                       # WatchSettings
    settle_s = 1.0
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

import agent
from agent.config import MqttSection
from agent.errors import ConfigError
from agent.release.manifest import PostprocessSpec, PreprocessSpec, SemverStr, Targets, TopicId
from converters.convert import IoType, Mode

WATCH_CONFIG_NAME = "edge-convert.toml"
_T = TypeVar("_T", bound=BaseModel)


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BuildSettings(_Settings):
    """Convert -> verify -> package -> sign."""

    name: TopicId = Field(description="Model name (OTA topic part, store directory).")
    version: SemverStr | None = Field(
        default=None,
        description="Package version. Watch mode: taken from a 'name-1.2.3.keras' file name, "
        "else the next patch after the newest in the store (or initial_version).",
    )
    initial_version: SemverStr = Field(
        default="0.1.0", description="Watch mode: version of a model's first package."
    )
    description: str = Field(default="", description="Free text stored in the manifest.")
    mode: Mode = Field(default="int8", description="float32, float16, dynamic or int8.")
    io_type: IoType = Field(
        default="int8", description="int8 mode: model input/output type (int8, uint8, float32)."
    )
    calibration: Path | None = Field(
        default=None, description="Representative data for int8 (.npy, .npz or .csv)."
    )
    calibration_samples: int | None = Field(
        default=None, ge=1, description="Use only the first N calibration samples."
    )
    validation: Path | None = Field(
        default=None, description="Validation data (default: the calibration file)."
    )
    validation_samples: int | None = Field(
        default=None, ge=1, description="Use only the first N validation samples."
    )
    labels: list[str] = Field(default_factory=list, description="Class names, in output order.")
    preprocess: PreprocessSpec | None = Field(
        default=None, description="Windowing/normalisation the agent must apply."
    )
    postprocess: PostprocessSpec = Field(
        default_factory=PostprocessSpec, description="How the agent reads the output."
    )
    min_agent_version: SemverStr = Field(
        default=agent.__version__, description="Oldest agent that may load the package."
    )
    max_accuracy_drop: float | None = Field(
        default=None, ge=0, le=1, description="Fail when accuracy drops more (needs labels)."
    )
    min_agreement: float | None = Field(
        default=None, ge=0, le=1, description="Fail when top-1 agreement with float is lower."
    )
    golden_samples: int = Field(default=3, ge=1, le=32, description="Smoke-test samples.")
    onnx2tf_args: list[str] = Field(
        default_factory=list,
        description="Extra onnx2tf command-line arguments for ONNX sources, as onnx2tf takes "
        'them: ["-kat", "x", "-ois", "x:1,16,96", "-b", "1"].',
    )
    private_key: Path | None = Field(
        default=None, description="Ed25519 private key (PEM) to sign with; unsigned if unset."
    )
    runtime: Literal["auto", "litert", "tflite-runtime", "tensorflow"] = Field(
        default="auto", description="Runtime used for verification and golden samples."
    )

    def resolved(self, base: Path) -> BuildSettings:
        def fix(p: Path | None) -> Path | None:
            return p if p is None or p.is_absolute() else base / p

        return self.model_copy(
            update={
                "calibration": fix(self.calibration),
                "validation": fix(self.validation),
                "private_key": fix(self.private_key),
            }
        )


class PublishSettings(_Settings):
    """Upload to an artifact store and announce on a channel."""

    store: str = Field(description="A directory, or s3://bucket/prefix (needs the s3 extra).")
    base_url: str | None = Field(
        default=None,
        description="URL the store is served at (devices download from here); default: a "
        "file:// URL for directories, the S3 endpoint URL for S3.",
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint (MinIO, ...); default: AWS."
    )
    channel: TopicId = Field(default="stable", description="Channel: stable, canary, ...")
    targets: Targets = Field(default_factory=Targets, description="Device groups and percent.")
    force: bool = Field(
        default=False, description="Allow announcing a version older than the channel's."
    )
    trusted_keys: list[Path] = Field(
        default_factory=list,
        description="Public keys the package must be signed by before it is published.",
    )
    mqtt: MqttSection | None = Field(
        default=None, description="Broker to announce on; without it, upload only."
    )

    def resolved(self, base: Path) -> PublishSettings:
        store = self.store
        if "://" not in store and not Path(store).is_absolute():
            store = str(base / store)
        keys = [k if k.is_absolute() else base / k for k in self.trusted_keys]
        return self.model_copy(update={"store": store, "trusted_keys": keys})


class WatchSettings(_Settings):
    """How the drop folder is watched."""

    settle_s: float = Field(
        default=1.0,
        gt=0,
        le=300,
        description="A file counts as complete after its size has "
        "not changed for this long (or at once on a close-after-write event).",
    )
    patterns: list[str] = Field(
        default_factory=lambda: ["*.keras", "*.h5", "*.tflite", "*.onnx"],
        description="File names that are models (SavedModel directories are always picked up).",
    )


class WatchConfig(_Settings):
    """``edge-convert.toml`` in a drop folder."""

    build: BuildSettings = Field(description="What to build from each dropped model.")
    publish: PublishSettings | None = Field(
        default=None, description="Where to publish (unset: build packages next to the input)."
    )
    watch: WatchSettings = Field(default_factory=WatchSettings, description="Watching.")


def _problems(exc: ValidationError) -> list[tuple[str, str]]:
    return [
        (".".join(str(p) for p in e["loc"]) or "(root)", e["msg"].removeprefix("Value error, "))
        for e in exc.errors(include_url=False)
    ]


def load_watch_config(path: Path) -> WatchConfig:
    """Read and validate a drop folder's TOML; ``ConfigError`` lists every problem."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([("(file)", f"{path} does not exist")], str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([("(file)", f"cannot read {path}: {exc}")], str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([("(syntax)", f"not valid TOML: {exc}")], str(path)) from None
    try:
        cfg = WatchConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_problems(exc), str(path)) from None
    base = path.resolve().parent
    publish = cfg.publish.resolved(base) if cfg.publish else None
    return cfg.model_copy(update={"build": cfg.build.resolved(base), "publish": publish})


def validate_settings(cls: type[_T], data: dict[str, object], source: str) -> _T:
    """Validate CLI-built settings with the same error format as the TOML file."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_problems(exc), source) from None
