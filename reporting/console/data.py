"""What the console shows, computed from the JSON API's own code paths.

ROAS figures come from ``reporting.routes.roas.roas_rows`` (the rows ``/v1/roas`` answers: the
batch view up to its last day, the speed layer after it), invalid traffic from
``reporting.routes.ivt.ivt_rows`` (what ``/v1/ivt`` answers), budget figures from
``reporting.routes.budget.budget_states`` (what ``/v1/budget`` answers), reconciliation from
``reconciliation`` below (what ``/v1/reconciliation`` answers). Nothing here queries a store
another way: this module only adds the rows up. Every amount stays in integer minor units with
its currency; the templates format them, the CSV downloads do not.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Any

from fastapi import HTTPException

from reporting.auth import ApiKey
from reporting.errors import InvalidParameter
from reporting.routes.budget import budget_states
from reporting.routes.deps import visible
from reporting.routes.ivt import ivt_rows
from reporting.routes.roas import roas_rows
from reporting.state import State
from shared_logic.contract import BILLING_MODEL, RECONCILIATION, REPORT_MODELS
from storage.lake import Lake, partition

#: The reconciliation's causes in the order ``batch.reconcile`` assigns them.
CAUSES = ("duplicate", "amount", "late touch", "late order", "missing", "campaign", "cap", "charge")
_RECONCILIATION_COLUMNS = ["rt_campaign", "bt_campaign", "rt_charge", "bt_charge", "status"]


@dataclass(frozen=True, slots=True)
class Scope:
    """The campaigns a page shows: an advertiser key's own, or those of the advertiser an admin
    picked (every campaign when it picked none)."""

    who: ApiKey
    advertiser_id: str | None
    campaign_ids: list[str]


def scope_of(state: State, who: ApiKey, advertiser: str | None) -> Scope:
    if who.role == "ad_server":
        raise HTTPException(403, "an ad-server key reads budget state only; the console needs another key")
    if who.role == "advertiser":
        return Scope(who, who.advertiser_id, visible(state, who, None))
    if advertiser:
        ids = [c.campaign_id for c in state.catalog.advertiser_campaigns(advertiser)]
        if not ids:
            raise InvalidParameter("advertiser", advertiser, "has no campaign in the catalog")
        return Scope(who, advertiser, sorted(ids))
    return Scope(who, None, sorted(c.campaign_id for c in state.catalog))


def advertisers(state: State) -> list[str]:
    return sorted({c.advertiser_id for c in state.catalog})


def _source(sources: set[str]) -> str:
    return "+".join(s for s in ("batch", "speed") if s in sources) or "-"


def _ratio(revenue: float, spend: int) -> float | None:
    return revenue / spend if spend else None


# Overview ----------------------------------------------------------------------------------------

OVERVIEW_COLUMNS = (
    "campaign_id",
    "name",
    "advertiser_id",
    "currency",
    "timezone",
    "spend_minor",
    "spend_source",
    "model",
    "orders",
    "revenue_minor",
    "roas",
    "roas_source",
    "daily_cap_minor",
    "lifetime_cap_minor",
    "spend_lifetime_minor",
    "remaining_minor",
    "budget_day",
    "spend_today_minor",
    "exhausted",
    "pacing",
)


@dataclass
class Overview:
    rows: list[dict[str, Any]]
    batch_through: date | None


async def overview(state: State, scope: Scope, start: date, end: date, model: str) -> Overview:
    """Per campaign: spend over the range (billing), the model's orders, revenue and ROAS (its
    revenue over the spend of the same rows), and today's budget state."""
    models = (BILLING_MODEL,) if model == BILLING_MODEL else (BILLING_MODEL, model)
    rows, batch_through = await roas_rows(state, scope.who, start, end, scope.campaign_ids, models)
    budgets = {
        b.campaign_id: b
        for b in await budget_states(state, scope.who, scope.campaign_ids, int(time.time() * 1000))
    }
    acc: dict[str, dict[str, Any]] = {
        cid: {
            "spend": 0,
            "spend_sources": set(),
            "orders": 0.0,
            "revenue": 0.0,
            "model_spend": 0,
            "model_sources": set(),
        }
        for cid in scope.campaign_ids
    }
    for r in rows:
        a = acc[r["campaign_id"]]
        if r["model"] == BILLING_MODEL:
            a["spend"] += r["spend_minor"]
            a["spend_sources"].add(r["source"])
        if r["model"] == model:
            a["orders"] += r["orders"]
            a["revenue"] += r["revenue_minor"]
            a["model_spend"] += r["spend_minor"]
            a["model_sources"].add(r["source"])
    out = []
    for cid in scope.campaign_ids:
        c, a, b = state.catalog.get(cid), acc[cid], budgets[cid]
        assert c is not None
        out.append(
            {
                "campaign_id": cid,
                "name": c.name or cid,
                "advertiser_id": c.advertiser_id,
                "currency": c.currency,
                "timezone": c.budget.timezone,
                "spend_minor": a["spend"],
                "spend_source": _source(a["spend_sources"]),
                "model": model,
                "orders": a["orders"],
                "revenue_minor": a["revenue"],
                "roas": _ratio(a["revenue"], a["model_spend"]),
                "roas_source": _source(a["model_sources"]),
                "daily_cap_minor": b.daily_cap_minor,
                "lifetime_cap_minor": b.lifetime_cap_minor,
                "spend_lifetime_minor": b.spend_lifetime_minor,
                "remaining_minor": b.remaining_minor,
                "budget_day": b.budget_day,
                "spend_today_minor": b.spend_day_minor,
                "exhausted": b.exhausted,
                "pacing": b.pacing,
            }
        )
    return Overview(out, batch_through)


def sort_rows(rows: list[dict[str, Any]], column: str, descending: bool) -> list[dict[str, Any]]:
    """Rows by ``column`` (a column of ``OVERVIEW_COLUMNS``), empty values last either way."""
    if column not in OVERVIEW_COLUMNS:
        raise InvalidParameter("sort", column, f"must be one of {', '.join(OVERVIEW_COLUMNS)}")
    present = [r for r in rows if r[column] is not None]
    missing = [r for r in rows if r[column] is None]
    return sorted(present, key=lambda r: r[column], reverse=descending) + missing


# ROAS by day -------------------------------------------------------------------------------------

DAILY_COLUMNS = ("day", "model", "currency", "orders", "revenue_minor", "spend_minor", "roas", "source")
COMPARISON_COLUMNS = ("model", "currency", "days", "orders", "revenue_minor", "spend_minor", "roas", "source")


@dataclass
class Daily:
    """ROAS per day and model for one campaign, or for all the scope's campaigns added up (one
    currency only: amounts in different currencies are never added)."""

    campaign_id: str | None
    currency: str | None
    days: list[str]
    rows: list[dict[str, Any]]  # DAILY_COLUMNS
    comparison: list[dict[str, Any]]  # COMPARISON_COLUMNS
    batch_through: date | None
    problem: str | None = None
    models: list[str] = field(default_factory=list)


async def daily(
    state: State, scope: Scope, start: date, end: date, campaign_id: str | None, models: list[str]
) -> Daily:
    for m in models:
        if m not in REPORT_MODELS:
            raise InvalidParameter("model", m, f"must be one of {', '.join(REPORT_MODELS)}")
    ids = [campaign_id] if campaign_id else scope.campaign_ids
    if campaign_id and campaign_id not in scope.campaign_ids:
        visible(state, scope.who, [campaign_id])  # 404 for another advertiser's campaign
        raise InvalidParameter("campaign_id", campaign_id, "is not one of the chosen advertiser's campaigns")
    currencies = {c.currency for cid in ids if (c := state.catalog.get(cid)) is not None}
    days = [d.isoformat() for d in _days(start, end)]
    if len(currencies) > 1:
        problem = (
            f"these campaigns charge in {len(currencies)} currencies ({', '.join(sorted(currencies))}); "
            "amounts in different currencies are not added up: pick one campaign"
        )
        return Daily(campaign_id, None, days, [], [], None, problem, models)
    rows, batch_through = await roas_rows(state, scope.who, start, end, ids, tuple(models))
    currency = next(iter(currencies), None)
    per: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        a = per.setdefault(
            (r["day"], r["model"]), {"orders": 0.0, "revenue_minor": 0.0, "spend_minor": 0, "sources": set()}
        )
        a["orders"] += r["orders"]
        a["revenue_minor"] += r["revenue_minor"]
        a["spend_minor"] += r["spend_minor"]
        a["sources"].add(r["source"])
    out = [
        {
            "day": day,
            "model": model,
            "currency": currency,
            "orders": a["orders"],
            "revenue_minor": a["revenue_minor"],
            "spend_minor": a["spend_minor"],
            "roas": _ratio(a["revenue_minor"], a["spend_minor"]),
            "source": _source(a["sources"]),
        }
        for (day, model), a in sorted(per.items())
    ]
    comparison = []
    for m in models:
        mine = [r for r in out if r["model"] == m]
        revenue = sum(r["revenue_minor"] for r in mine)
        spend = sum(r["spend_minor"] for r in mine)
        comparison.append(
            {
                "model": m,
                "currency": currency,
                "days": len(mine),
                "orders": sum(r["orders"] for r in mine),
                "revenue_minor": revenue,
                "spend_minor": spend,
                "roas": _ratio(revenue, spend),
                "source": _source({s for r in mine for s in r["source"].split("+") if s != "-"}),
            }
        )
    return Daily(campaign_id, currency, days, out, comparison, batch_through, None, models)


def _days(start: date, end: date) -> list[date]:
    return [date.fromordinal(o) for o in range(start.toordinal(), end.toordinal() + 1)]


# Budget burn today -------------------------------------------------------------------------------

BUDGET_COLUMNS = (
    "campaign_id",
    "currency",
    "timezone",
    "budget_day",
    "day_elapsed",
    "spend_day_minor",
    "daily_cap_minor",
    "spend_lifetime_minor",
    "lifetime_cap_minor",
    "remaining_minor",
    "exhausted",
    "pacing",
)


async def budget_today(state: State, scope: Scope, at_ms: int | None = None) -> list[dict[str, Any]]:
    """Today's budget state of each campaign (``/v1/budget``), with its budget time zone."""
    now = at_ms if at_ms is not None else int(time.time() * 1000)
    out = []
    for b in await budget_states(state, scope.who, scope.campaign_ids, now):
        c = state.catalog.get(b.campaign_id)
        assert c is not None
        out.append({**asdict(b), "timezone": c.budget.timezone})
    return out


# Reconciliation ----------------------------------------------------------------------------------

RECONCILIATION_DAY_COLUMNS = ("day", "orders", "matched", "differing", "discrepancy_pct", *CAUSES)
RECONCILIATION_CAMPAIGN_COLUMNS = (
    "day",
    "campaign_id",
    "currency",
    "realtime_spend_minor",
    "batch_spend_minor",
    "difference_minor",
)


@dataclass
class Reconciliation:
    days: list[dict[str, Any]]  # RECONCILIATION_DAY_COLUMNS; closed days the nightly job reconciled
    campaigns: list[dict[str, Any]]  # RECONCILIATION_CAMPAIGN_COLUMNS; campaigns whose spend differs
    unreconciled: list[str]  # days of the range with no reconciliation (yet)


async def reconciliation(state: State, campaign_ids: list[str], start: date, end: date) -> Reconciliation:
    """Per reconciled day of the range: orders compared between the speed layer's ledger and the
    batch billing rule, those that differ by cause, and each campaign's spend in both layers.
    Only orders one of ``campaign_ids`` took part in (in either layer) count."""
    if end < start:
        raise InvalidParameter("end", end.isoformat(), f"must not be before start ({start.isoformat()})")
    if (end - start).days > 366:
        raise InvalidParameter("end", end.isoformat(), "at most 366 days per query")
    return await asyncio.to_thread(_reconciliation, state.lake, state, campaign_ids, start, end)


def _reconciliation(
    lake: Lake, state: State, campaign_ids: list[str], start: date, end: date
) -> Reconciliation:
    wanted = set(campaign_ids)
    days, campaigns, unreconciled = [], [], []
    for d in _days(start, end):
        ref = partition(RECONCILIATION, dt=d.isoformat())
        if not lake.is_complete(ref):
            unreconciled.append(d.isoformat())
            continue
        table = lake.read([ref], columns=_RECONCILIATION_COLUMNS)
        counts: dict[str, int] = defaultdict(int)
        rt_spend: dict[str, int] = defaultdict(int)
        bt_spend: dict[str, int] = defaultdict(int)
        for r in table.to_pylist() if table.num_rows else []:
            if r["rt_campaign"] not in wanted and r["bt_campaign"] not in wanted:
                continue
            counts[r["status"]] += 1
            if r["rt_campaign"] in wanted:
                rt_spend[r["rt_campaign"]] += int(r["rt_charge"] or 0)
            if r["bt_campaign"] in wanted:
                bt_spend[r["bt_campaign"]] += int(r["bt_charge"] or 0)
        orders = sum(counts.values())
        differing = orders - counts.get("match", 0)
        days.append(
            {
                "day": d.isoformat(),
                "orders": orders,
                "matched": counts.get("match", 0),
                "differing": differing,
                "discrepancy_pct": round(100.0 * differing / orders, 4) if orders else 0.0,
                **{cause: counts.get(cause, 0) for cause in CAUSES},
            }
        )
        for cid in sorted(set(rt_spend) | set(bt_spend)):
            if rt_spend[cid] != bt_spend[cid]:
                c = state.catalog.get(cid)
                campaigns.append(
                    {
                        "day": d.isoformat(),
                        "campaign_id": cid,
                        "currency": c.currency if c is not None else None,
                        "realtime_spend_minor": rt_spend[cid],
                        "batch_spend_minor": bt_spend[cid],
                        "difference_minor": rt_spend[cid] - bt_spend[cid],
                    }
                )
    return Reconciliation(days, campaigns, unreconciled)


# Invalid traffic ---------------------------------------------------------------------------------

IVT_COLUMNS = (
    "day",
    "campaign_id",
    "reason",
    "touches",
    "touches_refused",
    "orders_changed",
    "orders_unattributed",
    "orders_flagged",
    "avoided_minor",
    "currency",
    "source",
)


async def invalid_traffic(state: State, scope: Scope, start: date, end: date) -> list[dict[str, Any]]:
    """Per day, campaign and reason of the scope's campaigns: the rows of ``/v1/ivt``."""
    if not scope.campaign_ids:
        return []
    return await ivt_rows(state, scope.who, start, end, scope.campaign_ids)
