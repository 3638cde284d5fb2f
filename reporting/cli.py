"""The ``attribution`` command line.

Every command prints tables or one clear line; an error of the engine (bad
input, a missing server, a missing extra) is one red line and exit status 2,
never a stack trace.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from datetime import date
from pathlib import Path
from typing import Annotated, Any

import click
import typer
import yaml
from rich.console import Console
from rich.table import Table

from shared_logic import Catalog, load_catalog
from shared_logic.errors import AttributionError
from shared_logic.money import format_minor

console = Console()
if not console.is_terminal:  # piped or captured: wide enough for the tables
    console.width = max(console.width, 140)
err = Console(stderr=True, width=200)
app = typer.Typer(
    help="Attribution engine for ads and promos.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
realtime_app = typer.Typer(help="Speed layer: replay events through the agents.", no_args_is_help=True)
budget_app = typer.Typer(help="Real-time budget state (what the ad server reads).", no_args_is_help=True)
batch_app = typer.Typer(help="Batch layer: the nightly job over the lake.", no_args_is_help=True)
report_app = typer.Typer(help="Reports from the analytics store.", no_args_is_help=True)
key_app = typer.Typer(help="API keys (stored hashed).", no_args_is_help=True)
app.add_typer(realtime_app, name="realtime")
app.add_typer(budget_app, name="budget")
app.add_typer(batch_app, name="batch")
app.add_typer(report_app, name="report")
app.add_typer(key_app, name="api-key")

CatalogOpt = Annotated[
    Path, typer.Option("--catalog", help="campaign catalog (YAML or JSON)", exists=True, dir_okay=False)
]


def _realtime_settings(**overrides: Any) -> Any:
    from realtime.settings import RealtimeSettings

    return RealtimeSettings(**{k: v for k, v in overrides.items() if v is not None})


@app.command()
def generate(
    out: Annotated[Path, typer.Option(help="folder for events.jsonl and catalog.yaml")] = Path("var/traffic"),
    users: Annotated[int, typer.Option(min=1)] = 2_000,
    days: Annotated[int, typer.Option(min=1)] = 7,
    seed: int = 7,
    start: Annotated[str, typer.Option(help="first day, YYYY-MM-DD")] = "2026-11-01",
    late_rate: Annotated[float, typer.Option(min=0, max=1)] = 0.0,
    malformed_rate: Annotated[float, typer.Option(min=0, max=1)] = 0.001,
    duplicate_rate: Annotated[float, typer.Option(min=0, max=1)] = 0.01,
) -> None:
    """Generate seeded synthetic traffic: a catalog and events in arrival order."""
    from shared_logic.synthetic import SyntheticConfig
    from shared_logic.synthetic import generate as gen

    cfg = SyntheticConfig(
        seed=seed,
        users=users,
        days=days,
        start=date.fromisoformat(start),
        late_rate=late_rate,
        malformed_rate=malformed_rate,
        duplicate_rate=duplicate_rate,
    )
    started = time.perf_counter()
    traffic = gen(cfg)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "events.jsonl", "w", encoding="utf-8") as fh:
        for line in traffic.jsonl():
            fh.write(line + "\n")
    (out / "catalog.yaml").write_text(
        yaml.safe_dump({"campaigns": traffic.catalog.to_records()}, sort_keys=False)
    )
    counts: dict[str, int] = {}
    for e in traffic.events:
        kind = "malformed" if e.malformed else str(e.payload["event_type"])  # type: ignore[index]
        counts[kind] = counts.get(kind, 0) + 1
    table = Table(
        title=f"{len(traffic.events):,} events, {len(traffic.catalog)} campaigns "
        f"in {time.perf_counter() - started:.1f}s -> {out}"
    )
    table.add_column("event type")
    table.add_column("count", justify="right")
    for kind, n in sorted(counts.items()):
        table.add_row(kind, f"{n:,}")
    console.print(table)


@realtime_app.command("replay")
def realtime_replay(
    catalog: CatalogOpt,
    jsonl: Annotated[
        Path | None, typer.Option(help="JSON-lines file of events", exists=True, dir_okay=False)
    ] = None,
    lake_from: Annotated[str | None, typer.Option(help="replay the lake's raw events from this day")] = None,
    lake_to: Annotated[str | None, typer.Option(help="... to this day (inclusive)")] = None,
    synthetic_users: Annotated[int | None, typer.Option(help="replay generated traffic of N users")] = None,
    redis_url: Annotated[str | None, typer.Option(envvar="ATTRIBUTION_REDIS_URL")] = None,
    lake_url: Annotated[str | None, typer.Option(envvar="ATTRIBUTION_LAKE_URL")] = None,
    flush_ledger: Annotated[bool, typer.Option(help="write the ledger to the lake at the end")] = True,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """Feed events through the agents on in-memory channels, in arrival order."""
    from realtime.replay import jsonl_source, lake_source, run

    cat = load_catalog(catalog)
    settings = _realtime_settings(redis_url=redis_url, lake_url=lake_url)
    sources = [jsonl is not None, lake_from is not None, synthetic_users is not None]
    if sum(sources) != 1:
        raise click.UsageError("give exactly one of --jsonl, --lake-from/--lake-to, --synthetic-users")
    values: list[Any]
    if jsonl is not None:
        values = list(jsonl_source(jsonl))
    elif lake_from is not None:
        values = lake_source(
            settings.lake_url, date.fromisoformat(lake_from), date.fromisoformat(lake_to or lake_from)
        )
    else:
        from shared_logic.synthetic import SyntheticConfig
        from shared_logic.synthetic import generate as gen

        values = [e.payload for e in gen(SyntheticConfig(users=synthetic_users or 1)).events]
    result = run(
        values, cat, settings, lake_url=settings.lake_url if flush_ledger else None, show_progress=progress
    )
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


@app.command()
def worker(
    catalog: CatalogOpt,
    broker_url: Annotated[str | None, typer.Option(envvar="ATTRIBUTION_BROKER_URL")] = None,
    redis_url: Annotated[str | None, typer.Option(envvar="ATTRIBUTION_REDIS_URL")] = None,
) -> None:
    """Start the real Faust worker against Kafka (kafka://host:port)."""
    from realtime.app import Worker

    settings = _realtime_settings(broker_url=broker_url or "kafka://localhost:9092", redis_url=redis_url)
    if settings.broker_url.startswith("memory://"):
        raise click.UsageError(
            "the worker needs a Kafka broker (kafka://...); use `realtime replay` for memory://"
        )
    _check_kafka(settings.broker_url)
    Worker(settings, load_catalog(catalog)).run_kafka_worker()


def _check_kafka(url: str) -> None:
    """Fail fast, in one line, when no broker answers (the Kafka client would retry forever)."""

    async def probe() -> None:
        from aiokafka import AIOKafkaClient
        from aiokafka.errors import KafkaConnectionError

        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
        hosts = url.split("://", 1)[1]
        client = AIOKafkaClient(bootstrap_servers=hosts.replace(";", ","), request_timeout_ms=5_000)
        try:
            await client.bootstrap()
        except KafkaConnectionError as exc:
            raise AttributionError(f"broker_url = {url!r}: no Kafka broker answers ({exc})") from None
        finally:
            await client.close()

    asyncio.run(probe())


@budget_app.command("show")
def budget_show(
    catalog: CatalogOpt,
    campaign: Annotated[list[str] | None, typer.Argument(help="campaign ids (default: all)")] = None,
    redis_url: Annotated[str | None, typer.Option(envvar="ATTRIBUTION_REDIS_URL")] = None,
    at: Annotated[
        str | None, typer.Option(help="instant (RFC 3339) to read the budget day at; default now")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Spend, caps, remaining budget and pacing, straight from Redis."""
    from shared_logic.timeutil import to_epoch_ms

    cat = load_catalog(catalog)
    settings = _realtime_settings(redis_url=redis_url)
    now_ms = to_epoch_ms(at) if at else int(time.time() * 1000)
    states = asyncio.run(_budget_states(settings, cat, campaign or [c.campaign_id for c in cat], now_ms))
    if as_json:
        from dataclasses import asdict

        console.print_json(json.dumps([asdict(s) for s in states]))
        return
    table = Table(title="budget state")
    for col in (
        "campaign",
        "day",
        "spend today",
        "daily cap",
        "lifetime spend",
        "lifetime cap",
        "remaining",
        "exhausted",
        "pacing",
    ):
        table.add_column(col, justify="right" if col not in ("campaign", "day") else "left")
    for s in states:
        table.add_row(
            s.campaign_id,
            s.budget_day,
            _money(s.spend_day_minor, s.currency),
            _money(s.daily_cap_minor, s.currency),
            _money(s.spend_lifetime_minor, s.currency),
            _money(s.lifetime_cap_minor, s.currency),
            _money(s.remaining_minor, s.currency),
            "[red]yes[/red]" if s.exhausted else "no",
            "-" if s.pacing is None else f"{s.pacing:.2f}",
        )
    console.print(table)


def _money(value: int | None, currency: str) -> str:
    return "-" if value is None else format_minor(value, currency)


async def _budget_states(settings: Any, cat: Catalog, ids: list[str], now_ms: int) -> list[Any]:
    from redis.asyncio import Redis

    from realtime.budget import BudgetReader
    from realtime.keys import Keys

    redis = Redis.from_url(settings.redis_url)
    try:
        keys = Keys(settings.key_prefix, settings.user_buckets, settings.budget_shards)
        return await BudgetReader(redis, cat, keys).states(ids, now_ms)
    finally:
        await redis.aclose()


@app.command()
def demo(
    folder: Annotated[
        Path, typer.Option(help="where the demo writes its lake, catalog, keys and chart")
    ] = Path("var/demo"),
    users: Annotated[int, typer.Option(min=10)] = 4_000,
    days: Annotated[int, typer.Option(min=1, max=31)] = 7,
    redis_url: Annotated[str | None, typer.Option(help="use this Redis instead of a private one")] = None,
) -> None:
    """Run everything on the embedded default and print the ROAS report."""
    from reporting.demo import run_demo

    run_demo(folder, users, days, console, redis_url)


def _dates(start: str, end: str | None) -> tuple[date, date]:
    try:
        first = date.fromisoformat(start)
        last = date.fromisoformat(end) if end else first
    except ValueError as exc:
        raise click.BadParameter(f"{exc}: dates are YYYY-MM-DD") from None
    if last < first:
        raise click.BadParameter(f"end = {last} is before start = {first}")
    return first, last


@batch_app.command("run")
def batch_run(
    start: Annotated[str, typer.Option(help="first day, YYYY-MM-DD")],
    catalog: CatalogOpt,
    end: Annotated[str | None, typer.Option(help="last day (inclusive); default: start")] = None,
    lake_url: Annotated[str | None, typer.Option(envvar="ATTRIBUTION_BATCH_LAKE_URL")] = None,
    model: Annotated[list[str] | None, typer.Option(help="models to run (repeat); default: all")] = None,
) -> None:
    """Run the nightly job for a day or a range, each day idempotently."""
    from batch.job import run_range
    from batch.lake import Lake
    from batch.settings import BatchSettings
    from batch.spark import spark_session

    first, last = _dates(start, end)
    overrides: dict[str, Any] = {"catalog_path": str(catalog)}
    if lake_url:
        overrides["lake_url"] = lake_url
    if model:
        overrides["models"] = tuple(model)
    settings = BatchSettings(**overrides)
    table = Table(title="nightly job")
    for col in ("day", "orders", "attributed", "spend (minor)", "seconds"):
        table.add_column(col, justify="right")
    results = run_range(
        spark_session(),
        Lake(settings.lake_url),
        load_catalog(catalog),
        first,
        last,
        settings,
        on_day=lambda r: console.print(f"  {r.day}: {r.orders:,} orders in {r.seconds:.1f}s"),
    )
    for r in results:
        table.add_row(
            r.day,
            f"{r.orders:,}",
            f"{r.attributed:,}",
            f"{sum(r.spend_minor.values()):,}",
            f"{r.seconds:.1f}",
        )
    console.print(table)


@app.command()
def reconcile(
    start: Annotated[str, typer.Option(help="first day, YYYY-MM-DD")],
    end: Annotated[str | None, typer.Option(help="last day (inclusive)")] = None,
    lake_url: Annotated[str | None, typer.Option(envvar="ATTRIBUTION_BATCH_LAKE_URL")] = None,
) -> None:
    """Compare the speed layer's ledger with the batch billing rule, day by day."""
    from batch.lake import Lake
    from batch.raw import days_between
    from batch.reconcile import reconcile_day
    from batch.settings import BatchSettings
    from batch.spark import spark_session

    first, last = _dates(start, end)
    settings = BatchSettings(lake_url=lake_url) if lake_url else BatchSettings()
    table = Table(title="reconciliation")
    for col in ("day", "orders", "matched", "differing", "discrepancy %", "causes"):
        table.add_column(col, justify="right")
    spark = spark_session()
    for d in days_between(first, last):
        r = reconcile_day(spark, Lake(settings.lake_url), d, settings.allowed_lateness_ms)
        table.add_row(
            r.day,
            f"{r.orders:,}",
            f"{r.matched:,}",
            f"{r.differing:,}",
            f"{r.discrepancy_pct:.3f}",
            ", ".join(f"{k}: {v}" for k, v in sorted(r.causes.items())) or "-",
        )
    console.print(table)


@app.command()
def api(
    host: str = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    workers: Annotated[int, typer.Option(min=1)] = 1,
) -> None:
    """Serve the HTTP API (settings from ATTRIBUTION_API_*)."""
    import uvicorn

    uvicorn.run(
        "reporting.api:app_from_env", factory=True, host=host, port=port, workers=workers, log_level="warning"
    )


@key_app.command("create")
def api_key_create(
    name: Annotated[str, typer.Option(help="who the key is for")],
    role: Annotated[str, typer.Option(help="admin, advertiser or ad_server")],
    advertiser_id: Annotated[str | None, typer.Option(help="for an advertiser key")] = None,
    keys_path: Annotated[Path, typer.Option(envvar="ATTRIBUTION_API_KEYS_PATH")] = Path(
        "var/demo/api-keys.yaml"
    ),
) -> None:
    """Create a key: its hash goes to the key file, the key is printed once."""
    from reporting.auth import add_key

    if role not in ("admin", "advertiser", "ad_server"):
        raise click.BadParameter(f"role = {role!r}: must be admin, advertiser or ad_server")
    console.print(add_key(keys_path, name, role, advertiser_id))  # type: ignore[arg-type]


@report_app.command("roas")
def report_roas(
    start: Annotated[str, typer.Option(help="first day, YYYY-MM-DD")],
    end: Annotated[str | None, typer.Option(help="last day (inclusive)")] = None,
    advertiser_id: Annotated[str | None, typer.Option()] = None,
    model: Annotated[list[str] | None, typer.Option()] = None,
    lake_url: Annotated[str | None, typer.Option(envvar="ATTRIBUTION_API_LAKE_URL")] = None,
    store_url: Annotated[str, typer.Option(envvar="ATTRIBUTION_API_STORE_URL")] = "duckdb://",
) -> None:
    """ROAS per day, campaign and model from the analytics store (batch view)."""
    from batch.lake import Lake
    from reporting.stores import RoasQuery, open_store

    first, last = _dates(start, end)
    lake = Lake(lake_url or "file://./var/lake")
    store = open_store(store_url, lake)
    try:
        rows = store.roas(
            RoasQuery(
                first,
                last,
                (advertiser_id,) if advertiser_id else None,
                None,
                tuple(model) if model else None,
            )
        )
    finally:
        store.close()
    table = Table(title=f"ROAS {first}..{last}")
    for col in ("day", "campaign", "model", "orders", "revenue", "spend", "ROAS"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            str(r["dt"]),
            r["campaign_id"],
            r["model"],
            f"{r['orders']:.1f}",
            format_minor(int(r["revenue_minor"]), r["currency"]),
            format_minor(int(r["spend_minor"]), r["currency"]),
            "-" if r["roas"] is None else f"{r['roas']:.2f}",
        )
    console.print(table)


def main() -> None:
    """Entry point: run the app and turn failures into one line."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app(standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        err.print("aborted")
        sys.exit(130)
    except (AttributionError, OSError) as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(2)
    except Exception as exc:
        # Connection errors of the clients (redis, kafka) arrive as their own types.
        name = type(exc).__name__
        if "Connection" in name or "Timeout" in name:
            err.print(f"[red]error:[/red] {name}: {exc}", highlight=False)
            sys.exit(2)
        raise
