"""Per-user and per-campaign steps of the nightly job, as pure functions over pandas.

Spark calls these inside ``mapInPandas`` / ``applyInPandas``; tests call them
directly. Each user's events arrive sorted by time, so one pass decides every
order with ``shared_logic.rules.judge_order`` (the function the speed layer
calls: the billing rule with the invalid-traffic rules) and builds the journeys
the multi-touch models need.
"""

from __future__ import annotations

import bisect
import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from shared_logic import AttributionPolicy, Catalog, InvalidEvent, Touch, TouchKind
from shared_logic.admission import touch_refusal
from shared_logic.contract import (
    COUNTERS,
    JOURNEY_ROW,
    LEDGER_ROW,
    RAW_ROW,
    SETTLEMENT_STATE_ROW,
    Column,
    ColumnType,
    IvtRow,
    RowSchema,
    dead_letter,
    decision_from_record,
    decision_record,
    ivt_order_row,
    ivt_touch_row,
    order_decision_fields,
    order_from_payload,
    state_from_records,
    state_records,
)
from shared_logic.identity import (
    ORDER_CONFLICT_RULE,
    TOUCH_CONFLICT_RULE,
    Rank,
    rank,
    row_digest,
    row_fields,
    stands,
)
from shared_logic.ivt import GivtLists, touch_flag
from shared_logic.rules import TOUCH_KINDS, eligible_campaigns, judge_order, touch_counts
from shared_logic.settlement import ChargeBook, SettlementAction

JOURNEY_COLUMNS = list(JOURNEY_ROW.names)
_NO_DECISION: dict[str, Any] = dict.fromkeys(JOURNEY_ROW.names)  # every column, or pandas fills NaN


def _channel(key: str, touch: Touch, placement: str | None, catalog: Catalog) -> str:
    if key == "campaign":
        return touch.campaign_id
    if key == "lever":
        c = catalog.get(touch.campaign_id)
        return str(c.lever) if c else "unknown"
    return placement or "none"


@dataclass(frozen=True, slots=True)
class DaySpec:
    """What deciding one day's users needs besides their events: the rules, the day's bounds and
    where settlement goes on from (orders before ``decide_from_ms``: a checkpoint settled them)."""

    catalog: Catalog
    policy: AttributionPolicy
    day_start_ms: int
    day_end_ms: int
    channel_key: str = "campaign"
    decide_from_ms: int | None = None
    givt: GivtLists = field(default_factory=GivtLists)  # the general invalid-traffic lists

    def in_day(self, t: int) -> bool:
        return self.day_start_ms <= t < self.day_end_ms


def _refusal(r: Any, broken: InvalidEvent) -> dict[str, Any]:
    """A ``refused`` journey row: the dead letter of an event refused when deciding."""
    letter = dead_letter(row_fields(r._asdict()), broken.as_dict(), int(r.ingested_at_ms))
    return {
        **_NO_DECISION,
        "kind": "refused",
        "user_id": r.user_id,
        "path_channels": [],
        "path_times": [],
        "in_day": True,
        "refusal": json.dumps(asdict(letter)),
    }


def _ivt(user_id: str, row: IvtRow) -> dict[str, Any]:
    """An ``ivt`` journey row: one invalid-traffic verdict (``IVT_ROW`` as JSON)."""
    return {
        **_NO_DECISION,
        "kind": "ivt",
        "user_id": user_id,
        "path_channels": [],
        "path_times": [],
        "in_day": True,
        "ivt": json.dumps(asdict(row)),
    }


def decide_user(user_id: str, rows: pd.DataFrame, spec: DaySpec) -> list[dict[str, Any]]:
    """Decide every order of one user and build the day's journeys.

    ``rows`` holds the user's touches and orders (no cancels), sorted by event time. Touches go
    through admission's catalog stage (``shared_logic.admission``) and the identity rule
    (``shared_logic.identity``: of the copies of an event id, the least rank stands); orders
    through the identity rule (the job has already kept one order event per order id across
    users). Returns one row per order (decision, winning touch, the journey of eligible touches
    before it); at most one ``null`` row, the day's touches after the user's last order of the
    day, a journey that did not convert; one ``count`` row per campaign and counter of the
    day's admitted touches (the day's impressions, clicks and promo views); one ``refused``
    row per refused event of the day (its dead letter); and one ``ivt`` row per invalid-traffic
    verdict of the day: a touch admission's traffic stage flagged (an enforced one takes no
    further part), an order whose would-be winner a per-order rule flagged
    (``rules.judge_order``). Orders before ``spec.decide_from_ms`` are left out (a checkpoint
    settled them).
    """
    catalog, policy = spec.catalog, spec.policy
    out: list[dict[str, Any]] = []
    copies: dict[str, tuple[Rank, Any]] = {}  # event id -> the standing copy's rank and row
    orders: dict[str, tuple[Rank, Any]] = {}
    refused: list[Any] = []  # rows of conflicting copies that do not stand
    flagged: dict[str, IvtRow] = {}  # event id -> the verdict of admission's traffic stage
    ivt = policy.ivt
    for row in rows.itertuples(index=False):
        r: Any = row  # pandas-stubs types tuple fields as a union of every scalar type
        etype = r.event_type
        t = int(r.event_time)
        if etype in TOUCH_KINDS:
            broken = touch_refusal(etype, r.campaign_id, t, catalog)
            if broken is not None:
                if spec.in_day(t):
                    out.append(_refusal(r, broken))
                continue
            agent, ip = getattr(r, "user_agent", None), getattr(r, "ip", None)
            if agent is not None or ip is not None:
                flag = touch_flag(r.campaign_id, agent, ip, ivt, spec.givt)
                if flag is not None:
                    if spec.in_day(t):
                        flagged[r.event_id] = ivt_touch_row(r.campaign_id, user_id, r.event_id, t, flag)
                    if flag.enforced:
                        continue
            table = copies
            key = r.event_id
        elif etype == "order":
            table = orders
            key = r.order_id
        else:
            continue
        copy_rank = rank(t, r.event_id, row_digest(r._asdict()))
        standing = table.get(key)
        if standing is None:
            table[key] = (copy_rank, r)
        elif standing[0][2] == copy_rank[2]:
            continue  # the same copy again: one event
        elif stands(copy_rank, standing[0]):
            refused.append(standing[1])
            table[key] = (copy_rank, r)
        else:
            refused.append(r)
    for r in refused:
        if spec.in_day(int(r.event_time)):
            is_touch = r.event_type in TOUCH_KINDS
            rule = (
                InvalidEvent("event_id", r.event_id, TOUCH_CONFLICT_RULE)
                if is_touch
                else InvalidEvent("order_id", r.order_id, ORDER_CONFLICT_RULE)
            )
            out.append(_refusal(r, rule))
    out.extend(_ivt(user_id, v) for v in flagged.values())
    kept = sorted((c for _, c in copies.values()), key=lambda c: int(c.event_time))
    touches = [
        Touch(c.event_id, user_id, c.campaign_id, TOUCH_KINDS[c.event_type], int(c.event_time)) for c in kept
    ]
    times = [x.time_ms for x in touches]
    ingested = {c.event_id: int(c.ingested_at_ms) for c in kept}
    placements = {c.event_id: c.placement for c in kept}
    counts: Counter[tuple[str, str]] = Counter(
        (c.campaign_id, COUNTERS[c.event_type]) for c in kept if spec.in_day(int(c.event_time))
    )
    for (campaign_id, counter), n in sorted(counts.items()):
        out.append(
            {
                **_NO_DECISION,
                "kind": "count",
                "user_id": user_id,
                "campaign_id": campaign_id,
                "counter": counter,
                "touches": n,
                "path_channels": [],
                "path_times": [],
                "in_day": True,
            }
        )
    longest = policy.longest_window_ms(catalog)
    channel_key = spec.channel_key
    last_order_in_day = -1
    for _, r in sorted(orders.values(), key=lambda o: (o[0][0], o[1].order_id)):
        order = order_from_payload({**r._asdict(), "user_id": user_id})
        t = order.event_time
        if spec.decide_from_ms is not None and t < spec.decide_from_ms:
            continue
        order_ingested = int(r.ingested_at_ms)
        lo = bisect.bisect_left(times, t - longest)
        hi = bisect.bisect_right(times, t)
        window = touches[lo:hi]
        judged = judge_order(order, window, catalog, policy)
        decision = judged.decision
        in_day = spec.in_day(t)
        if in_day and judged.verdict is not None:
            out.append(_ivt(user_id, ivt_order_row(user_id, judged.verdict)))
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
                **(decision_record(decision) if decision is not None else order_decision_fields(order)),
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
    lo = bisect.bisect_left(times, max(spec.day_start_ms, last_order_in_day + 1))
    hi = bisect.bisect_left(times, spec.day_end_ms)
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


def _grouped(
    batches: Iterator[pd.DataFrame],
    key: str,
    fn: Callable[[str, pd.DataFrame], list[dict[str, Any]]],
    columns: list[str],
) -> Iterator[pd.DataFrame]:
    """Apply ``fn`` to each group of rows sharing ``key`` in batches sorted by it (a group may
    straddle two batches: the last group of a batch waits for the next)."""
    carry: pd.DataFrame | None = None
    for batch in batches:
        if carry is not None:
            batch = pd.concat([carry, batch], ignore_index=True)
        if batch.empty:
            continue
        last = batch[key].iloc[-1]
        done = batch[batch[key] != last]
        carry = batch[batch[key] == last]
        rows: list[dict[str, Any]] = []
        for value, group in done.groupby(key, sort=False):
            rows += fn(str(value), group)
        if rows:
            yield pd.DataFrame(rows, columns=columns)
    if carry is not None and not carry.empty:
        rows = fn(str(carry[key].iloc[0]), carry)
        if rows:
            yield pd.DataFrame(rows, columns=columns)


def decide_partitions(batches: Iterator[pd.DataFrame], spec: DaySpec) -> Iterator[pd.DataFrame]:
    """``mapInPandas`` body: batches of a partition sorted by user, a user may straddle two."""
    return _grouped(batches, "user_id", lambda user, rows: decide_user(user, rows, spec), JOURNEY_COLUMNS)


#: Order rows with the identity rule's verdict: ``refusal`` null for the order event that stands
#: for its order id, the dead letter (JSON) of a conflicting one.
PICKED_ORDER_ROW = RAW_ROW.plus(Column("refusal", ColumnType.STRING))
_PICKED_COLUMNS = list(PICKED_ORDER_ROW.names)


def pick_order(order_id: str, rows: pd.DataFrame, spec: DaySpec) -> list[dict[str, Any]]:
    """The identity rule over the order events of one order id, whoever their users: the least
    rank stands; identical copies are one; a conflicting one of the day is refused."""
    best: tuple[Rank, Any] | None = None
    others: list[tuple[str, Any]] = []
    for row in rows.itertuples(index=False):
        r: Any = row
        copy = rank(int(r.event_time), r.event_id, row_digest(r._asdict()))
        if best is None or stands(copy, best[0]):
            if best is not None:
                others.append((best[0][2], best[1]))
            best = (copy, r)
        else:
            others.append((copy[2], r))
    assert best is not None
    out = [{**best[1]._asdict(), "refusal": None}]
    refused = {d: r for d, r in others if d != best[0][2]}  # identical copies of one are one refusal
    for r in refused.values():
        if spec.in_day(int(r.event_time)):
            letter = _refusal(r, InvalidEvent("order_id", order_id, ORDER_CONFLICT_RULE))
            out.append({**r._asdict(), "refusal": letter["refusal"]})
    return out


def pick_orders(batches: Iterator[pd.DataFrame], spec: DaySpec) -> Iterator[pd.DataFrame]:
    """``mapInPandas`` body over order rows sorted by order id (``pick_order`` per id)."""
    return _grouped(batches, "order_id", lambda oid, rows: pick_order(oid, rows, spec), _PICKED_COLUMNS)


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
