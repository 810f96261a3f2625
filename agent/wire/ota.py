"""The OTA state a device reports, retained on ``<prefix>/<device>/ota`` (docs/ota.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from agent.wire.base import Wire

MARKED_BAD_REASONS = frozenset(
    {
        "load_failed",
        "manifest_mismatch",
        "wrong_shape",
        "non_finite",
        "golden_mismatch",
        "too_slow",
        "incompatible_pipeline",
    }
)
"""Failure reasons that will not change on another try: the build is marked bad and never
installed again (a ``failed`` state with another reason may be retried)."""

Phase = Literal[
    "awaiting_model",
    "idle",
    "downloading",
    "verifying",
    "staged",
    "shadow",
    "active",
    "rolled_back",
    "failed",
]


class DownloadProgress(Wire):
    """Download progress in ``OtaStateV1``."""

    bytes: int = Field(ge=0, description="Bytes of the model downloaded so far.")
    total: int = Field(ge=0, description="The model's size from the signed manifest.")


class Refusal(Wire):
    """The last refused OTA offer in ``OtaStateV1``."""

    version: str | None = Field(description="Version offered (null if the offer was unreadable).")
    sha256: str | None = Field(
        None,
        description="The offered build's artifact sha256 as its manifest claims "
        "(null: unreadable).",
    )
    reason: str = Field(description="Stable label, e.g. bad_signature, version_rollback.")
    detail: str = Field(description="Human-readable explanation.")
    source: str | None = Field(description="channel:<name> or incoming:<file>.")
    at: float = Field(description="When it was refused (epoch seconds).")


class TufStatus(Wire):
    """The TUF metadata's freshness in ``OtaStateV1``."""

    expires: float | None = Field(
        None, description="When the trusted TUF timestamp expires (epoch seconds)."
    )
    expired: bool = Field(
        False, description="The last refresh found expired metadata: no update is taken."
    )
    root_version: int | None = Field(None, description="The trusted root's version.")
    checked_at: float = Field(description="When the metadata was last refreshed (epoch s).")


class OtaStateV1(Wire):
    """The OTA state, retained on ``<prefix>/<device>/ota``."""

    v: Literal[1] = Field(1, description="Payload schema version.")
    device: str = Field(description="Device id.")
    model: str = Field(description="Model name (the OTA channel's model).")
    state: Phase = Field(description="Where the update path is.")
    version: str | None = Field(
        description="The version this state is about: being downloaded/verified/staged, "
        "active, rolled back from, or failed."
    )
    sha256: str | None = Field(
        None,
        description="Artifact sha256 of the build this state is about (null: not known, e.g. "
        "idle on the configured model). Together with ``version`` it names an exact release.",
    )
    running: str = Field(description="The version serving predictions now.")
    running_sha256: str | None = Field(
        None, description="Artifact sha256 of the model serving predictions now."
    )
    previous: str | None = Field(
        None, description="The version a rollback returns to (null: the configured model)."
    )
    source: str | None = Field(None, description="Where the update came from.")
    reason: str | None = Field(None, description="Why it failed or was rolled back.")
    detail: str | None = Field(None, description="Human-readable details of the reason.")
    progress: DownloadProgress | None = Field(None, description="While downloading.")
    health: Literal["watching", "passed"] | None = Field(
        None, description="For 'active': still in the health window, or through it."
    )
    refusal: Refusal | None = Field(
        None, description="The most recent offer refused since the agent started."
    )
    tuf: TufStatus | None = Field(
        None, description="The channel's TUF metadata (null without ota.tuf_url)."
    )
    ts: float = Field(description="When this report was made (epoch seconds).")
