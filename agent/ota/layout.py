"""Where the update path keeps its files under ``agent.state_dir`` (docs/ota.md draws it).

<state_dir>/ota/state.json            the state machine (agent.ota.state)
<state_dir>/ota/floor.json            highest version accepted, per model (agent.ota.decide)
<state_dir>/ota/shadow.json           the shadow's running counts (agent.pipeline.shadowcounts)
<state_dir>/ota/downloads/<sha>.part  the download in progress (agent.ota.download)
<state_dir>/ota/paused-<state>        test hook markers only
<state_dir>/models/...                installed versions, current/previous (agent.ota.store)
<state_dir>/incoming/                 watched drop-in folder (default of ota.incoming_dir)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent.config import Config


@dataclass(frozen=True)
class OtaPaths:
    """Where OTA keeps its files under the state directory."""

    state_dir: Path
    incoming: Path

    @classmethod
    def of(cls, cfg: Config) -> OtaPaths:
        state_dir = cfg.agent.state_dir
        return cls(state_dir, cfg.ota.incoming_dir or state_dir / "incoming")

    @property
    def ota(self) -> Path:
        return self.state_dir / "ota"

    @property
    def state_file(self) -> Path:
        return self.ota / "state.json"

    @property
    def floor_file(self) -> Path:
        return self.ota / "floor.json"

    @property
    def shadow_counts(self) -> Path:
        return self.ota / "shadow.json"

    @property
    def downloads(self) -> Path:
        return self.ota / "downloads"

    def part(self, sha256: str) -> Path:
        return self.downloads / f"{sha256}.part"

    @property
    def rejected(self) -> Path:
        return self.incoming / "rejected"
