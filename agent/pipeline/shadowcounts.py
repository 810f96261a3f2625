"""A shadow's running counts on disk, so that a restart or a reload does not start them again.

``ShadowRunner`` saves them (``save``) at the metrics interval and when it stops, in
``<state_dir>/ota/shadow.json`` (one file: one shadow at a time), written atomically
(``agent.durable``). A runner started for the **same candidate** (model, version AND sha256)
loads them and goes on from there; any other candidate starts at zero (and overwrites the
file at its first save).

What continues: ``since``, windows compared and skipped, top-1 agreements, the per-output sums
and counts behind the mean absolute difference and its maximum, the errors by reason, the
kept disagreeing windows, the detection event counts, and the candidate's last invoke latencies
(its p50/p99). What restarts: the active model's latency (the agent's own metrics), the
detection events still waiting for a partner, and whatever was counted after the last save
when the process was killed (a graceful stop or reload saves first).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.durable import atomic_write
from agent.wire.fieldcheck import DisagreementV1

log = logging.getLogger(__name__)

MAX_BYTES = 4 * 1024 * 1024
"""A larger file is not read (it was not written by us)."""


class ShadowCounts(BaseModel):
    """What ``ShadowRunner`` keeps of a candidate across restarts (see the module doc)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=True)

    v: Literal[1] = 1
    model: str
    version: str
    sha256: str
    since: float
    compared: int = Field(ge=0)
    skipped: int = Field(ge=0)
    agreements: int = Field(ge=0)
    errors: dict[str, int]
    abs_sum: list[float]
    abs_count: list[float]
    abs_max: list[float]
    latency_s: list[float] = Field(description="The candidate's most recent invoke latencies.")
    events: tuple[int, int, int] | None = Field(
        None, description="Detection: events of the active, of the candidate, matched pairs."
    )
    disagreements: list[DisagreementV1] = Field(default_factory=list)

    def same_candidate(self, model: str, version: str, sha256: str) -> bool:
        return (self.model, self.version, self.sha256) == (model, version, sha256)


def save(path: Path, counts: ShadowCounts) -> None:
    """Write ``counts`` to ``path`` atomically (``OSError`` when it cannot)."""
    atomic_write(path, counts.model_dump_json().encode(), mode=0o600)


def load(path: Path, model: str, version: str, sha256: str, outputs: int) -> ShadowCounts | None:
    """The saved counts of this candidate, or None (none saved, another candidate's, or
    unreadable: logged, and the counts start at zero)."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("shadow %s: cannot read the saved counts (%s): starting at 0", version, exc)
        return None
    try:
        if len(data) > MAX_BYTES:
            raise ValueError(f"{len(data)} bytes is too long")
        counts = ShadowCounts.model_validate_json(data)
    except (ValidationError, ValueError) as exc:
        log.warning("shadow %s: %s is unreadable (%s): starting at 0", version, path, exc)
        return None
    if not counts.same_candidate(model, version, sha256):
        log.info(
            "shadow %s: the saved counts are of %s %s (sha256 %s): starting at 0",
            version,
            counts.model,
            counts.version,
            counts.sha256[:12],
        )
        return None
    lengths = {len(counts.abs_sum), len(counts.abs_count), len(counts.abs_max)}
    if lengths != {outputs} or any(math.isnan(x) for x in counts.abs_sum):
        log.warning("shadow %s: the saved counts do not fit its outputs: starting at 0", version)
        return None
    log.info(
        "shadow %s: %d window(s) compared since %.0f: counting on",
        version,
        counts.compared,
        counts.since,
    )
    return counts
