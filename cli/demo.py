"""The end-to-end demo on the embedded default.

Generates a week of traffic for a few dozen campaigns, lands it in a lake
folder, replays it through the speed layer (a private redis-server unless one
is given), runs the nightly Spark job for every day, reconciles, prints a ROAS
table per campaign and model with the discrepancy figure, and draws ROAS by
day and model.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from cli.common import console as default_console
from cli.common import exe_path, settings
from devtools.synthetic import SyntheticConfig, generate
from shared_logic.contract import BILLING_MODEL, METRICS, REPORT_MODELS, roas
from shared_logic.money import format_minor


def demo(
    folder: Annotated[
        Path, typer.Option(help="where the demo writes its lake, catalog, keys and chart")
    ] = Path("var/demo"),
    users: Annotated[int, typer.Option(min=10)] = 4_000,
    days: Annotated[int, typer.Option(min=1, max=31)] = 7,
    redis_url: Annotated[str | None, typer.Option(help="use this Redis instead of a private one")] = None,
) -> None:
    """Run everything on the embedded default and print the ROAS report."""
    run_demo(folder, users, days, default_console, redis_url)


@dataclass
class DemoResult:
    folder: Path
    events: int
    discrepancy_pct: float
    chart: Path
    roas: dict[tuple[str, str], float | None]
    seconds: float
    admin_key: str
    advertiser_key: str


def run_demo(
    folder: Path, users: int, days: int, console: Console, redis_url: str | None = None
) -> DemoResult:
    from batch.job import run_day
    from batch.reconcile import reconcile_day
    from batch.spark import spark_session
    from devtools import awkward
    from devtools.servers import LocalRedis
    from realtime.replay import replay
    from reporting.auth import add_key
    from storage import open_lake, partition
    from storage.raw import land_events

    started = time.perf_counter()
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    lake_url = f"file://{(folder / 'lake').resolve()}"
    config = SyntheticConfig(
        users=users,
        days=days,
        late_rate=0.0,
        cancel_rate=0.05,
        awkward_rate=awkward.DEFAULT_RATE,
    )

    console.rule("[bold]1. traffic")
    traffic = generate(config)
    (folder / "catalog.yaml").write_text(
        yaml.safe_dump({"campaigns": traffic.catalog.to_records()}, sort_keys=False)
    )
    console.print(
        f"{len(traffic.events):,} events for {len(traffic.catalog)} campaigns of "
        f"{len({c.advertiser_id for c in traffic.catalog})} advertisers over {days} days"
    )

    console.rule("[bold]2. land in the lake")
    lake = open_lake(lake_url)
    landed = land_events(lake, ((e.payload, e.arrival_ms) for e in traffic.events))
    console.print(
        f"{landed.accepted:,} events in {landed.partitions} partitions, {landed.rejected} dead letters "
        f"-> {folder / 'lake'}"
    )

    console.rule("[bold]3. speed layer: replay through the Faust agents into Redis")
    server = None if redis_url else LocalRedis()
    url = redis_url or server.url  # type: ignore[union-attr]
    try:
        setup = settings(redis_url=url, lake_url=lake_url)
        result = asyncio.run(
            replay(
                [e.payload for e in traffic.events],
                traffic.catalog,
                setup,
                flush_ledger=True,
                show_progress=True,
                arrivals=[e.arrival_ms for e in traffic.events],
            )
        )
        console.print(
            f"{result.sent:,} events at {result.rate:,.0f}/s; {result.decided:,} orders attributed, "
            f"{result.dead_lettered} dead letters, {result.duplicates} duplicates ignored; "
            f"{result.ledger_flushed:,} ledger entries to the lake"
        )

        console.rule("[bold]4. batch layer: nightly Spark job and reconciliation, day by day")
        spark = spark_session(setup.spark, "attribution-demo")
        discrepancies = []
        metrics: list[dict[str, Any]] = []
        with Progress(console=console) as progress:
            task = progress.add_task("nightly job", total=days)
            for i in range(days):
                day = config.start + timedelta(days=i)
                run_day(spark, lake, traffic.catalog, day, setup)
                rec = reconcile_day(spark, lake, traffic.catalog, day, setup)
                discrepancies.append(rec)
                metrics += lake.read([partition(METRICS, dt=day.isoformat())]).to_pylist()
                progress.advance(task)
        spark.stop()
    finally:
        if server is not None:
            server.stop()

    total_orders = sum(r.orders for r in discrepancies)
    differing = sum(r.differing for r in discrepancies)
    pct = 100.0 * differing / total_orders if total_orders else 0.0
    by_campaign = _roas_table(metrics, console)
    chart = _chart(metrics, folder / "roas_by_day.png")
    keys = folder / "api-keys.yaml"
    admin = add_key(keys, "demo admin", "admin")
    adv = sorted({c.advertiser_id for c in traffic.catalog})[0]
    advertiser_key = add_key(keys, f"demo {adv}", "advertiser", adv)
    ad_server_key = add_key(keys, "demo ad server", "ad_server")

    console.rule("[bold]5. reconciliation")
    console.print(
        f"speed layer vs batch over {days} days: {total_orders:,} attributed orders, {differing} differ: "
        f"[bold]discrepancy {pct:.3f}%[/bold]; spend {_spend_agreement(discrepancies)}"
    )
    seconds = time.perf_counter() - started
    console.rule("[bold]6. serve it")
    console.print(f"chart: {chart}")
    port = _suggested_port()
    period = f"start={config.start}&end={config.start + timedelta(days=days - 1)}"
    console.print(
        "start the API from where you ran this (the demo's Redis has stopped: budget reads need a "
        "live one; `make live` has one):\n"
        f"  ATTRIBUTION_LAKE_URL={lake_url} ATTRIBUTION_CATALOG_URL={folder / 'catalog.yaml'} "
        f"ATTRIBUTION_API_KEYS_PATH={keys} {exe_path()} api --port {port}\n"
        f"  admin key (everything): {admin}\n"
        f"  advertiser {adv}'s key (sees only its campaigns): {advertiser_key}\n"
        f"  ad-server key (budget state only): {ad_server_key}\n"
        "then, in another terminal:\n"
        f"  curl -fsS -H 'X-API-Key: {admin}' 'http://127.0.0.1:{port}/v1/roas?{period}&model=markov'\n"
        f"  curl -fsS -H 'X-API-Key: {advertiser_key}' 'http://127.0.0.1:{port}/v1/roas?{period}&model=billing'\n"
        f"  OpenAPI: http://127.0.0.1:{port}/docs\n"
        f"  the console, in a browser: http://127.0.0.1:{port}/console (sign in with a key above)",
        highlight=False,
        soft_wrap=True,
    )
    console.print(f"demo finished in {seconds:.0f}s")
    return DemoResult(folder, len(traffic.events), pct, chart, by_campaign, seconds, admin, advertiser_key)


def _roas_table(metrics: list[dict[str, Any]], console: Console) -> dict[tuple[str, str], float | None]:
    agg: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    currency: dict[str, str] = {}
    for rec in metrics:
        m = rec
        slot = agg[(m["campaign_id"], m["model"])]
        slot[0] += m["orders"]
        slot[1] += m["revenue_minor"]
        slot[2] += m["spend_minor"]
        currency[m["campaign_id"]] = m["currency"]
    models = [m for m in REPORT_MODELS if any(k[1] == m for k in agg)]
    table = Table(
        title="ROAS per campaign and model over the week (revenue / spend; spend is what billing charged)"
    )
    table.add_column("campaign")
    table.add_column("spend", justify="right")
    table.add_column("billed orders", justify="right")
    for name in models:
        table.add_column(name, justify="right")
    out: dict[tuple[str, str], float | None] = {}
    for cid in sorted(currency):
        spend = agg[(cid, BILLING_MODEL)][2]
        cells = []
        for name in models:
            revenue = agg[(cid, name)][1]
            value = roas(revenue, spend)
            out[(cid, name)] = value
            cells.append("-" if value is None else f"{value:.1f}")
        table.add_row(
            cid, format_minor(int(spend), currency[cid]), f"{agg[(cid, BILLING_MODEL)][0]:.0f}", *cells
        )
    console.print(table)
    return out


def _chart(metrics: list[dict[str, Any]], path: Path) -> Path:
    """ROAS by day and model, one panel per lever (USD campaigns).

    Summed over every campaign, all models share out the same revenue against
    the same spend, so their totals coincide; per lever they differ, because the
    models move credit between ads and promos.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per: dict[tuple[str, str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
    for m in metrics:
        if m["currency"] != "USD":
            continue
        slot = per[(m["lever"], m["model"], m["dt"])]
        slot[0] += m["revenue_minor"]
        slot[1] += m["spend_minor"]
    levers = sorted({k[0] for k in per})
    fig, axes = plt.subplots(1, max(len(levers), 1), figsize=(13, 5.5), squeeze=False)
    for ax, lever in zip(axes[0], levers, strict=False):
        for model in sorted({k[1] for k in per if k[0] == lever}):
            days = sorted(d for (lv, mm, d) in per if lv == lever and mm == model)
            values = [
                per[(lever, model, d)][0] / per[(lever, model, d)][1]
                if per[(lever, model, d)][1]
                else float("nan")
                for d in days
            ]
            ax.plot(
                [d[5:] for d in days],
                values,
                marker="o",
                linewidth=2.8 if model == BILLING_MODEL else 1.4,
                label=model,
            )
        ax.set_title(f"{lever} campaigns")
        ax.set_xlabel("day (UTC, 2026)")
        ax.set_ylabel("ROAS (revenue / spend)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(ncol=2, fontsize=9)
    fig.suptitle("ROAS by day and attribution model (USD campaigns; spend is what billing charged)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _suggested_port(preferred: int = 8000) -> int:
    """8000 when it is free here, else a free one, so the printed command runs as printed."""
    import socket

    from devtools.servers import free_port

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
        except OSError:
            return free_port()
    return preferred


def _spend_agreement(days: list[Any]) -> str:
    """Whether each campaign's spend agrees between the layers (per campaign, so per currency:
    never one sum across currencies)."""
    differing = sorted({c for r in days for c in r.spend_diff_minor})
    if not differing:
        return "agrees for every campaign"
    return f"differs for {len(differing)} campaign(s): {', '.join(differing[:5])}"
