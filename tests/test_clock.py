"""A clock we cannot trust (issue 13): the lower bound, timesyncd's state, the payload flag."""

from __future__ import annotations

import json
import time
from pathlib import Path

from agent.clock import ClockStatus, TimeFloor, synchronised
from agent.delivery.publisher import PayloadEncoder, PredictionRecord
from agent.wire.predictions import PredictionV1


def test_the_floor_is_durable_and_never_lowered(tmp_path: Path) -> None:
    f = TimeFloor(tmp_path / "clock.json")
    assert f.get() == 0.0
    f.raise_to(2_000_000_000.0)
    f.raise_to(1_000_000_000.0)
    assert TimeFloor(tmp_path / "clock.json").get() == 2_000_000_000.0


def test_a_clock_behind_the_floor_or_unsynchronised_is_not_ok(tmp_path: Path) -> None:
    timesync = tmp_path / "timesync"
    c = ClockStatus(tmp_path, timesync_dir=timesync)
    assert synchronised(timesync) is None  # no timesyncd: nothing known
    assert c.ok() == (True, "")
    c.floor.raise_to(time.time() + 3600)  # a trusted timestamp signed an hour "ahead"
    ok, why = c.ok()
    assert not ok and "before the newest trusted time" in why
    assert c.ok(now=time.time() + 7200)[0]
    timesync.mkdir()  # timesyncd runs, has not synchronised yet
    ok, why = c.ok(now=time.time() + 7200)
    assert not ok and "timesyncd" in why
    (timesync / "synchronized").touch()
    assert c.ok(now=time.time() + 7200)[0]


def test_predictions_before_sync_say_so(tmp_path: Path) -> None:
    enc = PayloadEncoder("dev-1", boot=3)
    rec = PredictionRecord("t", "m", "1.0.0", "s", 1.5, {"y": [1.0]}, 0.1, 0.0)
    synced = json.loads(enc(7, rec))
    assert "clock_synced" not in synced and synced["boot"] == 3
    enc.unsynced = True
    p = PredictionV1.model_validate_json(enc(8, rec))
    assert p.clock_synced is False and p.seq == 8
    assert PredictionV1.model_validate(synced).clock_synced is True
