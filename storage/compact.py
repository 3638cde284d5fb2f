"""Compaction: an append-only partition's many small files rewritten into few, atomically.

The lake sink lands one file per roll per event hour (a roll every ``sink.roll_age_s`` when it is
caught up), so a lake of many hours holds millions of small files and every listing and read
pays per file. ``compact_partition``
rewrites the files a reader sees now into ``compact-<run>-NNNNN.parquet`` files of about
``target_mib`` each, then commits them in one atomic step: a ``_SUCCESS`` manifest naming the
new files (``compacted``) and the files they replace (``replaced``, with the commit time).
``Lake.files`` (``storage.lake.visible_files``) then takes the new files, never the replaced
ones, and still every file landed later. So a reader sees the old files or the new ones, never
both and never neither:

- before the commit, ``compact-*`` files the manifest does not name are invisible (a crash
  there leaves the old files in place, and the next run deletes the orphans);
- the replaced files are deleted only ``grace_s`` after their commit (by a later run), so a
  reader that read the old manifest and listed the old files can still open them;
- their names stay in the manifest: a lake sink that re-rolls a range after a crash rewrites
  a replaced name, whose rows are already compacted; the rewrite stays hidden (exactly once).
  ``attribution land`` names files by content, so the same holds for a repeated backfill.

Idempotent: a partition whose visible files are exactly the committed compacted ones is left
alone. One compactor per partition at a time (the nightly DAG's task, or the operator's
command); the sink may keep landing meanwhile. Rows are copied file by file (memory: one
source file and one output row group), in the order they were listed; the row multiset is kept.
"""

from __future__ import annotations

import logging
import posixpath
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from typing import Any

import pyarrow.parquet as pq

from shared_logic.contract import DEAD_LETTERS, RAW
from shared_logic.events import EVENT_TYPES
from storage.lake import COMPACT_PREFIX, Lake, PartitionRef, partition, visible_files
from storage.raw import landed_hours

log = logging.getLogger(__name__)

#: Default size of a compacted file (before compression estimates: from the source files' sizes).
TARGET_MIB = 128
#: Replaced files are deleted by a run this long after their commit (readers may hold them).
GRACE_S = 3600


@dataclass(frozen=True, slots=True)
class Compacted:
    """What one partition's compaction did."""

    path: str
    files_before: int  # visible files before
    files_after: int  # visible files after
    rows: int
    bytes_before: int
    deleted: int  # replaced (or orphaned) files removed from storage by this run
    skipped: bool  # already compact: nothing rewritten


def _size(lake: Lake, rel: str) -> int:
    return int(lake.fs.get_file_info(lake.path(rel)).size or 0)


def _collect_garbage(lake: Lake, ref: PartitionRef, manifest: dict[str, Any] | None, grace_s: float) -> int:
    """Delete orphaned ``compact-*`` outputs of crashed runs and replaced files past their grace."""
    now_ms = int(time.time() * 1000)
    compacted = set(manifest.get("compacted", ())) if manifest else set()
    replaced: dict[str, int] = dict(manifest.get("replaced", {})) if manifest else {}
    deleted = 0
    for name in lake.list_parquet(ref):
        orphan = name.startswith(COMPACT_PREFIX) and name not in compacted
        expired = name in replaced and replaced[name] + grace_s * 1000 <= now_ms
        if orphan or expired:
            lake._delete(posixpath.join(ref.path, name))
            deleted += 1
    return deleted


def compact_partition(
    lake: Lake, ref: PartitionRef, target_mib: float = TARGET_MIB, grace_s: float = GRACE_S
) -> Compacted:
    """Rewrite an append-only partition's visible files into files of about ``target_mib``,
    committed atomically through its manifest (see the module's docstring)."""
    if target_mib <= 0:
        raise ValueError(f"target_mib = {target_mib}: must be above 0")
    if grace_s < 0:
        raise ValueError(f"grace_s = {grace_s}: must not be negative")
    manifest = lake.manifest(ref)
    if manifest is not None and "files" in manifest:
        raise ValueError(f"partition = {ref.path}: written whole by a job, not append-only; not compacted")
    sources = visible_files(lake.list_parquet(ref), manifest)
    compacted = list(manifest.get("compacted", ())) if manifest else []
    # Orphans of a crashed run go first, so this run's outputs never meet them.
    deleted = _collect_garbage(lake, ref, manifest, grace_s)
    sizes = {name: _size(lake, posixpath.join(ref.path, name)) for name in sources}
    rows_in = {
        name: pq.read_metadata(lake.path(ref.path, name), filesystem=lake.fs).num_rows for name in sources
    }
    total_rows, total_bytes = sum(rows_in.values()), sum(sizes.values())
    if not sources or sorted(sources) == sorted(compacted) or len(sources) == 1:
        return Compacted(ref.path, len(sources), len(sources), total_rows, total_bytes, deleted, True)

    bytes_per_row = max(total_bytes / max(total_rows, 1), 1.0)
    rows_per_file = max(int(target_mib * 1024 * 1024 / bytes_per_row), 1)
    run = uuid.uuid4().hex[:12]
    outputs: list[str] = []
    writer: pq.ParquetWriter | None = None
    in_file = 0
    try:
        for name in sources:
            table = pq.read_table(lake.path(ref.path, name), filesystem=lake.fs)
            start = 0
            while start < table.num_rows:
                if writer is None or in_file >= rows_per_file:
                    if writer is not None:
                        writer.close()
                    outputs.append(f"{COMPACT_PREFIX}{run}-{len(outputs):05d}.parquet")
                    lake.fs.create_dir(lake.path(ref.path), recursive=True)
                    writer = pq.ParquetWriter(
                        lake.path(ref.path, outputs[-1]), table.schema, filesystem=lake.fs, compression="zstd"
                    )
                    in_file = 0
                take = min(rows_per_file - in_file, table.num_rows - start)
                writer.write_table(table.slice(start, take))
                in_file += take
                start += take
    finally:
        if writer is not None:
            writer.close()
    written = sum(pq.read_metadata(lake.path(ref.path, n), filesystem=lake.fs).num_rows for n in outputs)
    if written != total_rows:  # never commit a rewrite that lost or doubled rows
        raise RuntimeError(f"partition = {ref.path}: compaction wrote {written} rows of {total_rows}")
    now_ms = int(time.time() * 1000)
    replaced = {**(manifest.get("replaced", {}) if manifest else {}), **dict.fromkeys(sources, now_ms)}
    lake.write_marker(
        ref,
        {
            "compacted": outputs,
            "replaced": replaced,
            "rows": total_rows,
            "run_id": run,
            "by": "compaction",
            "committed_ms": now_ms,
        },
    )
    # The commit point is passed; what it replaced goes after the grace (now, with 0).
    deleted += _collect_garbage(lake, ref, lake.manifest(ref), grace_s)
    log.info("compacted %s: %d files -> %d, %d rows", ref.path, len(sources), len(outputs), total_rows)
    return Compacted(ref.path, len(sources), len(outputs), total_rows, total_bytes, deleted, False)


def day_partitions(
    lake: Lake, day: date, types: Iterable[str] = EVENT_TYPES, landed_only: bool = True
) -> list[PartitionRef]:
    """The raw hour partitions of ``day`` (only hours marked landed, by default: the sink has
    finished them), and the day's dead letters."""
    dt = day.isoformat()
    hours = set(landed_hours(lake, day)) if landed_only else None
    refs = [
        partition(RAW, event_type=etype, dt=dt, hour=h["hour"])
        for etype in types
        for h in lake.partitions(f"{RAW.at(event_type=etype)}/dt={dt}", depth=1)
        if hours is None or h["hour"] in hours
    ]
    if landed_only and hours is not None and len(hours) < 24:
        return refs  # dead letters of a day still landing keep arriving: left for later
    dead = partition(DEAD_LETTERS, dt=dt)
    return [*refs, dead] if lake.list_parquet(dead) else refs


def compact_day(
    lake: Lake,
    day: date,
    target_mib: float = TARGET_MIB,
    grace_s: float = GRACE_S,
    landed_only: bool = True,
) -> list[Compacted]:
    """Compact every raw hour partition of ``day`` (see ``day_partitions``), one at a time."""
    return [
        compact_partition(lake, ref, target_mib, grace_s)
        for ref in day_partitions(lake, day, landed_only=landed_only)
    ]


__all__ = ["GRACE_S", "TARGET_MIB", "Compacted", "compact_day", "compact_partition", "day_partitions"]
