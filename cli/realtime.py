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

realtime_app = typer.Typer(help="Speed layer: replay events through the agents.", no_args_is_help=True)


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
