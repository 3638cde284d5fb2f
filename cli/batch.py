"""``attribution batch run`` and ``attribution reconcile``: the nightly job over the lake."""

from __future__ import annotations

import time
from datetime import date
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from cli.common import CatalogOpt, catalog_of, console, dates, jvm_output_to_log, money, settings

if TYPE_CHECKING:
    from batch.job import DayResult
    from shared_logic import Catalog

batch_app = typer.Typer(help="Batch layer: the nightly job over the lake.", no_args_is_help=True)


@batch_app.command("run")
def run(
    start: Annotated[str, typer.Option(help="first day, YYYY-MM-DD")],
    end: Annotated[str | None, typer.Option(help="last day (inclusive); default: start")] = None,
    catalog: CatalogOpt = None,
    lake_url: Annotated[str | None, typer.Option(help="default: ATTRIBUTION_LAKE_URL")] = None,
    model: Annotated[list[str] | None, typer.Option(help="models to run (repeat); default: all")] = None,
    from_scratch: Annotated[
        bool,
        typer.Option(
            "--from-scratch",
            help="settle the first day from the start of history, not from the checkpoint before it",
        ),
    ] = False,
    follow: Annotated[
        bool,
        typer.Option(
            help="then recompute the later days whose settlement checkpoints were built on state this "
            "run changed; --no-follow refuses when later checkpoints exist, naming them",
        ),
    ] = True,
) -> None:
    """Run the nightly job for a day or a range, oldest first, each day idempotently.

    Each day goes on from the settlement checkpoint of the day before (or the latest one
    before it); a rerun then follows the later days it made stale.
    """
    from batch.job import refuse_stale, run_range
    from batch.spark import spark_session
    from storage import open_lake

    first, last = dates(start, end)
    config = settings(
        catalog_url=catalog,
        lake_url=lake_url,
        batch_models=tuple(model) if model else None,
        needs=("catalog_url", "lake_url"),
    )
    # Everything that can fail fast is opened (and checked) before Spark's JVM starts.
    lake, cat = open_lake(config.lake.url, config.s3), catalog_of(config)
    refuse_stale(lake, first, last, follow)
    table = Table(title="nightly job")
    for col in ("day", "settled from", "orders", "attributed", "spend", "seconds"):
        table.add_column(col, justify="right")

    def progress(r: DayResult) -> None:
        followed = " (followed: its checkpoint was stale)" if date.fromisoformat(r.day) > last else ""
        console.print(f"  {r.day}: {r.orders:,} orders in {r.seconds:.1f}s{followed}")

    days = (last - first).days + 1
    console.print(f"nightly job: {days} day(s) {first}..{last}; starting Spark ...")
    with jvm_output_to_log() as jvm_log:
        spark = spark_session(config.spark)
    console.print(f"Spark ready (its JVM's warnings go to {jvm_log})")
    results = run_range(
        spark,
        lake,
        cat,
        first,
        last,
        config,
        on_day=progress,
        from_scratch=from_scratch,
        follow=follow,
    )
    for r in results:
        table.add_row(
            r.day,
            f"checkpoint {r.started_from}" if r.started_from else "start of history",
            f"{r.orders:,}",
            f"{r.attributed:,}",
            _spend(r.spend_minor, cat),
            f"{r.seconds:.1f}",
        )
    console.print(table)
    followed = [r.day for r in results if date.fromisoformat(r.day) > last]
    if followed:
        console.print(f"followed {len(followed)} later day(s) whose checkpoints the run changed")


@batch_app.command("class-archive")
def class_archive(
    path: Annotated[
        str | None, typer.Option(help="where to write it; default: this environment's (what 'auto' finds)")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="record it again even when it exists")] = False,
) -> None:
    """Record the class-data archive of Spark's classes the batch layer's drivers start from
    (about half the CPU of a JVM's start; ATTRIBUTION_SPARK_CLASS_ARCHIVE=auto uses it).

    A child process runs a small nightly job and its JVM writes the archive at exit; a second
    child checks that a JVM maps it; then it is moved into place. Valid for this Java build and
    these pyspark jars only (its name says which): another one finds none and starts as before.
    """
    from pathlib import Path

    from batch.cds import ArchiveError, record

    target = Path(path) if path else None
    console.print(
        "recording Spark's class-data archive: a small nightly job in a child JVM, then a check ..."
    )
    try:
        done = record(target, force=force)
    except ArchiveError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    size = f"{done.bytes / 2**20:,.0f} MiB"
    if done.existed:
        console.print(f"{done.path} exists ({size}); --force records it again")
    else:
        console.print(f"recorded {done.path} ({size}) in {done.seconds:.0f}s")


def reconcile(
    start: Annotated[str, typer.Option(help="first day, YYYY-MM-DD")],
    end: Annotated[str | None, typer.Option(help="last day (inclusive)")] = None,
    catalog: CatalogOpt = None,
    lake_url: Annotated[str | None, typer.Option(help="default: ATTRIBUTION_LAKE_URL")] = None,
) -> None:
    """Compare the speed layer's ledger with the batch billing rule, day by day (the raw events
    read for late arrivals span the catalog's look-back and the cancel horizon)."""
    from batch.reconcile import reconcile_day
    from batch.spark import spark_session
    from storage import open_lake
    from storage.raw import days_between

    first, last = dates(start, end)
    config = settings(catalog_url=catalog, lake_url=lake_url, needs=("catalog_url", "lake_url"))
    lake, cat = open_lake(config.lake.url, config.s3), catalog_of(config)
    table = Table(title="reconciliation")
    for col in ("day", "orders", "matched", "differing", "discrepancy %", "causes"):
        table.add_column(col, justify="right")
    days = list(days_between(first, last))
    console.print(f"reconciliation: {len(days)} day(s) {first}..{last}; starting Spark ...")
    with jvm_output_to_log() as jvm_log:
        spark = spark_session(config.spark)
    console.print(f"Spark ready (its JVM's warnings go to {jvm_log})")
    for i, d in enumerate(days, 1):
        began = time.perf_counter()
        r = reconcile_day(spark, lake, cat, d, config)
        console.print(
            f"  {d} ({i}/{len(days)}): {r.orders:,} orders, discrepancy {r.discrepancy_pct:.3f}% "
            f"in {time.perf_counter() - began:.1f}s"
        )
        table.add_row(
            r.day,
            f"{r.orders:,}",
            f"{r.matched:,}",
            f"{r.differing:,}",
            f"{r.discrepancy_pct:.3f}",
            _causes(r.causes, r.missing) or "-",
        )
    console.print(table)


def _causes(causes: dict[str, int], missing: dict[str, int]) -> str:
    """``late touch: 2, missing: 3 (from realtime 2, from batch 1)``"""
    said = []
    for cause, n in sorted(causes.items()):
        sides = (
            ", ".join(f"from {side} {k}" for side, k in sorted(missing.items())) if cause == "missing" else ""
        )
        said.append(f"{cause}: {n}" + (f" ({sides})" if sides else ""))
    return ", ".join(said)


def _spend(by_campaign: dict[str, int], cat: Catalog) -> str:
    """Spend per currency (the campaigns' own), never one sum across currencies."""
    per: dict[str, int] = {}
    for campaign_id, minor in by_campaign.items():
        found = cat.get(campaign_id)
        currency = found.currency if found is not None else "?"
        per[currency] = per.get(currency, 0) + minor
    return (
        ", ".join(
            money(v, c) if c != "?" else f"{v:,} minor (unknown campaign)" for c, v in sorted(per.items())
        )
        or "-"
    )
