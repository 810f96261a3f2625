"""S3-compatible artifact store (AWS S3, MinIO, Ceph, ...): the ``s3`` extra.

``boto3`` is imported when an ``s3://bucket/prefix`` store is opened, never before; without it
the error names the package to install. Credentials come from boto3's usual chain
(environment, ~/.aws, instance role): never from our config files.
"""

from __future__ import annotations

import logging
from typing import Any

from agent.errors import ConversionError
from converters.keys import check_key

log = logging.getLogger(__name__)


def _boto3() -> Any:
    try:
        import boto3
    except ImportError as exc:
        raise ConversionError("an s3:// store needs boto3: pip install 'edge-agent[s3]'") from exc
    return boto3


class S3Store:
    """Objects under ``s3://bucket/prefix/``."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        base_url: str | None = None,
        endpoint_url: str | None = None,
        client: Any = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._client = (
            client if client is not None else _boto3().client("s3", endpoint_url=endpoint_url)
        )
        default = f"{(endpoint_url or 'https://s3.amazonaws.com').rstrip('/')}/{bucket}"
        if self.prefix:
            default += f"/{self.prefix}"
        self.base_url = (base_url or default).rstrip("/")
        self.description = f"s3://{bucket}/{self.prefix}"

    @classmethod
    def from_url(
        cls, url: str, *, base_url: str | None = None, endpoint_url: str | None = None
    ) -> S3Store:
        rest = url.removeprefix("s3://")
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise ConversionError(f"{url!r}: an S3 store needs a bucket (s3://bucket/prefix)")
        return cls(bucket, prefix, base_url=base_url, endpoint_url=endpoint_url)

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _errors(self) -> tuple[type[BaseException], ...]:
        try:
            from botocore.exceptions import BotoCoreError, ClientError
        except ImportError:  # a fake client in tests
            return (OSError,)
        return (BotoCoreError, ClientError, OSError)

    def put(self, key: str, data: bytes) -> None:
        try:
            self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        except self._errors() as exc:
            raise ConversionError(f"cannot upload {key} to {self.description}: {exc}") from exc

    def get(self, key: str, max_bytes: int) -> bytes | None:
        try:
            obj = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
        except self._errors() as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code")
            if code in {"NoSuchKey", "404", "NotFound"}:
                return None
            raise ConversionError(f"cannot read {key} from {self.description}: {exc}") from exc
        body = obj["Body"]
        data: bytes = body.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise ConversionError(f"{key} in {self.description} is over {max_bytes} bytes")
        return data

    def url(self, key: str) -> str:
        return f"{self.base_url}/{check_key(key)}"

    def versions(self, name: str) -> list[str]:
        prefix = self._key(name) + "/"
        out: list[str] = []
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix, Delimiter="/"
            )
            for page in pages:
                for cp in page.get("CommonPrefixes", []):
                    part = str(cp["Prefix"])[len(prefix) :].strip("/")
                    if part and part != "channels":
                        out.append(part)
        except self._errors() as exc:
            raise ConversionError(f"cannot list {prefix} in {self.description}: {exc}") from exc
        return out
