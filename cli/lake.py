"""``attribution lake-sink`` and ``attribution land``: raw events into the lake, one writer for both;
``attribution lake compact``: their small files rewritten into few."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from cli.common import console, dates, settings
from cli.realtime import check_kafka

#: Lines per file a backfill writes (bounds its memory; each chunk is one ``land`` call).
LAND_CHUNK = 250_000


def lake_sink(
    broker_url: Annotated[str | None, typer.Option(help="default: ATTRIBUTION_REALTIME_BROKER_URL")] = None,
    lake_url: Annotated[str | None, typer.Option(help="default: ATTRIBUTION_LAKE_URL")] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(help="serve Prometheus /metrics here; default: ATTRIBUTION_SINK_METRICS_PORT"),
    ] = None,
) -> None:
    """Land the five event topics in the lake (raw/{type}/dt=/hour=/, dead letters apart), exactly
    once per offset range, with hourly landing markers; a consumer group of its own. Until Ctrl-C."""
    from realtime.lakesink import run_sink

    config = settings(realtime_broker_url=broker_url, lake_url=lake_url, sink_metrics_port=metrics_port)
    check_kafka(config.realtime, "the lake sink", "`attribution land` lands files")
    asyncio.run(run_sink(config))


def land(
    jsonl: Annotated[Path, typer.Option(help="JSON-lines file of events", exists=True, dir_okay=False)],
    lake_url: Annotated[str | None, typer.Option(help="default: ATTRIBUTION_LAKE_URL")] = None,
    name: Annotated[
        str | None,
        typer.Option(
            help="file name in each partition; default: from the file's content, so landing "
            "the same file again rewrites the same files"
        ),
    ] = None,
    arrived_at: Annotated[
        int | None,
        typer.Option(
            help="arrival time (epoch ms) of every line; default now. Events dated more than "
            "ATTRIBUTION_RULES_MAX_FUTURE_MS after it are dead letters"
        ),
    ] = None,
    mark_landed: Annotated[
        bool, typer.Option(help="mark every hour of the days landed complete (a backfill of whole days)")
    ] = True,
) -> None:
    """Backfill raw events from a file through the lake sink's writer (same schema, validation and
    dead letters), then mark their days landed for the nightly job."""
    from storage import open_lake
    from storage.raw import land as land_rows
    from storage.raw import mark_days_landed

    config = settings(lake_url=lake_url)
    lake = open_lake(config.lake.url, config.s3)
    arrival = arrived_at if arrived_at is not None else int(time.time() * 1000)
    base = name or f"land-{_digest(jsonl)}"
    started = time.perf_counter()
    accepted = rejected = files = 0
    days: set[str] = set()
    columns = (TextColumn("landing"), BarColumn(), DownloadColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("land", total=jsonl.stat().st_size)
        for i, (lines, size) in enumerate(_chunks(jsonl)):
            landed = land_rows(
                lake, [(line, arrival) for line in lines], f"{base}-c{i:04d}", config.rules.max_future_ms
            )
            accepted, rejected, files = (
                accepted + landed.accepted,
                rejected + landed.rejected,
                files + len(landed.files),
            )
            days |= landed.days
            progress.advance(task, size)
    if mark_landed:
        mark_days_landed(lake, days, {"by": "attribution land", "name": base})
    seconds = time.perf_counter() - started
    table = Table(title=f"landed {jsonl} in {seconds:.1f}s -> {lake.url}")
    for col in ("events", "dead letters", "files", "days", "marked landed"):
        table.add_column(col, justify="right")
    span = f"{min(days)}..{max(days)}" if days else "-"
    table.add_row(
        f"{accepted:,}", f"{rejected:,}", f"{files:,}", span, "yes" if mark_landed and days else "no"
    )
    console.print(table)


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:12]


def _chunks(path: Path) -> Iterator[tuple[list[bytes], int]]:
    """The file's non-blank lines, ``LAND_CHUNK`` at a time, with the bytes each chunk spans."""
    lines: list[bytes] = []
    size = 0
    with open(path, "rb") as fh:
        for line in fh:
            size += len(line)
            if line.strip():
                lines.append(line.rstrip(b"\r\n"))
            if len(lines) >= LAND_CHUNK:
                yield lines, size
                lines, size = [], 0
    if lines or size:
        yield lines, size


lake_app = typer.Typer(help="Lake upkeep: compaction of landed raw files.", no_args_is_help=True)


@lake_app.command("compact")
def compact(
    day: Annotated[str, typer.Option(help="day whose raw hours to compact, YYYY-MM-DD")],
    end: Annotated[str | None, typer.Option(help="last day (inclusive); default: day")] = None,
    lake_url: Annotated[str | None, typer.Option(help="default: ATTRIBUTION_LAKE_URL")] = None,
    target_mib: Annotated[float, typer.Option(help="size of a compacted file, MiB", min=0.001)] = 128.0,
    grace_s: Annotated[
        float,
        typer.Option(
            help="delete replaced files only this long after the commit (readers may hold them)", min=0
        ),
    ] = 3600.0,
    all_hours: Annotated[
        bool,
        typer.Option("--all-hours", help="also hours not marked landed yet (the sink may still add files)"),
    ] = False,
) -> None:
    """Rewrite each raw hour's small files into few files of about --target-mib, atomically through
    the partition's manifest (readers see the old files or the new, never both); idempotent."""
    from storage import open_lake
    from storage.compact import compact_day
    from storage.raw import days_between

    first, last = dates(day, end)
    config = settings(lake_url=lake_url)
    lake = open_lake(config.lake.url, config.s3)
    started = time.perf_counter()
    table = Table(title=f"compaction of {lake.url}")
    for col in ("day", "partitions", "compacted", "files before", "files after", "rows", "MiB", "deleted"):
        table.add_column(col, justify="right")
    for d in days_between(first, last):
        done = compact_day(lake, d, target_mib, grace_s, landed_only=not all_hours)
        table.add_row(
            d.isoformat(),
            f"{len(done):,}",
            f"{sum(not c.skipped for c in done):,}",
            f"{sum(c.files_before for c in done):,}",
            f"{sum(c.files_after for c in done):,}",
            f"{sum(c.rows for c in done):,}",
            f"{sum(c.bytes_before for c in done) / 2**20:.1f}",
            f"{sum(c.deleted for c in done):,}",
        )
    console.print(table)
    console.print(f"done in {time.perf_counter() - started:.1f}s")
