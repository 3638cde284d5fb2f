"""A lake on S3 or an S3-compatible endpoint (``s3://bucket/prefix``).

Parquet goes through pyarrow's S3 file system; listing and small objects
through boto3. A PUT is atomic per object, so a file or a manifest appears
whole or not at all.
"""

from __future__ import annotations

import posixpath
from typing import Any
from urllib.parse import urlparse

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from shared_logic.settings import S3Settings
from storage.errors import LakeError
from storage.lake import Lake


class S3Lake(Lake):
    def __init__(self, url: str, s3: S3Settings) -> None:
        parsed = urlparse(url)
        self.url = url
        self.bucket = parsed.netloc
        if not self.bucket:
            raise LakeError("lake url", url, "an s3:// url needs a bucket")
        secret = s3.secret_key.get_secret_value() if s3.secret_key is not None else None
        endpoint = urlparse(s3.endpoint_url) if s3.endpoint_url else None
        self.fs = pafs.S3FileSystem(
            access_key=s3.access_key,
            secret_key=secret,
            region=s3.region,
            endpoint_override=endpoint.netloc if endpoint else None,
            scheme=endpoint.scheme if endpoint else "https",
        )
        self.root = posixpath.join(self.bucket, parsed.path.strip("/")).rstrip("/")
        self._s3: Any = boto3.client(
            "s3",
            endpoint_url=s3.endpoint_url,
            aws_access_key_id=s3.access_key,
            aws_secret_access_key=secret,
            region_name=s3.region,
        )

    @classmethod
    def from_url(cls, url: str, **context: Any) -> S3Lake:
        return cls(url, context.get("s3") or S3Settings())

    def uri(self, *parts: str) -> str:
        return f"s3a://{self.path(*parts)}"

    def _key(self, rel: str) -> str:
        return self.path(rel)[len(self.bucket) + 1 :]

    def _list(self, directory: str) -> tuple[list[str], list[str]]:
        prefix = self._key(directory).rstrip("/") + "/"
        files: list[str] = []
        dirs: list[str] = []
        for page in self._s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix, Delimiter="/"
        ):
            files += [obj["Key"][len(prefix) :] for obj in page.get("Contents", [])]
            dirs += [p["Prefix"][len(prefix) :].rstrip("/") for p in page.get("CommonPrefixes", [])]
        return files, dirs

    def _put_bytes(self, rel: str, data: bytes) -> None:
        self._s3.put_object(Bucket=self.bucket, Key=self._key(rel), Body=data)

    def _get_bytes(self, rel: str) -> bytes | None:
        try:
            return bytes(self._s3.get_object(Bucket=self.bucket, Key=self._key(rel))["Body"].read())
        except self._s3.exceptions.NoSuchKey:
            return None

    def _delete(self, rel: str) -> None:
        self._s3.delete_object(Bucket=self.bucket, Key=self._key(rel))

    def _write_parquet(self, rel: str, table: pa.Table) -> None:
        pq.write_table(table, self.path(rel), filesystem=self.fs, compression="zstd")
