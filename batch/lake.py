"""The lake: paths and Parquet I/O over a local folder (``file://``) or S3 (``s3://``).

Layout (DESIGN.md): ``raw/{type}/dt=YYYY-MM-DD/hour=HH/``, ``realtime_ledger/dt=…/``,
``attribution/model=…/dt=…/``, ``metrics/campaign_daily/dt=…/``,
``reconciliation/dt=…/``.

Commit protocol, the same on both file systems: a partition's files are
written first under names unique to the write (``part-<run>-NNNNN.parquet``),
then a ``_SUCCESS`` manifest listing them is put in one atomic step (a rename
locally, a single PUT on S3), then files of earlier writes are deleted.
Readers take the manifest's files when there is one, so a reader never sees a
half-written or mixed partition, and rewriting a partition replaces it whole.
Append-only datasets (the ledger) add complete files with deterministic names
instead; a retried write overwrites the same name.

Parquet goes through pyarrow's file systems; on S3, listing and markers go
through boto3. No Spark here: the speed layer writes its ledger with this too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import posixpath
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs as pafs
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared_logic.errors import AttributionError

log = logging.getLogger(__name__)

MANIFEST = "_SUCCESS"


class LakeError(AttributionError):
    """A lake URL or operation that cannot be served."""


class S3Settings(BaseSettings):
    """Connection to S3 or an S3-compatible endpoint (``ATTRIBUTION_S3_*``)."""

    model_config = SettingsConfigDict(env_prefix="ATTRIBUTION_S3_", frozen=True, extra="forbid")

    endpoint_url: str | None = Field(None, description="e.g. http://127.0.0.1:9000; empty for AWS")
    access_key: str | None = None
    secret_key: str | None = None
    region: str = "us-east-1"


@dataclass(frozen=True, slots=True)
class PartitionRef:
    dataset: str
    values: tuple[tuple[str, str], ...]

    @property
    def path(self) -> str:
        return posixpath.join(self.dataset, *(f"{k}={v}" for k, v in self.values))


def partition(dataset: str, **values: Any) -> PartitionRef:
    return PartitionRef(dataset, tuple((k, str(v)) for k, v in values.items()))


class Lake:
    """One lake root; every path below is relative to it."""

    def __init__(self, url: str, s3: S3Settings | None = None) -> None:
        parsed = urlparse(url)
        self.url = url
        self.scheme = parsed.scheme or "file"
        if self.scheme == "file":
            root = os.path.abspath(os.path.join(parsed.netloc, parsed.path) if parsed.netloc else parsed.path)
            os.makedirs(root, exist_ok=True)
            self.fs: pafs.FileSystem = pafs.LocalFileSystem()
            self.root = root
            self._s3: Any = None
            self.bucket = ""
        elif self.scheme in ("s3", "s3a"):
            s3 = s3 or S3Settings()
            self.bucket = parsed.netloc
            if not self.bucket:
                raise LakeError(f"lake url = {url!r}: an s3:// url needs a bucket")
            endpoint = urlparse(s3.endpoint_url) if s3.endpoint_url else None
            self.fs = pafs.S3FileSystem(
                access_key=s3.access_key,
                secret_key=s3.secret_key,
                region=s3.region,
                endpoint_override=endpoint.netloc if endpoint else None,
                scheme=endpoint.scheme if endpoint else "https",
            )
            self.root = posixpath.join(self.bucket, parsed.path.strip("/")).rstrip("/")
            import boto3

            self._s3 = boto3.client(
                "s3",
                endpoint_url=s3.endpoint_url,
                aws_access_key_id=s3.access_key,
                aws_secret_access_key=s3.secret_key,
                region_name=s3.region,
            )
        else:
            raise LakeError(f"lake url = {url!r}: scheme must be file:// or s3://")

    # paths ------------------------------------------------------------------

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def uri(self, *parts: str) -> str:
        """A URI Spark and other engines can read (``file:///…`` or ``s3a://…``)."""
        p = self.path(*parts)
        return f"file://{p}" if self.scheme == "file" else f"s3a://{p}"

    def _key(self, full: str) -> str:
        return full[len(self.bucket) + 1 :]

    # listing ----------------------------------------------------------------

    def _list(self, directory: str) -> list[str]:
        """Names of the files directly in a directory (empty if it does not exist)."""
        full = self.path(directory)
        if self._s3 is not None:
            prefix = self._key(full).rstrip("/") + "/"
            names: list[str] = []
            for page in self._s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix, Delimiter="/"
            ):
                names += [obj["Key"][len(prefix) :] for obj in page.get("Contents", [])]
            return names
        try:
            return [e.base_name for e in self.fs.get_file_info(pafs.FileSelector(full)) if e.is_file]
        except FileNotFoundError:
            return []

    def _subdirs(self, directory: str) -> list[str]:
        full = self.path(directory)
        if self._s3 is not None:
            prefix = self._key(full).rstrip("/") + "/"
            out: list[str] = []
            for page in self._s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix, Delimiter="/"
            ):
                out += [p["Prefix"][len(prefix) :].rstrip("/") for p in page.get("CommonPrefixes", [])]
            return out
        try:
            return [
                e.base_name
                for e in self.fs.get_file_info(pafs.FileSelector(full))
                if e.type == pafs.FileType.Directory
            ]
        except FileNotFoundError:
            return []

    def partitions(self, dataset: str, depth: int = 1) -> list[dict[str, str]]:
        """Partition values under a dataset, e.g. ``[{"dt": "2026-11-01"}, …]``, sorted."""
        found: list[dict[str, str]] = [{}]
        for _ in range(depth):
            nxt = []
            for values in found:
                base = posixpath.join(dataset, *(f"{k}={v}" for k, v in values.items()))
                for name in self._subdirs(base):
                    if "=" in name:
                        k, v = name.split("=", 1)
                        nxt.append({**values, k: v})
            found = nxt
        return sorted(found, key=lambda d: tuple(d.values()))

    # markers ----------------------------------------------------------------

    def _put_bytes(self, rel: str, data: bytes) -> None:
        full = self.path(rel)
        if self._s3 is not None:
            self._s3.put_object(Bucket=self.bucket, Key=self._key(full), Body=data)
            return
        os.makedirs(posixpath.dirname(full), exist_ok=True)
        tmp = f"{full}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, full)

    def _get_bytes(self, rel: str) -> bytes | None:
        full = self.path(rel)
        if self._s3 is not None:
            try:
                body = self._s3.get_object(Bucket=self.bucket, Key=self._key(full))["Body"]
                return bytes(body.read())
            except self._s3.exceptions.NoSuchKey:
                return None
        try:
            with open(full, "rb") as fh:
                return fh.read()
        except FileNotFoundError:
            return None

    def _delete(self, rel: str) -> None:
        full = self.path(rel)
        if self._s3 is not None:
            self._s3.delete_object(Bucket=self.bucket, Key=self._key(full))
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(full)

    def manifest(self, ref: PartitionRef) -> dict[str, Any] | None:
        raw = self._get_bytes(posixpath.join(ref.path, MANIFEST))
        return json.loads(raw) if raw is not None else None

    def is_complete(self, ref: PartitionRef) -> bool:
        return self.manifest(ref) is not None

    # writing ----------------------------------------------------------------

    def _write_parquet(self, rel: str, table: pa.Table) -> None:
        full = self.path(rel)
        if self._s3 is None:
            os.makedirs(posixpath.dirname(full), exist_ok=True)
            tmp = f"{posixpath.dirname(full)}/.{posixpath.basename(full)}.{uuid.uuid4().hex}.tmp"
            pq.write_table(table, tmp, filesystem=self.fs, compression="zstd")
            os.replace(tmp, full)
        else:
            # An S3 PUT is atomic per object: the object appears whole or not at all.
            pq.write_table(table, full, filesystem=self.fs, compression="zstd")

    def write_partition(
        self,
        ref: PartitionRef,
        table: pa.Table,
        meta: Mapping[str, Any] | None = None,
        max_rows_per_file: int = 1_000_000,
    ) -> list[str]:
        """Replace a whole partition atomically with ``table``; returns the new file names."""
        run = uuid.uuid4().hex[:12]
        names: list[str] = []
        total = table.num_rows
        for i, start in enumerate(range(0, max(total, 1), max_rows_per_file)):
            name = f"part-{run}-{i:05d}.parquet"
            self._write_parquet(posixpath.join(ref.path, name), table.slice(start, max_rows_per_file))
            names.append(name)
        manifest = {"run_id": run, "files": names, "rows": total, **(meta or {})}
        self._put_bytes(posixpath.join(ref.path, MANIFEST), json.dumps(manifest, sort_keys=True).encode())
        for stale in self._list(ref.path):
            if stale not in names and stale != MANIFEST and stale.endswith(".parquet"):
                self._delete(posixpath.join(ref.path, stale))
        return names

    def put_file(self, ref: PartitionRef, name: str, table: pa.Table) -> None:
        """Add one complete file to an append-only partition (a retry rewrites the same name)."""
        self._write_parquet(posixpath.join(ref.path, name), table)

    def write_marker(self, ref: PartitionRef, meta: Mapping[str, Any]) -> None:
        """Mark an append-only partition complete without a file list."""
        self._put_bytes(posixpath.join(ref.path, MANIFEST), json.dumps(dict(meta), sort_keys=True).encode())

    # reading ----------------------------------------------------------------

    def list_parquet(self, ref: PartitionRef) -> list[str]:
        """Names of the Parquet files in a partition's folder now (not the manifest's view)."""
        return sorted(
            n for n in self._list(ref.path) if n.endswith(".parquet") and not n.startswith((".", "_"))
        )

    def files(self, ref: PartitionRef) -> list[str]:
        """Committed Parquet files of a partition, relative to the lake root."""
        manifest = self.manifest(ref)
        if manifest is not None and "files" in manifest:
            names = list(manifest["files"])
        else:
            names = sorted(
                n for n in self._list(ref.path) if n.endswith(".parquet") and not n.startswith((".", "_"))
            )
        return [posixpath.join(ref.path, n) for n in names]

    def read(self, refs: Iterable[PartitionRef], columns: list[str] | None = None) -> pa.Table:
        """All rows of the given partitions, with partition values added as string columns."""
        tables = []
        for ref in refs:
            for rel in self.files(ref):
                t = pq.read_table(self.path(rel), filesystem=self.fs, columns=columns)
                for k, v in ref.values:
                    if k not in t.column_names:
                        t = t.append_column(k, pa.array([v] * t.num_rows, pa.string()))
                tables.append(t)
        if not tables:
            return pa.table({})
        return pa.concat_tables(tables, promote_options="default")
