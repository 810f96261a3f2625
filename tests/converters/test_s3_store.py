"""The S3 artifact store against a real S3 API: moto in server mode, started by the test on
a free port, driven through boto3 (the ``s3`` extra) exactly as in production. Covers
publishing, listing, re-hashing a stored version, credentials from the environment, and the
device's download of the published URL with a Range resume."""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import moto.server as moto_server
import pytest

from agent.errors import ConversionError
from agent.ota.download import DownloadSettings, HttpFetcher
from converters.publish import next_version, publish_package
from converters.settings import PublishSettings
from converters.store import open_store
from tests.broker import free_port, wait_for_port
from tests.converters.conftest import Keys
from tests.converters.test_publish import _pkg

MODEL = b"\x1c\x00\x00\x00TFL3" + bytes(range(256)) * 512  # 128 KiB: worth resuming


@dataclass(frozen=True)
class S3:
    endpoint: str
    bucket: str


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[S3]:
    """A moto S3 server on a free port with an empty bucket of this test's own (moto keeps
    buckets per process); credentials only in the environment."""
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "edge-test-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "edge-test-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        wait_for_port(port)
        endpoint = f"http://127.0.0.1:{port}"
        bucket = f"models-{uuid.uuid4().hex[:8]}"
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
        monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
        yield S3(endpoint, bucket)
    finally:
        server.stop()


def _settings(s3: S3, **kw: Any) -> PublishSettings:
    return PublishSettings(store=f"s3://{s3.bucket}/ota/prod", s3_endpoint_url=s3.endpoint, **kw)


def test_publish_list_and_rehash_through_s3(s3: S3, keys: Keys) -> None:
    assert boto3.Session().get_credentials().method == "env"
    settings = _settings(s3)
    first = publish_package(_pkg(keys, "3.1.0", MODEL), settings)
    assert first.uploaded
    assert first.url == f"{s3.endpoint}/{s3.bucket}/ota/prod/fake/3.1.0/model.tflite"
    client = boto3.client("s3", endpoint_url=s3.endpoint)
    keys_found = {
        o["Key"] for o in client.list_objects_v2(Bucket=s3.bucket, Prefix="ota/prod/")["Contents"]
    }
    assert {
        "ota/prod/fake/3.1.0/model.tflite",
        "ota/prod/fake/3.1.0/manifest.json",
        "ota/prod/fake/channels/stable.json",
    } <= keys_found
    body = client.get_object(Bucket=s3.bucket, Key="ota/prod/fake/3.1.0/model.tflite")["Body"]
    assert body.read() == MODEL

    publish_package(_pkg(keys, "3.2.0", MODEL + b"2"), settings)
    store = open_store(settings.store, None, s3.endpoint)
    assert sorted(store.versions("fake")) == ["3.1.0", "3.2.0"]
    assert next_version(store, "fake", "0.1.0") == "3.2.1"

    # a corrupted object in the bucket is re-hashed and replaced before the re-announce
    client.put_object(Bucket=s3.bucket, Key="ota/prod/fake/3.1.0/model.tflite", Body=b"junk")
    again = publish_package(_pkg(keys, "3.1.0", MODEL), settings.model_copy(update={"force": True}))
    assert again.uploaded
    body = client.get_object(Bucket=s3.bucket, Key="ota/prod/fake/3.1.0/model.tflite")["Body"]
    assert body.read() == MODEL


def test_the_device_downloads_the_published_url_with_a_range_resume(
    s3: S3, keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # devices read without credentials: the bucket lets anyone GET the OTA prefix, as a
    # production bucket (or the CDN in front of it, base_url) does
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": "*",
                "Action": "s3:GetObject",
                "Resource": f"arn:aws:s3:::{s3.bucket}/ota/prod/*",
            }
        ],
    }
    boto3.client("s3", endpoint_url=s3.endpoint).put_bucket_policy(
        Bucket=s3.bucket, Policy=json.dumps(policy)
    )
    url = publish_package(_pkg(keys, "1.0.0", MODEL), _settings(s3)).url
    sha = hashlib.sha256(MODEL).hexdigest()
    part = tmp_path / f"{sha}.part"
    half = len(MODEL) // 2
    part.write_bytes(MODEL[:half])  # an interrupted earlier download
    caplog.set_level(logging.INFO, logger="agent.ota.download")
    got = HttpFetcher(DownloadSettings(timeout_s=30)).fetch(url, len(MODEL), sha, part)
    assert got == MODEL
    text = caplog.text
    assert f"at byte {half} of {len(MODEL)}" in text
    assert "ignored the Range request" not in text and "mismatch" not in text


def test_without_credentials_publishing_fails_naming_the_store(
    s3: S3, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    assert boto3.Session().get_credentials() is None
    with pytest.raises(ConversionError, match=f"s3://{s3.bucket}/ota/prod"):
        publish_package(_pkg(keys, "1.0.0", MODEL), _settings(s3))
