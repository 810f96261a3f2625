"""The updater's inbox: the latest announcement per channel, and ``retry`` (the ``install``
command Home Assistant's update entity sends on ``<prefix>/<device>/ota/set``)."""

from __future__ import annotations

from pathlib import Path

from agent.ota.intake import Intake


def test_retry_queues_the_latest_announcement_of_each_channel_again(tmp_path: Path) -> None:
    intake = Intake({"edge/ota/stable/demo": "stable"}, "demo", tmp_path / "incoming")
    assert intake.retry() == 0  # nothing seen yet: nothing to install
    intake.announcement("edge/ota/stable/demo", b'{"v": 1}')
    intake.announcement("edge/ota/stable/demo", b'{"v": 2}')
    intake.announcement("edge/ota/other/demo", b'{"v": 9}')  # not a followed channel
    job, _ = intake.next()
    assert job is not None and job.payload == b'{"v": 2}' and job.channel == "stable"
    assert intake.next()[0] is None
    assert intake.retry() == 1
    again, _ = intake.next()
    assert again is not None and again.payload == b'{"v": 2}'
    # a cleared channel (empty retained message) has nothing to retry
    intake.announcement("edge/ota/stable/demo", b"")
    assert intake.retry() == 0 and intake.next()[0] is None
