"""Per-user and per-campaign steps of the nightly job, as pure functions over pandas.

Spark calls these inside ``mapInPandas`` / ``applyInPandas``; tests call them
directly. Each user's events arrive sorted by time, so one pass decides every
order with ``shared_logic.attribute_order`` (the function the speed layer
calls) and builds the journeys the multi-touch models need.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import pandas as pd

from shared_logic import AttributionPolicy, Catalog, Order, Touch, TouchKind, attribute_order
from shared_logic.contract import (
    DECISION_ROW,
    JOURNEY_ROW,
    LEDGER_ROW,
    SETTLEMENT_STATE_ROW,
    Column,
    ColumnType,
    RowSchema,
    decision_from_record,
    decision_record,
    state_from_records,
    state_records,
)
from shared_logic.rules import TOUCH_KINDS, eligible_campaigns, touch_counts
from shared_logic.settlement import ChargeBook, SettlementAction

JOURNEY_COLUMNS = list(JOURNEY_ROW.names)
_NO_DECISION: dict[str, Any] = dict.fromkeys(DECISION_ROW.names)


def _order_fields(order: Order) -> dict[str, Any]:
    """The order's own columns of a decision row (an organic order has no campaign)."""
    return {
        "order_id": order.order_id,
        "user_id": order.user_id,
        "order_event_id": order.event_id,
        "order_time_ms": order.event_time,
        "merchant_id": order.merchant_id,
        "amount_minor": order.amount_minor,
        "currency": order.currency,
    }


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
    decide_from_ms: int | None = None,
) -> list[dict[str, Any]]:
    """Decide every order of one user and build the day's journeys.

    ``rows`` holds the user's touches and orders (no cancels), sorted by event
    time. Returns one row per order (decision, winning touch, the journey of
    eligible touches before it) and at most one ``null`` row: the day's touches
    after the user's last order of the day, a journey that did not convert.
    Orders before ``decide_from_ms`` are left out (a checkpoint settled them).
    """
    touches: list[Touch] = []
    times: list[int] = []
    ingested: dict[str, int] = {}
    placements: dict[str, str | None] = {}
    orders: dict[str, tuple[Order, int]] = {}
    for row in rows.itertuples(index=False):
        r: Any = row  # pandas-stubs types tuple fields as a union of every scalar type
        etype = r.event_type
        kind = TOUCH_KINDS.get(etype)
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
        if decide_from_ms is not None and t < decide_from_ms:
            continue
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
                **_NO_DECISION,
                **(decision_record(decision) if decision is not None else _order_fields(order)),
                "kind": "order",
                "order_ingested_ms": order_ingested,
                "touch_ingested_ms": ingested.get(decision.touch_event_id, order_ingested)
                if decision
                else None,
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
                **_NO_DECISION,
                "kind": "null",
                "user_id": user_id,
                "order_ingested_ms": None,
                "touch_ingested_ms": None,
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
    decide_from_ms: int | None = None,
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
            rows += decide_user(
                str(user_id), group, catalog, policy, day_start_ms, day_end_ms, channel_key, decide_from_ms
            )
        if rows:
            yield pd.DataFrame(rows, columns=JOURNEY_COLUMNS)
    if carry is not None and not carry.empty:
        rows = decide_user(
            str(carry["user_id"].iloc[0]),
            carry,
            catalog,
            policy,
            day_start_ms,
            day_end_ms,
            channel_key,
            decide_from_ms,
        )
        if rows:
            yield pd.DataFrame(rows, columns=JOURNEY_COLUMNS)


LEDGER_COLUMNS = list(LEDGER_ROW.names)

#: What settling one campaign yields: ledger lines (``part`` = ``ledger``, the ``LEDGER_ROW``
#: columns) and the checkpoint's records (``part`` = ``state``, the ``SETTLEMENT_STATE_ROW``
#: columns), in one row so one pass of ``applyInPandas`` gives both.
SETTLED_ROW = RowSchema(
    "settled",
    (
        Column("part", ColumnType.STRING, False),
        *LEDGER_ROW.nullable().columns,
        *(c for c in SETTLEMENT_STATE_ROW.nullable().columns if c.name not in LEDGER_ROW.names),
    ),
)
SETTLED_COLUMNS = list(SETTLED_ROW.names)
# Every row holds every column (None where its part has none): a column pandas finds empty
# would otherwise be float NaN, which Arrow will not cast to a string column.
_NO_SETTLED: dict[str, Any] = dict.fromkeys(SETTLED_COLUMNS)


def _actions(actions: pd.DataFrame) -> list[SettlementAction]:
    todo = []
    records: list[dict[str, Any]] = actions.to_dict("records")  # type: ignore[assignment]  # str column names
    for rec in records:
        if rec["action"] == "decide":
            todo.append(
                SettlementAction(int(rec["due_ms"]), "decide", rec["order_id"], decision_from_record(rec))
            )
        else:
            todo.append(SettlementAction(int(rec["due_ms"]), "cancel", rec["order_id"]))
    return todo


def settle_campaign(actions: pd.DataFrame, catalog: Catalog) -> pd.DataFrame:
    """``applyInPandas`` body for one campaign: its decisions and cancels through a ChargeBook.

    ``actions`` holds the decision columns (``DECISION_ROW``), ``action`` and ``due_ms``.
    """
    entries = ChargeBook(catalog).settle(_actions(actions))
    return pd.DataFrame([asdict(e) for e in entries], columns=LEDGER_COLUMNS)


def settle_from_checkpoint(
    actions: pd.DataFrame,
    state: pd.DataFrame,
    catalog: Catalog,
    boundary_ms: int,
    open_from_ms: int,
    refundable_from_ms: int,
) -> pd.DataFrame:
    """``cogroup(...).applyInPandas`` body for one campaign: go on from its checkpoint records.

    Restores the campaign's book from ``state`` (``SETTLEMENT_STATE_ROW`` records; none: from
    the start), settles the actions due before ``boundary_ms``, takes the snapshot the next
    night starts from, then settles the rest (the refunds of the day's orders up to the cancel
    horizon). Returns ``SETTLED_ROW`` rows: every ledger line, then the snapshot's records.
    """
    records: list[dict[str, Any]] = state.to_dict("records")  # type: ignore[assignment]  # str column names
    book = ChargeBook.restore(catalog, state_from_records(records))
    todo = _actions(actions)
    book.settle(a for a in todo if a.due_ms < boundary_ms)
    snapshot = book.snapshot(open_from_ms, refundable_from_ms)
    book.settle(a for a in todo if a.due_ms >= boundary_ms)
    campaign_id = actions["campaign_id"].iloc[0] if len(actions) else state["campaign_id"].iloc[0]
    rows: list[dict[str, Any]] = [{**_NO_SETTLED, "part": "ledger", **asdict(e)} for e in book.ledger]
    # One book per campaign: a cancel that came first belongs to this campaign's order.
    rows.extend(
        {**_NO_SETTLED, "part": "state", **rec, "campaign_id": rec["campaign_id"] or campaign_id}
        for rec in state_records(snapshot)
    )
    return pd.DataFrame(rows, columns=SETTLED_COLUMNS)
