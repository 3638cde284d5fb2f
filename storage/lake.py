"""The lake: partitions of Parquet files and the commit protocol, written once for every backend.

Layout: the datasets of ``shared_logic.contract`` (``raw/{type}/dt=…/hour=…/``,
``realtime_ledger/dt=…/``, ``attribution/model=…/dt=…/``, …).

Commit protocol, the same on every file system: a partition's files are
written first under names unique to the write (``part-<run>-NNNNN.parquet``),
then a ``_SUCCESS`` manifest listing them is put in one atomic step, then
files of earlier writes are deleted. Readers take the manifest's files when
there is one, so a reader never sees a half-written or mixed partition, and
rewriting a partition replaces it whole. Append-only datasets (the ledger,
the raw events of the lake sink) add complete files with deterministic
names instead; a retried write overwrites the same name. Compaction
(``storage.compact``) rewrites an append-only partition's files into few:
its outputs stay hidden until a ``_SUCCESS`` manifest names them
(``compacted``) and the files they replace (``replaced``), which readers then
skip (``visible_files``); files added later stay visible.

A backend (``storage.file``, ``storage.s3``) supplies the primitives: list,
put and get small objects atomically, delete, write one Parquet file
atomically, and the URI engines read. ``open_lake`` picks it by URL.
"""

from __future__ import annotations

import json
import logging
import posixpath
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from shared_logic.contract import Dataset

log = logging.getLogger(__name__)

MANIFEST = "_SUCCESS"
#: Files ``storage.compact`` writes; one is visible only once a manifest's ``compacted`` lists it.
COMPACT_PREFIX = "compact-"


def visible_files(listed: Iterable[str], manifest: Mapping[str, Any] | None) -> list[str]:
    """The files of an append-only partition a reader takes, from a listing made after reading its
    manifest: every listed file except compaction's uncommitted outputs and the files a committed
    compaction replaced (a sink's retry may rewrite those names; their rows are compacted)."""
    compacted = set(manifest.get("compacted", ())) if manifest else set()
    replaced = set(manifest.get("replaced", {})) if manifest else set()
    return [n for n in listed if n not in replaced and (n in compacted or not n.startswith(COMPACT_PREFIX))]


@dataclass(frozen=True, slots=True)
class PartitionRef:
    dataset: str
    values: tuple[tuple[str, str], ...]

    @property
    def path(self) -> str:
        return posixpath.join(self.dataset, *(f"{k}={v}" for k, v in self.values))

    def value(self, key: str) -> str:
        return dict(self.values)[key]


def partition(dataset: str | Dataset, **values: Any) -> PartitionRef:
    """A partition of a dataset; a ``Dataset`` fills its path template (``event_type``) first."""
    if isinstance(dataset, Dataset):
        template = {k: values.pop(k) for k in list(values) if k not in dataset.keys}
        path = dataset.at(**template)
    else:
        path = dataset
    return PartitionRef(path, tuple((k, str(v)) for k, v in values.items()))


class Lake(ABC):
    """One lake root; every path below is relative to it."""

    url: str
    root: str
    fs: pafs.FileSystem

    @classmethod
    @abstractmethod
    def from_url(cls, url: str, **context: Any) -> Lake:
        """The lake at ``url`` (context: ``s3``, the S3 settings section)."""

    # primitives of a backend -------------------------------------------------------

    @abstractmethod
    def uri(self, *parts: str) -> str:
        """A URI Spark and other engines can read (``file:///…``, ``s3a://…``)."""

    @abstractmethod
    def _list(self, directory: str) -> tuple[list[str], list[str]]:
        """Names of the files and of the sub-folders directly in a folder (empty if none)."""

    @abstractmethod
    def _put_bytes(self, rel: str, data: bytes) -> None:
        """Write a small object whole, atomically (a marker, a manifest)."""

    @abstractmethod
    def _get_bytes(self, rel: str) -> bytes | None: ...

    @abstractmethod
    def _delete(self, rel: str) -> None: ...

    @abstractmethod
    def _write_parquet(self, rel: str, table: pa.Table) -> None:
        """Write one Parquet file that appears whole or not at all."""

    # paths ---------------------------------------------------------------------------

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def partitions(self, dataset: str, depth: int = 1) -> list[dict[str, str]]:
        """Partition values under a dataset, e.g. ``[{"dt": "2026-11-01"}, …]``, sorted."""
        found: list[dict[str, str]] = [{}]
        for _ in range(depth):
            nxt = []
            for values in found:
                base = posixpath.join(dataset, *(f"{k}={v}" for k, v in values.items()))
                for name in self._list(base)[1]:
                    if "=" in name:
                        k, v = name.split("=", 1)
                        nxt.append({**values, k: v})
            found = nxt
        return sorted(found, key=lambda d: tuple(d.values()))

    # markers ---------------------------------------------------------------------------

    def manifest(self, ref: PartitionRef) -> dict[str, Any] | None:
        raw = self._get_bytes(posixpath.join(ref.path, MANIFEST))
        return json.loads(raw) if raw is not None else None

    def is_complete(self, ref: PartitionRef) -> bool:
        return self.manifest(ref) is not None

    def write_marker(self, ref: PartitionRef, meta: Mapping[str, Any]) -> None:
        """Mark a partition complete; with ``files`` in ``meta`` readers take exactly those."""
        self._put_bytes(posixpath.join(ref.path, MANIFEST), json.dumps(dict(meta), sort_keys=True).encode())

    def commit_written(self, ref: PartitionRef, meta: Mapping[str, Any]) -> None:
        """Commit a partition another engine (Spark) has just written: its files now are the partition."""
        self.write_marker(ref, {"files": self.list_parquet(ref), **meta})

    # writing ---------------------------------------------------------------------------

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
        self.write_marker(ref, {"run_id": run, "files": names, "rows": total, **(meta or {})})
        for stale in self._list(ref.path)[0]:
            if stale not in names and stale != MANIFEST and stale.endswith(".parquet"):
                self._delete(posixpath.join(ref.path, stale))
        return names

    def put_file(self, ref: PartitionRef, name: str, table: pa.Table) -> None:
        """Add one complete file to an append-only partition (a retry rewrites the same name)."""
        self._write_parquet(posixpath.join(ref.path, name), table)

    # reading ---------------------------------------------------------------------------

    def list_parquet(self, ref: PartitionRef) -> list[str]:
        """Names of the Parquet files in a partition's folder now (not the manifest's view)."""
        return sorted(
            n for n in self._list(ref.path)[0] if n.endswith(".parquet") and not n.startswith((".", "_"))
        )

    def files(self, ref: PartitionRef) -> list[str]:
        """Committed Parquet files of a partition, relative to the lake root."""
        manifest = self.manifest(ref)
        if manifest is not None and "files" in manifest:
            names = list(manifest["files"])
        else:  # an append-only partition; compaction (``storage.compact``) hides what it replaced
            names = visible_files(self.list_parquet(ref), manifest)
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
