"""The speed layer's daily view per campaign (what the API merges with batch days).

Open days come from Redis (``speed_view``): orders, revenue and spend from each
campaign's stats in its budget shard (moved by the charge and refund scripts);
impressions, clicks and promo views from the counters of every user bucket,
summed. Closed days (landed in the lake, settled, the ledger flushed) come from
the lake (``lake_view``): the speed layer's ledger and the landed raw events.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from realtime.keys import Keys
from shared_logic import Catalog
from shared_logic.admission import touch_refusal
from shared_logic.contract import (
    BILLING_MODEL,
    COUNTERS,
    IVT,
    IVT_SHAPE,
    IVT_SHAPE_ROW,
    RAW,
    REALTIME_LEDGER,
    IvtShapeRow,
    IvtSummary,
    ivt_columns,
    ivt_measures,
    metric_row,
    parse_count_field,
    roas,
    summarize_ivt,
)
from shared_logic.identity import Rank, rank, row_digest, stands
from shared_logic.ivt import GivtLists, IvtPolicy, touch_flag
from shared_logic.timeutil import utc_day, utc_day_bounds_ms
from storage.lake import Lake, PartitionRef, partition
from storage.raw import HOURS, landed_by_day


@dataclass(frozen=True, slots=True)
class Retention:
    """How long after the end of its UTC day each kind of speed-layer key can still exist.

    The worker writes a day's keys while it processes that day's events and expires them a TTL
    after the last write: counters (``counts``, TTL ``realtime.counts_ttl_ms``) take touches up
    to the touch retention late (longest window plus allowed lateness), campaign stats (TTL
    ``realtime.decision_ttl_ms``) take charges and refunds as long as the order's decision is
    kept. ``max_future_ms`` is the rules' future bound: an event dated further ahead of the clock
    is a dead letter, so later days hold nothing either. These hold when the worker keeps up
    with its input (live mode); a replay of old traffic writes keys that outlive them.
    """

    counts_ms: int
    stats_ms: int
    max_future_ms: int

    def days(self, days: Sequence[str], now_ms: int, kind: Literal["counts", "stats"]) -> list[str]:
        """The days of ``days`` whose ``kind`` keys (``counts`` or ``stats``) can exist at ``now_ms``."""
        keep = self.counts_ms if kind == "counts" else self.stats_ms
        newest = utc_day(now_ms + self.max_future_ms)
        return [
            d for d in days if d <= newest and utc_day_bounds_ms(date.fromisoformat(d))[1] + keep > now_ms
        ]


async def speed_view(
    redis: Any,
    keys: Keys,
    catalog: Catalog,
    days: Sequence[str],
    campaign_ids: Sequence[str],
    counted_days: Collection[str] | None = None,
) -> list[dict[str, Any]]:
    """One ``MetricRow`` per (day, campaign) with any activity, model ``billing``; days are UTC.

    ``counted_days`` (default: all of ``days``) are the days whose user-bucket counters
    (impressions, clicks, promo views) and invalid-traffic verdicts (``Keys.ivt``, kept as long)
    may still exist; the others read campaign stats only, which saves ``keys.user_buckets`` reads
    per day (``Retention.days`` says which are which). The ``ivt_*`` columns sum the day's
    verdicts per campaign as ``speed_ivt`` reads them (``contract.ivt_measures``).
    """
    if not days or not campaign_ids:
        return []
    counted = set(days if counted_days is None else counted_days)
    async with redis.pipeline(transaction=False) as pipe:
        for day in days:
            if day in counted:
                for bucket in range(keys.user_buckets):
                    pipe.hgetall(keys.counts(bucket, day))
                pipe.hgetall(keys.ivt(day))
            for cid in campaign_ids:
                pipe.hgetall(keys.stats(cid, day))
        results = await pipe.execute()
    rows = []
    i = 0
    wanted = set(campaign_ids)
    for day in days:
        counts: dict[str, dict[str, int]] = {}
        verdicts: dict[str, dict[str, int]] = {}
        for _ in range(keys.user_buckets if day in counted else 0):
            for field, n in results[i].items():
                cid, name = parse_count_field(field.decode())
                if cid in wanted:
                    slot = counts.setdefault(cid, {})
                    slot[name] = slot.get(name, 0) + int(n)
            i += 1
        if day in counted:
            verdicts = ivt_measures(summarize_ivt(day, (orjson.loads(v) for v in results[i].values())))
            i += 1
        for cid in campaign_ids:
            stats = {k.decode(): int(v) for k, v in results[i].items()}
            i += 1
            c = counts.get(cid, {})
            if not stats and not c and cid not in verdicts:
                continue
            rows.append(_billing_row(catalog, day, cid, stats, c, verdicts))
    return rows


def closed_days(lake: Lake, days: Sequence[str], now_ms: int, settled_ms: int) -> list[str]:
    """The days of ``days`` the lake answers for: every raw hour marked landed (the lake sink passed
    the day's end plus the allowed lateness on every partition, or a backfill) and ``settled_ms``
    past the day's end (its orders released and settled, the ledger flushed after)."""
    ended = [d for d in days if utc_day_bounds_ms(date.fromisoformat(d))[1] + settled_ms <= now_ms]
    if not ended:
        return []
    marked = landed_by_day(lake)
    return [d for d in ended if marked.get(d, set()) >= set(HOURS)]


def lake_view(
    lake: Lake,
    catalog: Catalog,
    days: Sequence[str],
    campaign_ids: Sequence[str],
    ivt: IvtPolicy | None = None,
    givt: GivtLists | None = None,
    verdicts: Mapping[str, Iterable[IvtSummary]] | None = None,
) -> list[dict[str, Any]]:
    """``speed_view`` of closed days from the lake: orders, revenue, spend and capped orders from
    the speed layer's ledger (``realtime_ledger/dt=``: a charge adds the order, a refund takes it
    back, as the settlement scripts move the stats), touches from the landed raw events of the day
    that admission keeps, one per event by the identity rule (``count_touches``, as the speed
    layer's counters and the nightly job count them; copies of one event dated on two UTC days are
    the one case where it may differ, since it reads one day). Redis may have expired those days;
    the lake keeps them, and rows do not change with Redis's retention. ``ivt`` and ``givt``: the
    invalid-traffic rules and lists the layers run with (a touch they enforce on is not counted).
    The ``ivt_*`` columns sum ``verdicts`` (per day, ``IvtSummary`` rows; default: the nightly
    job's ``ivt/`` of the days it judged, ``lake_ivt``; the API hands ``ivt_summaries``' answer,
    Redis's verdicts for a day not judged yet), per campaign by ``contract.ivt_measures``: the
    speed layer keeps its verdicts in Redis only, and the nightly job's are the same ones
    (``tests/integration/test_ivt_parity.py``)."""
    if not days or not campaign_ids:
        return []
    if verdicts is None:
        verdicts = lake_ivt(lake, days)
    judged = {d: ivt_measures(verdicts.get(d, ())) for d in days}
    wanted = pa.array(sorted(set(campaign_ids)))
    wanted_ids = set(campaign_ids)
    money: dict[tuple[str, str], dict[str, int]] = {}
    touches: dict[tuple[str, str], dict[str, int]] = {}
    hours: dict[tuple[str, str], list[PartitionRef]] = {}  # (type, day) -> its hour partitions
    asked = set(days)
    for etype in COUNTERS:
        for p in lake.partitions(RAW.at(event_type=etype), depth=2):
            if p["dt"] in asked:
                hours.setdefault((etype, p["dt"]), []).append(partition(RAW, event_type=etype, **p))
    for day in days:
        ledger = lake.read(
            [partition(REALTIME_LEDGER, dt=day)],
            columns=["kind", "campaign_id", "amount_minor", "charge_minor", "capped"],
        )
        if ledger.num_rows:
            ledger = ledger.filter(pc.is_in(ledger["campaign_id"], value_set=wanted))
            for r in ledger.to_pylist():
                slot = money.setdefault((day, r["campaign_id"]), {})
                sign = {"charge": 1, "refund": -1}.get(r["kind"], 0)
                if sign:
                    slot["orders"] = slot.get("orders", 0) + sign
                    slot["revenue"] = slot.get("revenue", 0) + sign * r["amount_minor"]
                    slot["spend"] = slot.get("spend", 0) + r["charge_minor"]
                    slot["capped_orders"] = slot.get("capped_orders", 0) + (sign > 0 and bool(r["capped"]))
        refs = [ref for etype in COUNTERS for ref in hours.get((etype, day), [])]
        raw = lake.read(refs) if refs else None
        if raw is None or not raw.num_rows:
            continue
        for (cid, counter), n in count_touches(raw.to_pylist(), catalog, ivt, givt).items():
            if cid in wanted_ids:
                touches.setdefault((day, cid), {})[counter] = n
    rows = []
    for day in days:
        for cid in campaign_ids:
            stats, c = money.get((day, cid), {}), touches.get((day, cid), {})
            if not stats and not c and cid not in judged[day]:
                continue
            rows.append(_billing_row(catalog, day, cid, stats, c, judged[day]))
    return rows


async def speed_ivt(redis: Any, keys: Keys, days: Sequence[str]) -> list[IvtSummary]:
    """Invalid traffic per day, campaign and reason from the speed layer's verdicts (its day
    hashes, ``Keys.ivt``): what ``attribution ivt report`` reads from the nightly job's ``ivt/``."""
    out: list[IvtSummary] = []
    for day in days:
        raw = await redis.hgetall(keys.ivt(day))
        out += summarize_ivt(day, (orjson.loads(v) for v in raw.values()))
    return out


def lake_ivt(lake: Lake, days: Sequence[str]) -> dict[str, list[IvtSummary]]:
    """Invalid traffic per day, campaign and reason from the nightly job's verdicts (``ivt/dt=``),
    for the days among ``days`` it has judged (its partition committed); the others are absent."""
    out: dict[str, list[IvtSummary]] = {}
    for day in days:
        ref = partition(IVT, dt=day)
        if lake.is_complete(ref):
            table = lake.read([ref])
            out[day] = summarize_ivt(day, table.to_pylist() if table.num_rows else [])
    return out


def lake_ivt_shape(lake: Lake, days: Sequence[str]) -> dict[str, list[IvtShapeRow]]:
    """The nightly job's delay report (``ivt_shape/dt=``, ``IvtShapeRow``) of the days among
    ``days`` it wrote (the report on); the others are absent."""
    out: dict[str, list[IvtShapeRow]] = {}
    for day in days:
        ref = partition(IVT_SHAPE, dt=day)
        if lake.is_complete(ref):
            table = lake.read([ref])
            names = IVT_SHAPE_ROW.names  # a reader may add the partition's dt
            out[day] = [IvtShapeRow(**{n: r[n] for n in names}) for r in table.to_pylist()]
    return out


async def ivt_summaries(
    lake: Lake, redis: Any, keys: Keys, days: Sequence[str]
) -> list[tuple[IvtSummary, Literal["batch", "speed"]]]:
    """Invalid traffic of ``days`` with the layer each day was read from: the nightly job's
    ``ivt/`` for the days it judged (``lake_ivt``), the speed layer's day hashes for the others
    (``speed_ivt``), never both for one day. What ``/v1/ivt`` and the console's page show."""
    judged = await asyncio.to_thread(lake_ivt, lake, days)
    rows: list[tuple[IvtSummary, Literal["batch", "speed"]]] = []
    speed_rows = await speed_ivt(redis, keys, [d for d in days if d not in judged])
    by_day: dict[str, list[IvtSummary]] = {}
    for s in speed_rows:
        by_day.setdefault(s.dt, []).append(s)
    for day in days:
        if day in judged:
            rows += [(s, "batch") for s in judged[day]]
        else:
            rows += [(s, "speed") for s in by_day.get(day, [])]
    return rows


def count_touches(
    rows: Iterable[Mapping[str, Any]],
    catalog: Catalog,
    ivt: IvtPolicy | None = None,
    givt: GivtLists | None = None,
) -> Counter[tuple[str, str]]:
    """Touches per (campaign, counter) of raw rows: those admission's catalog and traffic stages
    admit (``shared_logic.admission``), one standing copy per event (``shared_logic.identity``)."""
    standing: dict[tuple[str, str], tuple[Rank, Mapping[str, Any]]] = {}
    ivt = ivt or IvtPolicy()
    givt = givt or GivtLists()
    for row in rows:
        if touch_refusal(row["event_type"], row["campaign_id"], row["event_time"], catalog) is not None:
            continue
        if row.get("user_agent") is not None or row.get("ip") is not None:
            flag = touch_flag(row["campaign_id"], row.get("user_agent"), row.get("ip"), ivt, givt)
            if flag is not None and flag.enforced:
                continue
        key = (row["user_id"], row["event_id"])
        copy = rank(row["event_time"], row["event_id"], row_digest(row))
        held = standing.get(key)
        if held is None or stands(copy, held[0]):
            standing[key] = (copy, row)
    return Counter((r["campaign_id"], COUNTERS[r["event_type"]]) for _, r in standing.values())


def _billing_row(
    catalog: Catalog,
    day: str,
    cid: str,
    stats: dict[str, int],
    touches: dict[str, int],
    verdicts: Mapping[str, Mapping[str, int]],
) -> dict[str, Any]:
    """One metric row of the billing model: the speed layer's stats of a campaign and day (orders,
    revenue, spend, capped orders), its touch counts and its invalid-traffic measures
    (``contract.ivt_measures``), wherever they were read from."""
    campaign = catalog.get(cid)
    assert campaign is not None
    spend, revenue = stats.get("spend", 0), stats.get("revenue", 0)
    return metric_row(
        dt=day,
        campaign_id=cid,
        advertiser_id=campaign.advertiser_id,
        lever=str(campaign.lever),
        currency=campaign.currency,
        model=BILLING_MODEL,
        impressions=touches.get("impressions", 0),
        clicks=touches.get("clicks", 0),
        promo_views=touches.get("promo_views", 0),
        orders=float(stats.get("orders", 0)),
        revenue_minor=float(revenue),
        spend_minor=spend,
        capped_orders=stats.get("capped_orders", 0),
        roas=roas(revenue, spend),
        **ivt_columns(verdicts, cid),
    )
