"""Per-user and per-campaign steps of the nightly job, as pure functions over pandas.

Spark calls these inside ``mapInPandas`` / ``applyInPandas``; tests call them
directly. Each user's events arrive sorted by time, so one pass decides every
order with ``shared_logic.attribute_order`` (the function the speed layer
calls) and builds the journeys the multi-touch models need.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import Any

import pandas as pd

from shared_logic import AttributionPolicy, Catalog, Order, Touch, TouchKind, attribute_order
from shared_logic.rules import eligible_campaigns, touch_counts
from shared_logic.settlement import ChargeBook, SettlementAction

DECISION_COLUMNS: dict[str, str] = {
    "kind": "string",
    "user_id": "string",
    "order_id": "string",
    "order_event_id": "string",
    "order_time_ms": "long",
    "order_ingested_ms": "long",
    "merchant_id": "string",
    "amount_minor": "long",
    "currency": "string",
    "campaign_id": "string",
    "advertiser_id": "string",
    "lever": "string",
    "touch_event_id": "string",
    "touch_kind": "int",
    "touch_time_ms": "long",
    "touch_ingested_ms": "long",
    "price_minor": "long",
    "path_channels": "array<string>",
    "path_times": "array<long>",
    "in_day": "boolean",
}
DECISION_SCHEMA = ", ".join(f"{k} {v}" for k, v in DECISION_COLUMNS.items())

_TOUCH_TYPES = {"impression": TouchKind.VIEW, "click": TouchKind.CLICK, "promo_view": TouchKind.VIEW}


def _channel(key: str, touch: Touch, placement: str | None, catalog: Catalog) -> str:
    if key == "campaign":
        return touch.campaign_id
    if key == "lever":
        c = catalog.get(touch.campaign_id)
        return str(c.lever) if c else "unknown"
    return placement or "none"


def decide_user(
    user_id: str,
    rows: pd.DataFrame,
    catalog: Catalog,
    policy: AttributionPolicy,
    day_start_ms: int,
    day_end_ms: int,
    channel_key: str = "campaign",
) -> list[dict[str, Any]]:
    """Decide every order of one user and build the day's journeys.

    ``rows`` holds the user's touches and orders (no cancels), sorted by event
    time. Returns one row per order (decision, winning touch, the journey of
    eligible touches before it) and at most one ``null`` row: the day's touches
    after the user's last order of the day, a journey that did not convert.
    """
    touches: list[Touch] = []
    times: list[int] = []
    ingested: dict[str, int] = {}
    placements: dict[str, str | None] = {}
    orders: dict[str, tuple[Order, int]] = {}
    for row in rows.itertuples(index=False):
        r: Any = row  # pandas-stubs types tuple fields as a union of every scalar type
        etype = r.event_type
        kind = _TOUCH_TYPES.get(etype)
        if kind is not None:
            if r.event_id in ingested:
                continue
            touches.append(Touch(r.event_id, user_id, r.campaign_id, kind, int(r.event_time)))
            times.append(int(r.event_time))
            ingested[r.event_id] = int(r.ingested_at_ms)
            placements[r.event_id] = r.placement
        elif etype == "order":
            codes = tuple(r.promo_codes) if r.promo_codes is not None else ()
            order = Order(
                r.event_id,
                int(r.event_time),
                user_id,
                r.order_id,
                r.merchant_id,
                int(r.amount_minor),
                r.currency,
                codes,
            )
            prior = orders.get(r.order_id)
            if prior is None or int(r.ingested_at_ms) < prior[1]:
                orders[r.order_id] = (order, int(r.ingested_at_ms))
    longest = policy.longest_window_ms(catalog)
    out: list[dict[str, Any]] = []
    last_order_in_day = -1
    for order, order_ingested in sorted(orders.values(), key=lambda o: (o[0].event_time, o[0].order_id)):
        t = order.event_time
        lo = bisect.bisect_left(times, t - longest)
        hi = bisect.bisect_right(times, t)
        window = touches[lo:hi]
        decision = attribute_order(order, window, catalog, policy)
        in_day = day_start_ms <= t < day_end_ms
        if in_day:
            last_order_in_day = max(last_order_in_day, t)
        path: list[str] = []
        path_times: list[int] = []
        if in_day and decision is not None:
            eligible = eligible_campaigns(order, catalog)
            for touch in window:
                if touch_counts(touch, eligible, policy, t):
                    path.append(_channel(channel_key, touch, placements.get(touch.event_id), catalog))
                    path_times.append(touch.time_ms)
            if decision.touch_kind is TouchKind.REDEMPTION:
                redemption = Touch(
                    decision.touch_event_id, user_id, decision.campaign_id, TouchKind.REDEMPTION, t
                )
                path.append(_channel(channel_key, redemption, None, catalog))
                path_times.append(t)
        out.append(
            {
                "kind": "order",
                "user_id": user_id,
                "order_id": order.order_id,
                "order_event_id": order.event_id,
                "order_time_ms": t,
                "order_ingested_ms": order_ingested,
                "merchant_id": order.merchant_id,
                "amount_minor": order.amount_minor,
                "currency": order.currency,
                "campaign_id": decision.campaign_id if decision else None,
                "advertiser_id": decision.advertiser_id if decision else None,
                "lever": str(decision.lever) if decision else None,
                "touch_event_id": decision.touch_event_id if decision else None,
                "touch_kind": int(decision.touch_kind) if decision else None,
                "touch_time_ms": decision.touch_time_ms if decision else None,
                "touch_ingested_ms": ingested.get(decision.touch_event_id, order_ingested)
                if decision
                else None,
                "price_minor": decision.price_minor if decision else None,
                "path_channels": path,
                "path_times": path_times,
                "in_day": in_day,
            }
        )
    lo = bisect.bisect_left(times, max(day_start_ms, last_order_in_day + 1))
    hi = bisect.bisect_left(times, day_end_ms)
    if hi > lo:
        tail = touches[lo:hi]
        out.append(
            {
                "kind": "null",
                "user_id": user_id,
                "order_id": None,
                "order_event_id": None,
                "order_time_ms": None,
                "order_ingested_ms": None,
                "merchant_id": None,
                "amount_minor": None,
                "currency": None,
                "campaign_id": None,
                "advertiser_id": None,
                "lever": None,
                "touch_event_id": None,
                "touch_kind": None,
                "touch_time_ms": None,
                "touch_ingested_ms": None,
                "price_minor": None,
                "path_channels": [
                    _channel(channel_key, x, placements.get(x.event_id), catalog) for x in tail
                ],
                "path_times": [x.time_ms for x in tail],
                "in_day": True,
            }
        )
    return out


def decide_partitions(
    batches: Iterator[pd.DataFrame],
    catalog: Catalog,
    policy: AttributionPolicy,
    day_start_ms: int,
    day_end_ms: int,
    channel_key: str = "campaign",
) -> Iterator[pd.DataFrame]:
    """``mapInPandas`` body: batches of a partition sorted by user, a user may straddle two."""
    carry: pd.DataFrame | None = None
    for batch in batches:
        if carry is not None:
            batch = pd.concat([carry, batch], ignore_index=True)
        if batch.empty:
            continue
        last_user = batch["user_id"].iloc[-1]
        done = batch[batch["user_id"] != last_user]
        carry = batch[batch["user_id"] == last_user]
        rows: list[dict[str, Any]] = []
        for user_id, group in done.groupby("user_id", sort=False):
            rows += decide_user(str(user_id), group, catalog, policy, day_start_ms, day_end_ms, channel_key)
        if rows:
            yield pd.DataFrame(rows, columns=list(DECISION_COLUMNS))
    if carry is not None and not carry.empty:
        rows = decide_user(
            str(carry["user_id"].iloc[0]), carry, catalog, policy, day_start_ms, day_end_ms, channel_key
        )
        if rows:
            yield pd.DataFrame(rows, columns=list(DECISION_COLUMNS))


LEDGER_COLUMNS: dict[str, str] = {
    "kind": "string",
    "order_id": "string",
    "campaign_id": "string",
    "advertiser_id": "string",
    "lever": "string",
    "user_id": "string",
    "order_time_ms": "long",
    "due_ms": "long",
    "amount_minor": "long",
    "currency": "string",
    "price_minor": "long",
    "charge_minor": "long",
    "capped": "boolean",
    "budget_day": "string",
    "touch_event_id": "string",
    "touch_kind": "int",
    "touch_time_ms": "long",
}
LEDGER_SCHEMA = ", ".join(f"{k} {v}" for k, v in LEDGER_COLUMNS.items())


def settle_campaign(actions: pd.DataFrame, catalog: Catalog) -> pd.DataFrame:
    """``applyInPandas`` body for one campaign: its decisions and cancels through a ChargeBook."""
    from shared_logic.rules import Decision

    book = ChargeBook(catalog)
    todo = []
    for row in actions.itertuples(index=False):
        r: Any = row
        if r.action == "decide":
            c = catalog.get(r.campaign_id)
            assert c is not None
            d = Decision(
                r.order_id,
                r.user_id,
                r.order_event_id,
                int(r.order_time_ms),
                r.merchant_id,
                int(r.amount_minor),
                r.currency,
                r.campaign_id,
                c.advertiser_id,
                c.lever,
                r.touch_event_id,
                TouchKind(int(r.touch_kind)),
                int(r.touch_time_ms),
                int(r.price_minor),
            )
            todo.append(SettlementAction(int(r.due_ms), "decide", r.order_id, d))
        else:
            todo.append(SettlementAction(int(r.due_ms), "cancel", r.order_id))
    entries = book.settle(todo)
    return pd.DataFrame([_entry_dict(e) for e in entries], columns=list(LEDGER_COLUMNS))


def _entry_dict(e: Any) -> dict[str, Any]:
    return {k: getattr(e, k) for k in LEDGER_COLUMNS}
