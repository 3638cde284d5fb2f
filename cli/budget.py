"""``attribution budget show``: real-time budget state, straight from Redis."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict
from typing import Annotated, Any

import typer
from rich.table import Table

from cli.common import CatalogOpt, catalog_of, console, money, settings
from shared_logic import Catalog
from shared_logic.settings import Settings

budget_app = typer.Typer(help="Real-time budget state (what the ad server reads).", no_args_is_help=True)


@budget_app.command("show")
def show(
    campaign: Annotated[list[str] | None, typer.Argument(help="campaign ids (default: all)")] = None,
    catalog: CatalogOpt = None,
    redis_url: Annotated[str | None, typer.Option(help="default: ATTRIBUTION_REDIS_URL")] = None,
    at: Annotated[
        str | None, typer.Option(help="instant (RFC 3339) to read the budget day at; default now")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
    watch: Annotated[
        bool, typer.Option("--watch", help="a live table, redrawn every --every seconds until Ctrl-C")
    ] = False,
    every: Annotated[float, typer.Option(help="seconds between redraws with --watch", min=0.2)] = 1.0,
) -> None:
    """Spend, caps, remaining budget and pacing, straight from Redis."""
    from shared_logic.timeutil import to_epoch_ms

    config = settings(catalog_url=catalog, redis_url=redis_url, needs=("redis_url", "catalog_url"))
    cat = catalog_of(config)
    try:
        fixed_ms = to_epoch_ms(at) if at else None
    except ValueError as exc:
        raise typer.BadParameter(f"--at = {at!r}: {exc}") from None
    ids = campaign or [c.campaign_id for c in cat]
    if watch and as_json:
        raise typer.BadParameter("--watch draws a table: drop --json")

    def read() -> list[Any]:
        now_ms = fixed_ms if fixed_ms is not None else int(time.time() * 1000)
        return asyncio.run(_states(config, cat, ids, now_ms))

    if not watch:
        states = read()
        if as_json:
            console.print_json(json.dumps([asdict(s) for s in states]))
        else:
            console.print(_table(states, "budget state"))
            if nothing_spent(states):
                console.print(_nothing_spent_line(config, len(states)), highlight=False, soft_wrap=True)
        return
    from rich.live import Live

    try:
        with Live(console=console, auto_refresh=False, transient=False) as live:
            while True:
                stamp = time.strftime("%H:%M:%S")
                states = read()
                table = _table(states, f"budget state at {stamp} (every {every:g}s; Ctrl-C stops)")
                if nothing_spent(states):
                    table.caption = _nothing_spent_line(config, len(states))
                live.update(table)
                live.refresh()
                time.sleep(every)
    except KeyboardInterrupt:
        return


def nothing_spent(states: list[Any]) -> bool:
    """No campaign has spent anything, today or ever: the table would be all zeros."""
    return all(not s.spend_day_minor and not s.spend_lifetime_minor for s in states)


def _nothing_spent_line(config: Settings, campaigns: int) -> str:
    return (
        f"nothing has spent: none of these {campaigns} campaigns has any spend in Redis {config.redis.url} "
        f"(catalog {config.catalog.url}). Is this the Redis and catalog the worker uses?"
    )


def _table(states: list[Any], title: str) -> Table:
    table = Table(title=title)
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
        "serve p",
        "in flight",
        "frequency cap",
    ):
        table.add_column(col, justify="right" if col not in ("campaign", "day") else "left")
    for s in states:
        table.add_row(
            s.campaign_id,
            s.budget_day,
            money(s.spend_day_minor, s.currency),
            money(s.daily_cap_minor, s.currency),
            money(s.spend_lifetime_minor, s.currency),
            money(s.lifetime_cap_minor, s.currency),
            money(s.remaining_minor, s.currency),
            "[red]yes[/red]" if s.exhausted else "no",
            "-" if s.pacing is None else f"{s.pacing:.2f}",
            f"{s.serve_probability:.3f}",
            money(None if s.liability_minor is None else round(s.liability_minor), s.currency),
            "-"
            if s.frequency_cap_impressions is None
            else f"{s.frequency_cap_impressions} / {_duration(s.frequency_cap_window_ms)}",
        )
    return table


def _duration(ms: int | None) -> str:
    """A frequency cap's window as the ad team says it: ``90 min``, ``24 h``."""
    if ms is None:
        return "-"
    return f"{ms // 3_600_000} h" if ms % 3_600_000 == 0 else f"{ms / 60_000:g} min"


async def _states(config: Settings, cat: Catalog, ids: list[str], now_ms: int) -> list[Any]:
    from realtime.budget import BudgetReader
    from realtime.client import connect
    from realtime.keys import Keys

    redis = connect(config.redis)
    try:
        return await BudgetReader(redis, cat, Keys.of(config.keys), config.pacing.config()).states(
            ids, now_ms
        )
    finally:
        await redis.aclose()
