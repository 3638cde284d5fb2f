"""Rebuild an emptied Redis from the lake (``attribution realtime rebuild``; README "Redis lost").

A worker that resumes on an emptied Redis (FLUSHALL, a failover without persistence, a fresh
server) finds no charge record, claim or checkpoint: the window the broker redelivers is decided
and charged again, and spend restarts at 0, so caps are passed. The lake holds what is needed to
put the speed layer's state back, in three steps run on an empty Redis with the workers stopped:

1. **The flushed ledger** (``realtime_ledger``, every settlement the flusher moved): per campaign
   the lifetime spend (every line), and for orders inside the charge-record TTL
   (``realtime.decision_ttl_ms``, counted back from the latest event time the lake holds) their
   charge records (``<charge>|<budget day>|<refunded>``, ``0|day|1`` for an order cancelled first),
   the spend of their budget days and their day stats, in the scripts' key layout
   (``realtime.keys``); and each such order's **claim** (its decision, rebuilt from the ledger line
   and the order event in the lake), so a re-decided order gets the decision it was charged under
   (first claim wins) and ``settle.lua`` settles it as "nothing".
2. **The raw events** from the oldest order inside that TTL minus the look-back (the longest
   window plus the lateness) are fed through the engine (``SpeedLayer``, the same scripts a worker
   runs) in arrival order, in the topic-partition their producer puts them in (``realtime.routing``,
   as ``replay`` computes it), without the replay's final drain: touches, counts, cancel markers,
   claims of organic orders and pending orders and cancels come back as the original run left them,
   and orders not yet due stay pending. An order the engine decides meets the restored claim and
   charge record; one whose settlement never reached the lake is charged now, once, which puts its
   ledger line back in the stream (the flusher lands it).
3. **Checkpoints**: each re-fed partition's ``clocks`` entry keeps the watermark the re-feed
   reached; its offset is the lake sink's landed offset for that partition
   (``raw/_sink/<group>/progress/``) where the sink recorded one, else 0, so a worker resumes no
   later than what the lake holds and the broker redelivers the rest (what the engine applied
   already changes nothing: the identity rule). Rebuilt for a replay (``prefix``), the offsets
   are the replay's own.

What cannot be rebuilt is reported (``RebuildReport.missing``) and exported as
``attribution_rebuild_unrestored{kind}``: settlements not flushed before the loss whose events
were not landed either, dead letters, budget events and exhaustion flags, pacing controllers.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import pyarrow as pa
from prometheus_client import CollectorRegistry, Gauge

from realtime import codec
from realtime.clock import TP, tp_name
from realtime.deadletters import MemoryDeadLetters
from realtime.engine import SpeedLayer
from realtime.keys import Keys, ensure_layout
from realtime.metrics import Metrics
from realtime.routing import Producers, all_partitions, topic_partition
from shared_logic import Catalog
from shared_logic.contract import RAW, RAW_ROW, REALTIME_LEDGER, Checkpoint, decision_from_record
from shared_logic.events import EVENT_TYPES
from shared_logic.identity import rank, row_digest
from shared_logic.rules import Decision
from shared_logic.settings import Settings
from shared_logic.timeutil import utc_day
from storage.arrow import conform, table_of
from storage.lake import Lake, partition
from storage.raw import raw_partitions

#: Keys written per pipeline round trip.
WRITE_CHUNK = 5_000


class NotEmpty(RuntimeError):
    """The Redis to rebuild holds speed-layer keys already."""


@dataclass
class RebuildReport:
    """What a rebuild restored (counts per kind), how long it took, and what it could not."""

    restored: Counter[str] = field(default_factory=Counter)
    missing: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    refed_from: str = ""
    refed_to: str = ""

    def registry(self) -> CollectorRegistry:
        """``attribution_rebuild_restored{kind}``, ``attribution_rebuild_unrestored{kind}`` and the
        rebuild's duration, for a Prometheus textfile collector (``--metrics-file``)."""
        r = CollectorRegistry()
        restored = Gauge(
            "attribution_rebuild_restored", "Redis state rebuilt from the lake", ["kind"], registry=r
        )
        missing = Gauge(
            "attribution_rebuild_unrestored", "What the last rebuild could not restore", ["kind"], registry=r
        )
        took = Gauge("attribution_rebuild_seconds", "How long the last rebuild took", registry=r)
        for kind, n in self.restored.items():
            restored.labels(kind).set(n)
        for kind, n in self.missing.items():
            missing.labels(kind).set(n)
        took.set(self.seconds)
        return r

    def as_json(self) -> str:
        return json.dumps(
            {
                "restored": dict(self.restored),
                "missing": self.missing,
                "notes": self.notes,
                "seconds": round(self.seconds, 3),
                "refed": [self.refed_from, self.refed_to],
            },
            sort_keys=True,
        )


@dataclass(frozen=True, slots=True)
class _Order:
    """What the ledger says of one order's settlement."""

    campaign_id: str
    day: str  # budget day
    charge: int
    capped: bool
    refunded: bool
    cancelled: bool
    row: dict[str, Any]  # the charge (or cancelled) line


async def rebuild(
    settings: Settings,
    catalog: Catalog,
    lake: Lake,
    redis: Any,
    prefix: str = "",
    producers: Producers | None = None,
) -> RebuildReport:
    """Rebuild the speed layer's state in an empty ``redis`` from ``lake`` (module docstring).
    ``prefix``: the partitions' name prefix (``""`` for Kafka workers, ``replay:`` for a replay)."""
    started = time.perf_counter()
    keys = Keys.of(settings.keys)
    async for _ in redis.scan_iter(match=f"{keys.prefix}:*", count=1000):
        raise NotEmpty(
            f"this Redis holds keys under the prefix {keys.prefix!r} (ATTRIBUTION_KEYS_PREFIX): a rebuild "
            "writes spend and charge records over them; rebuild only an emptied Redis, with the "
            "workers stopped"
        )
    report = RebuildReport()
    ledger = await asyncio.to_thread(_read_ledger, lake)
    raw = await asyncio.to_thread(_read_raw_tail, lake, settings, catalog, ledger)
    table, ref_ms, start_ms = raw
    ttl = settings.decision_ttl_ms
    horizon = ref_ms - ttl  # orders before it: their charge record would have expired
    orders = _orders(ledger)
    order_rows = _order_rows(table)
    await ensure_layout(redis, keys)
    await _restore_ledger_state(redis, keys, catalog, ledger, orders, order_rows, horizon, ttl, report)
    engine = await _refeed(redis, settings, catalog, table, prefix, producers, report)
    await _restore_checkpoints(redis, keys, lake, settings, engine, prefix, report)
    report.refed_from = _iso(start_ms) if table.num_rows else ""
    report.refed_to = _iso(ref_ms) if table.num_rows else ""
    report.notes += [
        "settlements not flushed to realtime_ledger before the loss come back only for orders whose "
        "events the lake holds (the re-feed charges them again, once); the rest are lost: rerun "
        "their days in the batch layer",
        "not restored: the budget-events stream and exhaustion flags (the next charge or refund "
        "emits them again), pacing controllers (they start over), the dead-letter stream (the "
        "lake's dead_letters/ holds the landed ones)",
    ]
    report.seconds = time.perf_counter() - started
    await redis.set(f"{keys.prefix}:rebuild", report.as_json())
    return report


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="seconds")


# step 1: the ledger ---------------------------------------------------------------------------


def _read_ledger(lake: Lake) -> list[dict[str, Any]]:
    refs = [partition(REALTIME_LEDGER, **v) for v in lake.partitions(REALTIME_LEDGER.path)]
    if not refs:
        return []
    rows = lake.read(refs).to_pylist()
    # One line per stream entry: a file rewritten by a flusher that raced holds the same ids.
    seen: set[tuple[str, str]] = set()
    out = []
    for r in sorted(rows, key=lambda r: (r["due_ms"], r["stream_id"])):
        ident = (r["stream_id"], f"{r['order_id']}|{r['kind']}|{r['campaign_id']}")
        if ident not in seen:
            seen.add(ident)
            out.append(r)
    return out


def _orders(ledger: Sequence[dict[str, Any]]) -> dict[tuple[str, str], _Order]:
    """Each settled order's fate, by (campaign, order), from its lines in settlement order."""
    out: dict[tuple[str, str], _Order] = {}
    for r in ledger:
        k = (r["campaign_id"], r["order_id"])
        was = out.get(k)
        if r["kind"] == "charge" and was is None:
            out[k] = _Order(
                r["campaign_id"], r["budget_day"], r["charge_minor"], r["capped"], False, False, r
            )
        elif r["kind"] == "cancelled" and was is None:
            out[k] = _Order(r["campaign_id"], r["budget_day"], 0, False, True, True, r)
        elif r["kind"] == "refund" and was is not None:
            out[k] = _Order(was.campaign_id, was.day, was.charge, was.capped, True, was.cancelled, was.row)
    return out


def _order_rows(table: pa.Table) -> dict[str, dict[str, Any]]:
    """The standing copy (least rank, the identity rule) of each order event the re-feed holds."""
    out: dict[str, tuple[Any, dict[str, Any]]] = {}
    orders = table.filter(pa.compute.equal(table["event_type"], "order"))
    for row in orders.to_pylist():
        dg = row_digest(row)
        r = rank(row["event_time"], row["event_id"], dg)
        was = out.get(row["order_id"])
        if was is None or r < was[0]:
            out[row["order_id"]] = (r, {**row, "_digest": dg})
    return {k: v[1] for k, v in out.items()}


async def _restore_ledger_state(
    redis: Any,
    keys: Keys,
    catalog: Catalog,
    ledger: Sequence[dict[str, Any]],
    orders: dict[tuple[str, str], _Order],
    order_rows: dict[str, dict[str, Any]],
    horizon: int,
    ttl: int,
    report: RebuildReport,
) -> None:
    life: Counter[str] = Counter()
    day_spend: Counter[tuple[str, str]] = Counter()
    stats: dict[tuple[str, str], Counter[str]] = {}
    open_days: set[tuple[str, str]] = set()
    for r in ledger:
        cid, charge = r["campaign_id"], r["charge_minor"]
        life[cid] += charge
        day_spend[(cid, r["budget_day"])] += charge
        st = stats.setdefault((cid, utc_day(r["order_time_ms"])), Counter())
        if r["kind"] == "charge":
            st.update(orders=1, revenue=r["amount_minor"], spend=charge, capped_orders=int(r["capped"]))
        elif r["kind"] == "refund":
            st.update(orders=-1, revenue=-r["amount_minor"], spend=charge, refunds=1)
        if r["order_time_ms"] >= horizon:
            open_days.add((cid, r["budget_day"]))
    writes: list[tuple[Any, ...]] = []
    for cid, spent in life.items():
        writes.append(("set", keys.spend_lifetime(cid), str(spent), None))
    report.restored["lifetime_spend"] = len(life)
    for cid, day in sorted(open_days):
        writes.append(("set", keys.spend_day(cid, day), str(day_spend[(cid, day)]), ttl))
    report.restored["day_spend"] = len(open_days)
    n_stats = 0
    for (cid, day), st in stats.items():
        if day >= utc_day(max(horizon, 0)):
            writes.append(("hset", keys.stats(cid, day), {k: str(v) for k, v in st.items()}, ttl))
            n_stats += 1
    report.restored["day_stats"] = n_stats
    charges = claims = no_event = 0
    for (cid, oid), o in orders.items():
        if o.row["order_time_ms"] < horizon:
            continue
        record = f"0|{o.day}|1" if o.cancelled else f"{o.charge}|{o.day}|{int(o.refunded)}"
        writes.append(("set", keys.charge(cid, oid), record, ttl))
        charges += 1
        event = order_rows.get(oid)
        if event is None:
            no_event += 1  # its order event is not in the lake: the claim cannot be rebuilt
            continue
        d = _decision(o.row, event)
        claim = f"{int(o.cancelled)}|{event['_digest']}|{codec.encode_decision(d).decode()}"
        writes.append(("set", keys.claim(keys.bucket(oid), oid), claim, ttl))
        claims += 1
    report.restored["charge_records"] = charges
    report.restored["claims"] = claims
    report.missing["claims_without_order_event"] = no_event
    unknown = sorted({r["campaign_id"] for r in ledger} - {c.campaign_id for c in catalog})
    if unknown:
        report.notes.append(f"spend restored for {len(unknown)} campaigns not in the catalog: {unknown[:5]}")
    for i in range(0, len(writes), WRITE_CHUNK):
        async with redis.pipeline(transaction=False) as pipe:
            for op, key, value, px in writes[i : i + WRITE_CHUNK]:
                if op == "set":
                    pipe.set(key, value, px=px)
                else:
                    pipe.hset(key, mapping=value)
                    pipe.pexpire(key, px)
            await pipe.execute()


def _decision(line: dict[str, Any], order: dict[str, Any]) -> Decision:
    """The decision a ledger line was settled under (``LedgerEntry.of``'s inverse), with the order
    event's own fields the ledger does not carry."""
    return decision_from_record(
        {**line, "order_event_id": order["event_id"], "merchant_id": order["merchant_id"]}
    )


# step 2: the raw events -----------------------------------------------------------------------


def _read_raw_tail(
    lake: Lake, settings: Settings, catalog: Catalog, ledger: Sequence[dict[str, Any]]
) -> tuple[pa.Table, int, int]:
    """The raw events to re-feed (from the oldest order inside the charge-record TTL minus the
    look-back), sorted by arrival; the latest event time the lake holds; the re-feed's start."""
    days = sorted({v["dt"] for t in EVENT_TYPES for v in lake.partitions(RAW.at(event_type=t), depth=2)})
    if not days:
        return table_of(RAW_ROW, []), max((r["order_time_ms"] for r in ledger), default=0), 0
    last = date.fromisoformat(days[-1])
    tail = conform(lake.read(raw_partitions(lake, last, last)), RAW_ROW)
    ref = max(
        int(pa.compute.max(tail["event_time"]).as_py() or 0) if tail.num_rows else 0,
        max((r["order_time_ms"] for r in ledger), default=0),
    )
    policy = settings.rules.policy()
    lookback = policy.longest_window_ms(catalog) + policy.allowed_lateness_ms
    start = ref - settings.decision_ttl_ms - lookback
    first = max(date.fromisoformat(days[0]), datetime.fromtimestamp(max(start, 0) / 1000, tz=UTC).date())
    table = conform(lake.read(raw_partitions(lake, first, last)), RAW_ROW)
    table = table.filter(pa.compute.greater_equal(table["event_time"], start))
    table = table.sort_by([("ingested_at_ms", "ascending"), ("event_id", "ascending")])
    return table, ref, start


async def _refeed(
    redis: Any,
    settings: Settings,
    catalog: Catalog,
    table: pa.Table,
    prefix: str,
    producers: Producers | None,
    report: RebuildReport,
) -> SpeedLayer:
    """Feed the raw events through the engine in the partitions their producers put them in, in
    arrival order, without a final drain (orders not yet due stay pending)."""
    sources = all_partitions(settings.realtime, prefix)
    metrics = Metrics()
    dead = MemoryDeadLetters()  # refusals the lake's dead_letters/ or a first run recorded already
    engine = SpeedLayer(redis, catalog, settings, dead, metrics=metrics, sources=sources)
    await engine.start()
    await engine.assign(sources, restore=False)  # no end offsets: the wall clock moves nothing
    offsets: Counter[TP] = Counter()
    batch = settings.realtime.batch_size
    records: list[codec.Record] = []
    settled = Counter[str]()
    for row in table.to_pylist():
        arrival = row.pop("ingested_at_ms")
        value = {k: v for k, v in row.items() if v is not None}
        tp = topic_partition(value, settings.realtime, prefix, producers)
        records.append((tp, offsets[tp], value, arrival))
        offsets[tp] += 1
        if len(records) >= batch:
            _tally(settled, await engine.process_records(records))
            records = []
    if records:
        _tally(settled, await engine.process_records(records))
    if not offsets:  # nothing re-fed: checkpoint nothing
        engine.clocks.parts.clear()
    report.restored["events_refed"] = table.num_rows
    report.restored["touches"] = int(
        sum(metrics.value("attribution_events_total", type=t) for t in ("impression", "click", "promo_view"))
    )
    report.restored["pending_actions"] = engine.pending
    report.restored["decided_again"] = settled["decided"] + settled["organic"]
    # Charges the ledger did not hold: settlements lost before their flush, made again now.
    report.restored["ledger_lines_recharged"] = settled["charged"] + settled["refunded"]
    report.missing["refused_again_not_dead_lettered"] = len(dead.letters)
    return engine


def _tally(into: Counter[str], s: Any) -> None:
    into.update(decided=s.decided, organic=s.organic, charged=s.charged, refunded=s.refunded)


# step 3: checkpoints --------------------------------------------------------------------------


async def _restore_checkpoints(
    redis: Any,
    keys: Keys,
    lake: Lake,
    settings: Settings,
    engine: SpeedLayer,
    prefix: str,
    report: RebuildReport,
) -> None:
    """Each re-fed partition's checkpoint: the watermark and release bound the re-feed reached, at
    the offset the lake sink landed up to (Kafka partitions), or the re-feed's own (a replay's)."""
    if prefix:  # a replay's partitions: the offsets the re-feed gave them
        report.restored["checkpoints"] = sum(1 for c in engine.clocks.parts.values() if c.watermark)
        return
    group = f"{settings.realtime.app_id}-{settings.sink.group_suffix}"
    state: dict[str, str] = {}
    unknown = 0
    for tp, clock in engine.clocks.parts.items():
        if clock.watermark == 0:
            continue
        raw = lake._get_bytes(f"raw/_sink/{group}/progress/{tp[0]}-{tp[1]}.json")
        offset = int(json.loads(raw)["offset"]) if raw is not None else 0
        unknown += raw is None
        state[tp_name(tp)] = Checkpoint(offset, clock.watermark, engine.watermark).encode()
    if state:
        await redis.hset(keys.clocks(), mapping=state)
    else:
        await redis.delete(keys.clocks())
    report.restored["checkpoints"] = len(state)
    report.missing["checkpoints_without_sink_offset"] = unknown


def run_rebuild(
    settings: Settings, catalog: Catalog, lake: Lake, redis: Any, prefix: str = ""
) -> RebuildReport:
    """Synchronous entry point (the CLI); closes ``redis``."""

    async def go() -> RebuildReport:
        try:
            return await rebuild(settings, catalog, lake, redis, prefix)
        finally:
            await redis.aclose()

    return asyncio.run(go())
