"""``attribution ivt report``: invalid traffic per campaign and day, from the nightly job's
verdicts in the lake (``ivt/dt=``)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from cli.common import console, dates, money, settings

ivt_app = typer.Typer(help="Invalid traffic: what the rules judged.", no_args_is_help=True)


@ivt_app.command("report")
def ivt_report(
    start: Annotated[str, typer.Option(help="first day, YYYY-MM-DD")],
    end: Annotated[str | None, typer.Option(help="last day (inclusive)")] = None,
    lake_url: Annotated[str | None, typer.Option(help="default: ATTRIBUTION_LAKE_URL")] = None,
) -> None:
    """Per campaign, day and reason: touches judged invalid (refused by the list rules), orders
    whose winner a verdict changed or left unattributed, orders only flagged (report mode), and
    the charges avoided. Days the nightly job has not run are named."""
    from realtime.views import lake_ivt
    from storage import open_lake
    from storage.raw import days_between

    first, last = dates(start, end)
    config = settings(lake_url=lake_url, needs=("lake_url",))
    lake = open_lake(config.lake.url, config.s3)
    table = Table(title=f"invalid traffic {first}..{last}")
    for col in ("day", "campaign", "reason", "touches", "refused", "changed", "unattributed", "flagged"):
        table.add_column(col, justify="left" if col in ("day", "campaign", "reason") else "right")
    table.add_column("charges avoided", justify="right")
    days = [day.isoformat() for day in days_between(first, last)]
    judged = lake_ivt(lake, days)
    missing = [dt for dt in days if dt not in judged]
    for dt, summaries in judged.items():
        for s in summaries:
            table.add_row(
                dt,
                s.campaign_id,
                s.reason,
                str(s.touches),
                str(s.touches_refused),
                str(s.orders_changed),
                str(s.orders_unattributed),
                str(s.orders_flagged),
                money(s.avoided_minor, s.currency) if s.currency else "-",
            )
    console.print(table)
    if missing:
        console.print(f"no verdicts for {', '.join(missing)}: the nightly job has not run those days")
    _shape_report(lake, days)


def _shape_report(lake: Any, days: list[str]) -> None:
    """The nightly job's whole-day delay report: the campaigns it flagged, their click-won orders
    per click-to-order delay bucket. A report only: no charge changed."""
    from realtime.views import lake_ivt_shape
    from shared_logic.ivt import SHAPE_BUCKETS

    shapes = lake_ivt_shape(lake, days)
    flagged = [(dt, r) for dt, rows in shapes.items() for r in rows if r.flag]
    judged = sum(len(rows) for rows in shapes.values())
    if not shapes:
        console.print("no delay report for these days (rules.ivt_shape off, or the nightly job has not run)")
        return
    table = Table(title="click-to-order delays, whole day (a report: no charge changed)")
    for col in ("day", "campaign", "flag", "orders", *SHAPE_BUCKETS, "within 1 h"):
        table.add_column(col, justify="left" if col in ("day", "campaign", "flag") else "right")
    for dt, r in flagged:
        within = (r.under_10s + r.s10_to_1h) / r.orders if r.orders else 0.0
        buckets = [str(getattr(r, b)) for b in SHAPE_BUCKETS]
        table.add_row(dt, r.campaign_id, str(r.flag), str(r.orders), *buckets, f"{within:.0%}")
    console.print(table)
    console.print(f"{len(flagged)} of {judged} campaign-days flagged by their delays")
