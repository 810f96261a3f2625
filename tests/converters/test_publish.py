"""Publishing to a local store and a real Mosquitto: retained announcements, version rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.config import MqttSection
from agent.errors import ConversionError, PackageError
from agent.release.manifest import Announcement, Targets, parse_manifest
from agent.release.package import Package, make_package, read_package
from agent.release.signing import verify
from converters.publish import next_version, publish_package
from converters.settings import PublishSettings
from converters.store import LocalStore, open_store
from tests.broker import Broker
from tests.converters.conftest import Keys
from tests.converters.fakes import fake_manifest
from tests.mqttclient import Collector

MODEL = b"\x1c\x00\x00\x00TFL3" + b"\x01" * 500


def _pkg(keys: Keys, version: str, model: bytes = MODEL) -> Package:
    return make_package(fake_manifest(model, version=version), model, keys.key)


def _settings(store: Path, broker: Broker | None, **kw: object) -> PublishSettings:
    mqtt = MqttSection(host="127.0.0.1", port=broker.port, topic_prefix="t1") if broker else None
    return PublishSettings(store=str(store), base_url="http://ota.test/store", mqtt=mqtt, **kw)  # type: ignore[arg-type]


def test_publish_uploads_then_announces_retained(
    tmp_path: Path, broker: Broker, keys: Keys
) -> None:
    store = tmp_path / "store"
    pkg = _pkg(keys, "1.0.0")
    settings = _settings(
        store, broker, channel="canary", targets=Targets(groups=["lab"], percent=25)
    )
    result = publish_package(pkg, settings)
    assert result.uploaded and result.topic == "t1/ota/canary/fake"
    base = store / "fake" / "1.0.0"
    assert (base / "model.tflite").read_bytes() == MODEL
    assert (base / "manifest.json").read_bytes() == pkg.manifest_bytes
    assert read_package(base / "fake-1.0.0.eapkg").manifest == pkg.manifest
    assert json.loads((base / "manifest.sig").read_bytes())["key_id"] == keys.key.key_id
    assert result.url == "http://ota.test/store/fake/1.0.0/model.tflite"

    # a subscriber arriving later gets the retained announcement
    with Collector(broker.host, broker.port, ["t1/ota/#"]) as c:
        msgs = c.wait_for(lambda m: len(m) >= 1)
    assert msgs[0].retain and msgs[0].topic == "t1/ota/canary/fake"
    ann = Announcement.model_validate_json(msgs[0].payload)
    assert ann.targets == Targets(groups=["lab"], percent=25)
    assert ann.url == result.url and ann.package_url == result.package_url
    assert ann.key_id == keys.key.key_id and ann.signature is not None
    # the device's view: verify over the manifest string's bytes, then parse
    import base64

    from agent.release.signing import load_public_key

    verify(
        ann.manifest_bytes,
        base64.b64decode(ann.signature),
        ann.key_id,
        [load_public_key(keys.public)],
    )
    assert parse_manifest(ann.manifest_bytes).artifact.sha256 == pkg.manifest.artifact.sha256
    channel_file = store / "fake" / "channels" / "canary.json"
    assert Announcement.model_validate_json(channel_file.read_bytes()).manifest == ann.manifest


def test_version_rules(tmp_path: Path, broker: Broker, keys: Keys) -> None:
    store = tmp_path / "store"
    settings = _settings(store, broker)
    assert publish_package(_pkg(keys, "1.1.0"), settings).uploaded
    # same version, same hash: idempotent re-announce, nothing uploaded
    again = publish_package(_pkg(keys, "1.1.0"), settings)
    assert not again.uploaded and again.topic
    # the stored model corrupted: re-hashed before announcing, and replaced (issue 14 finding 5)
    stored = store / "fake" / "1.1.0" / "model.tflite"
    stored.write_bytes(b"X" + MODEL[1:])
    repaired = publish_package(_pkg(keys, "1.1.0"), settings)
    assert repaired.uploaded and stored.read_bytes() == MODEL
    # same version, different model: refused, force or not
    for force in (False, True):
        with pytest.raises(ConversionError, match="different model"):
            publish_package(
                _pkg(keys, "1.1.0", MODEL + b"!"), settings.model_copy(update={"force": force})
            )
    # older version: refused unless forced
    with pytest.raises(ConversionError, match="older"):
        publish_package(_pkg(keys, "1.0.9"), settings)
    forced = publish_package(_pkg(keys, "1.0.9"), settings.model_copy(update={"force": True}))
    assert forced.announcement.manifest == _pkg(keys, "1.0.9").manifest_bytes.decode()
    # newer version: fine (the broker's channel is now at 1.0.9; 1.2.0 > both)
    publish_package(_pkg(keys, "1.2.0"), settings)
    with Collector(broker.host, broker.port, ["t1/ota/stable/fake"]) as c:
        (msg,) = c.wait_for(lambda m: len(m) >= 1)
    assert (
        parse_manifest(Announcement.model_validate_json(msg.payload).manifest_bytes).version
        == "1.2.0"
    )
    assert next_version(LocalStore(store), "fake", "0.1.0") == "1.2.1"


def test_channel_in_store_guards_without_broker(tmp_path: Path, keys: Keys) -> None:
    settings = _settings(tmp_path / "store", None)
    publish_package(_pkg(keys, "2.0.0"), settings)
    with pytest.raises(ConversionError, match=r"\(store\) is at fake 2.0.0"):
        publish_package(_pkg(keys, "1.0.0"), settings)


def test_untrusted_or_tampered_package_is_not_published(
    tmp_path: Path, keys: Keys, other_keys: Keys
) -> None:
    store = tmp_path / "store"
    settings = _settings(store, None, trusted_keys=[keys.public])
    with pytest.raises(PackageError, match="unknown_key"):
        publish_package(_pkg(other_keys, "1.0.0"), settings)
    good = _pkg(keys, "1.0.0")
    tampered = Package(good.manifest, good.manifest_bytes, MODEL[:-1] + b"\x02", good.signature)
    with pytest.raises(PackageError, match="hash_mismatch"):
        publish_package(tampered, settings)
    assert not store.exists() or not any(store.rglob("*.tflite"))


def test_unknown_store_and_missing_boto3(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="unknown store"):
        open_store("ftp://x/y")
    try:
        import boto3  # noqa: F401
    except ImportError:
        with pytest.raises(ConversionError, match=r"pip install 'edge-agent\[s3\]'"):
            open_store("s3://bucket/prefix")


def test_publish_command(tmp_path: Path, broker: Broker, keys: Keys) -> None:
    from converters.cli import main

    pkg_path = tmp_path / "fake-4.0.0.eapkg"
    pkg_path.write_bytes(_pkg(keys, "4.0.0").to_bytes())
    argv = [
        "publish",
        str(pkg_path),
        "--store",
        str(tmp_path / "store"),
        "--channel",
        "beta",
        "--groups",
        "a,b",
        "--percent",
        "5",
        "--trusted-key",
        str(keys.public),
        "--mqtt-host",
        "127.0.0.1",
        "--mqtt-port",
        str(broker.port),
        "--topic-prefix",
        "cli",
    ]
    assert main(argv) == 0
    with Collector(broker.host, broker.port, ["cli/ota/#"]) as c:
        (msg,) = c.wait_for(lambda m: len(m) >= 1)
    assert msg.topic == "cli/ota/beta/fake" and msg.retain
    assert Announcement.model_validate_json(msg.payload).targets == Targets(
        groups=["a", "b"], percent=5
    )
    assert (tmp_path / "store" / "fake" / "4.0.0" / "model.tflite").read_bytes() == MODEL
    older = tmp_path / "fake-3.0.0.eapkg"
    older.write_bytes(_pkg(keys, "3.0.0").to_bytes())
    argv[1] = str(older)
    assert main(argv) == 1  # older than the channel: refused
    assert main([*argv, "--percent", "500"]) == 2  # invalid settings
