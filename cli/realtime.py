"""``attribution realtime replay`` and ``attribution worker``: the speed layer."""

from __future__ import annotations

import asyncio
import logging
from datetime import date
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from cli.common import CatalogOpt, catalog_of, console, settings
from shared_logic.settings import RealtimeSettings

realtime_app = typer.Typer(
    help="Speed layer: replay events through the agents; rebuild a lost Redis from the lake.",
    no_args_is_help=True,
)


@realtime_app.command("replay")
def replay(
    catalog: CatalogOpt = None,
    jsonl: Annotated[
        Path | None, typer.Option(help="JSON-lines file of events", exists=True, dir_okay=False)
    ] = None,
    lake_from: Annotated[str | None, typer.Option(help="replay the lake's raw events from this day")] = None,
    lake_to: Annotated[str | None, typer.Option(help="... to this day (inclusive)")] = None,
    synthetic_users: Annotated[int | None, typer.Option(help="replay generated traffic of N users")] = None,
    redis_url: Annotated[str | None, typer.Option(help="default: ATTRIBUTION_REDIS_URL")] = None,
    lake_url: Annotated[str | None, typer.Option(help="default: ATTRIBUTION_LAKE_URL")] = None,
    flush_ledger: Annotated[bool, typer.Option(help="write the ledger to the lake at the end")] = True,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """Feed events through the agents on in-memory channels, in arrival order."""
    from realtime.replay import jsonl_source, lake_source, run

    config = settings(
        catalog_url=catalog, redis_url=redis_url, lake_url=lake_url, needs=("redis_url", "catalog_url")
    )
    sources = [jsonl is not None, lake_from is not None, synthetic_users is not None]
    if sum(sources) != 1:
        raise typer.BadParameter("give exactly one of --jsonl, --lake-from/--lake-to, --synthetic-users")
    values: list[Any]
    if jsonl is not None:
        values = list(jsonl_source(jsonl))
    elif lake_from is not None:
        values = lake_source(config, date.fromisoformat(lake_from), date.fromisoformat(lake_to or lake_from))
    else:
        from devtools.synthetic import SyntheticConfig
        from devtools.synthetic import generate as gen

        values = [e.payload for e in gen(SyntheticConfig(users=synthetic_users or 1)).events]
    result = run(values, catalog_of(config), config, flush_ledger=flush_ledger, show_progress=progress)
    table = Table(
        title=f"replay: {result.sent:,} events in {result.seconds:.2f}s ({result.rate:,.0f} events/s)"
    )
    for col in ("accepted", "dead-lettered", "duplicates", "orders attributed", "organic", "ledger to lake"):
        table.add_column(col, justify="right")
    table.add_row(
        *(
            f"{v:,}"
            for v in (
                result.accepted,
                result.dead_lettered,
                result.duplicates,
                result.decided,
                result.organic,
                result.ledger_flushed,
            )
        )
    )
    console.print(table)


@realtime_app.command("rebuild")
def rebuild(
    catalog: CatalogOpt = None,
    redis_url: Annotated[
        str | None, typer.Option(help="the emptied Redis; default: ATTRIBUTION_REDIS_URL")
    ] = None,
    lake_url: Annotated[str | None, typer.Option(help="default: ATTRIBUTION_LAKE_URL")] = None,
    for_replay: Annotated[
        bool, typer.Option(help="name partitions as `realtime replay` does (replay:<topic>), not as Kafka's")
    ] = False,
    metrics_file: Annotated[
        Path | None,
        typer.Option(help="also write the report as Prometheus metrics (textfile collector format)"),
    ] = None,
) -> None:
    """Rebuild the speed layer's state in an emptied Redis from the lake (stop the workers first).

    From the flushed realtime ledger: lifetime spend, the spend and stats of budget days still open,
    charge records and decisions of orders inside the charge-record TTL. From the raw events
    (that TTL plus the longest window back): touches, pending orders and cancels, claims of
    organic orders. Then each partition's checkpoint. Prints what it restored, how long it took and
    what it could not restore (README: Redis lost)."""
    from prometheus_client import write_to_textfile

    from realtime.client import connect
    from realtime.rebuild import NotEmpty, run_rebuild
    from realtime.replay import REPLAY_PREFIX
    from storage import open_lake

    config = settings(
        catalog_url=catalog,
        redis_url=redis_url,
        lake_url=lake_url,
        needs=("redis_url", "catalog_url", "lake_url"),
    )
    lake = open_lake(config.lake.url, config.s3)
    try:
        report = run_rebuild(
            config, catalog_of(config), lake, connect(config.redis), REPLAY_PREFIX if for_replay else ""
        )
    except NotEmpty as exc:
        raise typer.BadParameter(str(exc), param_hint="--redis-url") from exc
    table = Table(title=f"rebuild: {report.seconds:.2f}s, events {report.refed_from} .. {report.refed_to}")
    table.add_column("restored")
    table.add_column("count", justify="right")
    for kind, n in sorted(report.restored.items()):
        table.add_row(kind.replace("_", " "), f"{n:,}")
    console.print(table)
    missing = Table(title="could not restore")
    missing.add_column("what")
    missing.add_column("count", justify="right")
    for kind, n in sorted(report.missing.items()):
        missing.add_row(kind.replace("_", " "), f"{n:,}")
    console.print(missing)
    for note in report.notes:
        console.print(f"- {note}")
    if metrics_file is not None:
        write_to_textfile(str(metrics_file), report.registry())


def worker(
    catalog: CatalogOpt = None,
    broker_url: Annotated[str | None, typer.Option(help="default: ATTRIBUTION_REALTIME_BROKER_URL")] = None,
    redis_url: Annotated[str | None, typer.Option(help="default: ATTRIBUTION_REDIS_URL")] = None,
) -> None:
    """Run one speed-layer worker of the consumer group on Kafka (kafka://host:port)."""
    from realtime.kafka import run_worker

    config = settings(
        catalog_url=catalog,
        realtime_broker_url=broker_url,
        redis_url=redis_url,
        needs=("redis_url", "catalog_url"),
    )
    check_kafka(config.realtime, "the worker", "use `realtime replay` for memory://")
    asyncio.run(run_worker(config, catalog_of(config)))


def check_kafka(cfg: RealtimeSettings, who: str, instead: str) -> None:
    """Before a consumer service starts: refuse an in-memory URL (naming ``instead``), and fail fast,
    in one line, when no broker answers (the Kafka client would retry forever). Then log at INFO
    what an operator follows: assignments, recoveries, rolls."""
    if cfg.broker_url.startswith("memory://"):
        raise typer.BadParameter(
            f"{who} needs a Kafka broker (--broker-url kafka://host:port or "
            f"ATTRIBUTION_REALTIME_BROKER_URL); {instead}"
        )

    from realtime import broker

    # The probe says in one line why no broker answers; aiokafka's own lines about it are noise.
    # Afterwards they are an operator's only sign of a broker lost under a running service.
    client_log = logging.getLogger("aiokafka")
    level = client_log.level
    client_log.setLevel(logging.CRITICAL)
    try:
        asyncio.run(broker.probe(cfg))
    finally:
        client_log.setLevel(level)
    logging.getLogger("realtime").setLevel(logging.INFO)
