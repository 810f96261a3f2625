"""Watch mode against a real Mosquitto: a dropped model is published, a broken one is not."""

from __future__ import annotations

import json
import os
import queue
import shutil
import threading
from pathlib import Path

import pytest

from agent.release.manifest import Announcement, parse_manifest
from agent.release.package import read_package
from converters.settings import WATCH_CONFIG_NAME
from converters.watch import DropReport, DropWatcher, report_path, version_from_name
from tests.broker import Broker
from tests.converters.conftest import Keys, Trained
from tests.mqttclient import Collector

pytestmark = pytest.mark.slow


def _write_config(
    folder: Path, trained: Trained, keys: Keys, store: Path, port: int | None
) -> None:
    mqtt = (
        f'[publish.mqtt]\nhost = "127.0.0.1"\nport = {port}\ntopic_prefix = "w"\n' if port else ""
    )
    (folder / WATCH_CONFIG_NAME).write_text(
        f"""
[build]
name = "vib"
mode = "int8"
calibration = "{trained.calibration}"
validation = "{trained.validation}"
labels = {json.dumps(list(trained.labels))}
private_key = "{keys.private}"
max_accuracy_drop = 0.05
golden_samples = 2

[build.preprocess]
window = 32
hop = 16

[publish]
store = "{store}"
channel = "canary"
trusted_keys = ["{keys.public}"]

[publish.targets]
percent = 50

{mqtt}
[watch]
settle_s = 0.5
"""
    )


def test_version_from_name() -> None:
    assert version_from_name(Path("vib-1.2.3.keras")) == "1.2.3"
    assert version_from_name(Path("vib-2.0.0-rc.1.h5")) == "2.0.0-rc.1"
    assert version_from_name(Path("vib.keras")) is None


def test_dropped_model_is_published_and_broken_one_is_not(
    tmp_path: Path, broker: Broker, trained: Trained, keys: Keys
) -> None:
    drop, store = tmp_path / "drop", tmp_path / "store"
    drop.mkdir()
    _write_config(drop, trained, keys, store, broker.port)
    reports: queue.Queue[tuple[Path, DropReport]] = queue.Queue()
    watcher = DropWatcher(drop, on_report=lambda p, r: reports.put((p, r)))
    watcher.start()
    try:
        with Collector(broker.host, broker.port, ["w/ota/#"]) as collector:
            # drop the way people do: copy in (written and closed while we watch)
            shutil.copy(trained.keras_path, drop / "vib.keras")
            path, report = reports.get(timeout=120)
            assert path.name == "vib.keras"
            assert report.status == "published", report.error
            collector.wait_for(lambda m: len(m) >= 1)

            # a broken file: a report, and no announcement
            tmp = drop / ".broken.keras.part"
            tmp.write_bytes(b"this is not a model")
            os.replace(tmp, drop / "broken-9.9.9.keras")
            path, broken = reports.get(timeout=60)
        assert path.name == "broken-9.9.9.keras"
        assert broken.status == "failed" and broken.failed_step == "build"
        assert "cannot load Keras model" in (broken.error or "")
    finally:
        watcher.stop()

    assert report.version == "0.1.0" and report.topic == "w/ota/canary/vib"
    assert report.verification is not None and report.verification.passed
    artifact = store / "vib" / "0.1.0" / "model.tflite"
    pkg = read_package(store / "vib" / "0.1.0" / "vib-0.1.0.eapkg")
    assert artifact.read_bytes() == pkg.model
    assert not (store / "vib" / "9.9.9").exists()
    on_disk = DropReport.model_validate_json(report_path(drop / "vib.keras").read_bytes())
    assert on_disk.status == "published"
    assert (
        DropReport.model_validate_json(report_path(drop / "broken-9.9.9.keras").read_bytes()).status
        == "failed"
    )

    # the retained announcement is what a device connecting now sees
    with Collector(broker.host, broker.port, ["w/ota/#"]) as late:
        (msg,) = late.wait_for(lambda m: len(m) >= 1)
    assert msg.retain and msg.topic == "w/ota/canary/vib"
    ann = Announcement.model_validate_json(msg.payload)
    assert parse_manifest(ann.manifest_bytes).version == "0.1.0"
    assert ann.targets.percent == 50
    assert [m.topic for m in collector.messages] == ["w/ota/canary/vib"]


def test_once_mode_skips_reported_inputs_and_reports_config_errors(
    tmp_path: Path, trained: Trained, keys: Keys
) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    shutil.copy(trained.keras_path, drop / "vib-1.0.0.keras")
    # no config yet: the failure is in the report, naming the config step
    (report,) = DropWatcher(drop).run_once()
    assert report.status == "failed" and report.failed_step == "config"
    assert "edge-convert.toml" in (report.error or "")
    assert DropWatcher(drop).run_once() == []  # reported inputs are not redone
    report_path(drop / "vib-1.0.0.keras").unlink()
    (drop / WATCH_CONFIG_NAME).write_text('[build]\nname = "vib"\nmode = "float32"\ntypo = 1\n')
    (report,) = DropWatcher(drop).run_once()
    assert report.failed_step == "config" and "typo" in (report.error or "")


def test_watcher_waits_for_a_file_being_written(tmp_path: Path) -> None:
    """A file still growing is not taken; once it stops changing, it is."""
    drop = tmp_path / "drop"
    drop.mkdir()
    done = threading.Event()
    seen: list[str] = []

    def on_report(p: Path, r: DropReport) -> None:
        seen.append(p.name)
        done.set()

    watcher = DropWatcher(drop, settle_s=1.0, on_report=on_report)
    watcher.start()
    try:
        with (drop / "slow.tflite").open("wb") as f:  # kept open: no close-write event yet
            for _ in range(5):
                f.write(b"x" * 1000)
                f.flush()
                assert not done.wait(0.1)  # writes keep coming faster than settle_s
        assert done.wait(30)
    finally:
        watcher.stop()
    assert seen == ["slow.tflite"]
    report = DropReport.model_validate_json(report_path(drop / "slow.tflite").read_bytes())
    assert report.failed_step == "config"  # no config in this folder; it was still reported
