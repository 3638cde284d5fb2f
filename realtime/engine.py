"""The speed layer's core: ingest events into Redis, then decide and charge orders.

Faust agents (``realtime.app``) and the replay driver call ``SpeedLayer``; it
knows nothing of Kafka. Per batch it does one Lua call per user bucket for
ingestion, and for the orders and cancels that have come due, three pipelined
round trips: read touches, claim (or cancel), charge (or refund). The billing
rule is ``shared_logic.attribute_order``; settlement follows
``shared_logic.settlement`` step for step.

Time: the watermark is the greatest event time seen (in live mode the timer
also moves it to the wall clock). An order is decided, and a cancel takes
effect, when the watermark passes its event time plus the allowed lateness;
actions run in ``action_key`` order, so the outcome does not depend on how
events were batched, and a replay after a crash repeats the same sequence
(every script is idempotent).
"""

from __future__ import annotations

import heapq
import logging
import time
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from realtime.keys import Keys
from realtime.metrics import Metrics
from realtime.settings import RealtimeSettings
from realtime.sinks import DeadLetter, DeadLetterSink, Raw
from shared_logic import (
    AttributionPolicy,
    Catalog,
    Click,
    Decision,
    Impression,
    InvalidEvent,
    Lever,
    Order,
    PromoView,
    Touch,
    TouchKind,
    attribute_order,
    budget_day,
    parse_event,
)
from shared_logic.settlement import action_key

log = logging.getLogger(__name__)

_KIND_CODE = {TouchKind.VIEW: "v", TouchKind.CLICK: "c"}
_CODE_KIND = {"v": TouchKind.VIEW, "c": TouchKind.CLICK}
_COUNT_FIELD = {"impression": "impressions", "click": "clicks", "promo_view": "promo_views"}


def utc_day(time_ms: int) -> str:
    return datetime.fromtimestamp(time_ms / 1000, tz=UTC).date().isoformat()


def _script(name: str) -> str:
    return resources.files("realtime").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


@dataclass(order=True, slots=True)
class _Action:
    key: tuple[int, int, str]
    bucket: int = field(compare=False)
    payload: dict[str, Any] = field(compare=False)


@dataclass(slots=True)
class Settled:
    """What one release did (for callers and benchmarks)."""

    decided: int = 0
    organic: int = 0
    charged: int = 0
    refunded: int = 0
    latencies_s: list[float] = field(default_factory=list)


def decision_payload(d: Decision) -> dict[str, Any]:
    return {
        "order_id": d.order_id,
        "user_id": d.user_id,
        "order_event_id": d.order_event_id,
        "order_time_ms": d.order_time_ms,
        "merchant_id": d.merchant_id,
        "amount_minor": d.amount_minor,
        "currency": d.currency,
        "campaign_id": d.campaign_id,
        "advertiser_id": d.advertiser_id,
        "lever": str(d.lever),
        "touch_event_id": d.touch_event_id,
        "touch_kind": int(d.touch_kind),
        "touch_time_ms": d.touch_time_ms,
        "price_minor": d.price_minor,
    }


def decision_from_payload(p: dict[str, Any]) -> Decision:
    return Decision(
        p["order_id"],
        p["user_id"],
        p["order_event_id"],
        p["order_time_ms"],
        p["merchant_id"],
        p["amount_minor"],
        p["currency"],
        p["campaign_id"],
        p["advertiser_id"],
        Lever(p["lever"]),
        p["touch_event_id"],
        TouchKind(p["touch_kind"]),
        p["touch_time_ms"],
        p["price_minor"],
    )


class SpeedLayer:
    """Ingests event batches and settles orders against Redis; safe to replay."""

    def __init__(
        self,
        redis: Redis,
        catalog: Catalog,
        settings: RealtimeSettings,
        dead_letters: DeadLetterSink,
        policy: AttributionPolicy | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.redis = redis
        self.catalog = catalog
        self.settings = settings
        self.policy = policy or AttributionPolicy(allowed_lateness_ms=settings.allowed_lateness_ms)
        self.dead_letters = dead_letters
        self.metrics = metrics or Metrics()
        self.keys = Keys(settings.key_prefix, settings.user_buckets, settings.budget_shards)
        self.lateness = self.policy.allowed_lateness_ms
        self.longest_window = self.policy.longest_window_ms(catalog)
        self.retention = self.longest_window + self.lateness
        self.watermark = 0
        self._heap: list[_Action] = []
        self._queued: set[tuple[int, int, str]] = set()
        self._scripts: dict[str, AsyncScript] = {}
        # Recent decision latencies (seconds), for benchmarks and the CLI's summary.
        self.latencies: deque[float] = deque(maxlen=200_000)
        self._day_cache: dict[int, str] = {}

    async def start(self) -> None:
        """Load the scripts and take back the orders and cancels left pending in Redis."""
        for name in ("ingest", "claim", "cancel", "charge", "refund"):
            script = self.redis.register_script(_script(name))
            await self.redis.script_load(script.script)
            self._scripts[name] = script
        await self._recover()

    async def _recover(self) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for bucket in range(self.keys.user_buckets):
                pipe.hgetall(self.keys.pending(bucket))
            results = await pipe.execute()
        recovered = 0
        for bucket, entries in enumerate(results):
            for fld, payload in entries.items():
                kind = "decide" if fld.startswith(b"o:") else "cancel"
                data = orjson.loads(payload)
                self._queue(bucket, kind, data)
                recovered += 1
        if recovered:
            log.info("recovered %d pending actions from Redis", recovered)

    def _queue(self, bucket: int, kind: str, data: dict[str, Any]) -> None:
        key = action_key(data["event_time"] + self.lateness, kind, data["order_id"])  # type: ignore[arg-type]
        if key not in self._queued:
            self._queued.add(key)
            heapq.heappush(self._heap, _Action(key, bucket, data))

    @property
    def pending(self) -> int:
        return len(self._heap)

    # ingestion -------------------------------------------------------------

    def _check(self, event: Impression | Click | PromoView) -> str | None:
        """Rules beyond the wire contract for a touch; returns the broken rule or None."""
        campaign = self.catalog.get(event.campaign_id)
        if campaign is None:
            return "is not a campaign of the catalog"
        if isinstance(event, PromoView) != (campaign.lever is Lever.PROMO):
            return f"is a {campaign.lever} campaign, which a {event.event_type} cannot touch"
        return None

    async def process(self, values: Iterable[Raw]) -> Settled:
        """Ingest one batch of raw events (one Lua call per user bucket), then settle what has come due."""
        dead: list[DeadLetter] = []
        accepted: Counter[str] = Counter()
        dead_fields: Counter[str] = Counter()
        ops, max_time = self._build(values, dead, accepted, dead_fields)
        max_time = max(max_time, self.watermark)
        if dead:
            await self.dead_letters.send_many(dead)
        duplicates: Counter[str] = Counter()
        ops_tags, results = await self._ingest(ops) if ops else ([], [])
        for (bucket, tags), res in zip(ops_tags, results, strict=True):
            for (kind, item), r in zip(tags, res, strict=True):
                if kind == "touch":
                    if r == 0:
                        duplicates[item] += 1
                elif r == 0:
                    duplicates["order" if kind == "decide" else "order_cancel"] += 1
                else:
                    self._queue(bucket, kind, item)
        m = self.metrics
        for name, n in accepted.items():
            m.events.labels(name).inc(n)
        for name, n in dead_fields.items():
            m.dead_letters.labels(name).inc(n)
        for name, n in duplicates.items():
            m.duplicates.labels(name).inc(n)
        return await self.advance(max_time)

    def _build(
        self, values: Iterable[Raw], dead: list[DeadLetter], accepted: Counter[str], dead_fields: Counter[str]
    ) -> tuple[dict[int, tuple[dict[str, int], list[Any], list[tuple[str, Any]]]], int]:
        """Parse and validate a batch into per-bucket script arguments."""
        ops: dict[int, tuple[dict[str, int], list[Any], list[tuple[str, Any]]]] = {}
        max_time = 0
        keys = self.keys
        day_cache = self._day_cache
        for raw in values:
            try:
                event = parse_event(raw)
            except InvalidEvent as exc:
                dead.append((raw, exc.as_dict()))
                dead_fields[exc.field] += 1
                continue
            etype = event.event_type
            if etype != "order" and etype != "order_cancel":
                broken = self._check(event)  # type: ignore[arg-type]  # a touch, by its type tag
                if broken is not None:
                    dead.append((raw, {"field": "campaign_id", "value": event.campaign_id, "rule": broken}))  # type: ignore[union-attr]
                    dead_fields["campaign_id"] += 1
                    continue
            accepted[etype] += 1
            t = event.event_time
            if t > max_time:
                max_time = t
            user = event.user_id
            bucket = keys.bucket(user)
            slot = ops.get(bucket)
            if slot is None:
                slot = ops[bucket] = ({}, [], [])
            index, args, tags = slot
            if etype == "order" or etype == "order_cancel":
                data: dict[str, Any] = {"order_id": event.order_id, "event_time": t, "user_id": user}  # type: ignore[union-attr]
                if isinstance(event, Order):
                    data.update(
                        event_id=event.event_id,
                        merchant_id=event.merchant_id,
                        amount_minor=event.amount_minor,
                        currency=event.currency,
                        promo_codes=list(event.promo_codes),
                    )
                    claim = _idx(index, keys.claim(bucket, event.order_id))
                    fld = f"o:{event.order_id}"
                    kind = "decide"
                else:
                    claim = 0
                    fld = f"x:{data['order_id']}"
                    kind = "cancel"
                pending = _idx(index, keys.pending(bucket))
                args.append(("p", claim, pending, fld, orjson.dumps(data).decode(), ""))
                tags.append((kind, data))
            else:
                cid = event.campaign_id  # type: ignore[union-attr]
                day_index = t // 86_400_000
                day = day_cache.get(day_index)
                if day is None:
                    day = day_cache[day_index] = utc_day(t)
                zkey = _idx(index, keys.touches(user))
                ckey = _idx(index, keys.counts(bucket, day))
                code = "c" if etype == "click" else "v"
                args.append(
                    ("t", zkey, ckey, f"{code}|{cid}|{event.event_id}", t, f"{cid}|{_COUNT_FIELD[etype]}")
                )
                tags.append(("touch", etype))
        return ops, max_time

    async def _ingest(
        self, ops: dict[int, tuple[dict[str, int], list[Any], list[tuple[str, Any]]]]
    ) -> tuple[list[Any], list[Any]]:
        script = self._scripts["ingest"]
        head = [self.retention, self.settings.counts_ttl_ms, self.watermark - self.retention]
        async with self.redis.pipeline(transaction=False) as pipe:
            for index, args, _ in ops.values():
                await script(keys=list(index), args=[*head, orjson.dumps(args)], client=pipe)
            results = await pipe.execute()
        return [(bucket, tags) for bucket, (_, _, tags) in ops.items()], results

    # settlement ------------------------------------------------------------

    async def advance(self, watermark_ms: int) -> Settled:
        """Move the watermark and settle every action that has come due."""
        if watermark_ms > self.watermark:
            self.watermark = watermark_ms
            self.metrics.watermark.set(watermark_ms)
        due: list[_Action] = []
        while self._heap and self._heap[0].key[0] <= self.watermark:
            action = heapq.heappop(self._heap)
            self._queued.discard(action.key)
            due.append(action)
        self.metrics.pending.set(len(self._heap))
        if not due:
            return Settled()
        return await self._settle(due)

    async def drain(self) -> Settled:
        """Settle everything still pending (the end of a replay)."""
        if not self._heap:
            return Settled()
        return await self.advance(max(a.key[0] for a in self._heap))

    async def _settle(self, due: Sequence[_Action]) -> Settled:
        started = time.perf_counter()
        out = Settled()
        # 1. touches of every order's user, within the longest window before the order
        orders = [a for a in due if a.key[1] == 0]
        decisions: dict[str, Decision | None] = {}
        if orders:
            async with self.redis.pipeline(transaction=False) as pipe:
                for a in orders:
                    t = a.payload["event_time"]
                    pipe.zrangebyscore(
                        self.keys.touches(a.payload["user_id"]), t - self.longest_window, t, withscores=True
                    )
                touch_sets = await pipe.execute()
            for a, members in zip(orders, touch_sets, strict=True):
                p = a.payload
                order = Order(
                    p["event_id"],
                    p["event_time"],
                    p["user_id"],
                    p["order_id"],
                    p["merchant_id"],
                    p["amount_minor"],
                    p["currency"],
                    tuple(p["promo_codes"]),
                )
                touches = []
                for member, score in members:
                    code, campaign_id, event_id = member.decode().split("|", 2)
                    touches.append(Touch(event_id, order.user_id, campaign_id, _CODE_KIND[code], int(score)))
                decisions[order.order_id] = attribute_order(order, touches, self.catalog, self.policy)
        # 2. claim decisions and apply cancels, in settlement order
        async with self.redis.pipeline(transaction=False) as pipe:
            for a in due:
                oid = a.payload["order_id"]
                keys = [
                    self.keys.claim(a.bucket, oid),
                    self.keys.cancel_marker(a.bucket, oid),
                    self.keys.pending(a.bucket),
                ]
                if a.key[1] == 0:
                    d = decisions[oid]
                    payload = orjson.dumps(decision_payload(d)) if d is not None else b""
                    await self._scripts["claim"](
                        keys=keys, args=[f"o:{oid}", payload, self.settings.decision_ttl_ms], client=pipe
                    )
                else:
                    await self._scripts["cancel"](
                        keys=keys, args=[f"x:{oid}", self.settings.decision_ttl_ms], client=pipe
                    )
            claims = await pipe.execute()
        # 3. charge or refund on the budget shards, in the same order
        async with self.redis.pipeline(transaction=False) as pipe:
            calls: list[str] = []
            for a, claim in zip(due, claims, strict=True):
                cancelled, raw_decision = claim.split(b"|", 1) if claim else (b"0", b"")
                if not raw_decision:  # organic order, or a cancel of one: nothing to settle
                    if a.key[1] == 0:
                        out.organic += 1
                        self.metrics.decisions.labels("organic").inc()
                    continue
                d = orjson.loads(raw_decision)
                campaign = self.catalog.get(d["campaign_id"])
                if campaign is None:
                    log.error(
                        "order %s: campaign %s left the catalog; not settled", d["order_id"], d["campaign_id"]
                    )
                    continue
                day = budget_day(d["order_time_ms"], campaign.budget.timezone).isoformat()
                cid = campaign.campaign_id
                keys = [
                    self.keys.charge(cid, d["order_id"]),
                    self.keys.spend_day(cid, day),
                    self.keys.spend_lifetime(cid),
                    self.keys.stats(cid, utc_day(d["order_time_ms"])),
                    self.keys.ledger(self.keys.shard(cid)),
                    self.keys.budget_events(self.keys.shard(cid)),
                ]
                dcap = campaign.budget.daily_minor if campaign.budget.daily_minor is not None else -1
                lcap = campaign.budget.lifetime_minor if campaign.budget.lifetime_minor is not None else -1
                if a.key[1] == 0:
                    mode = "cancelled" if cancelled == b"1" else "charge"
                    await self._scripts["charge"](
                        keys=keys,
                        args=[
                            mode,
                            d["order_id"],
                            cid,
                            d["price_minor"],
                            dcap,
                            lcap,
                            day,
                            d["amount_minor"],
                            self.settings.decision_ttl_ms,
                            self.settings.budget_events_maxlen,
                            a.key[0],
                            raw_decision,
                        ],
                        client=pipe,
                    )
                    calls.append("charge")
                else:
                    await self._scripts["refund"](
                        keys=keys,
                        args=[
                            cid,
                            dcap,
                            lcap,
                            d["amount_minor"],
                            self.settings.decision_ttl_ms,
                            self.settings.budget_events_maxlen,
                            a.key[0],
                            raw_decision,
                            day,
                        ],
                        client=pipe,
                    )
                    calls.append("refund")
            results = await pipe.execute() if calls else []
        elapsed = time.perf_counter() - started
        for call, res in zip(calls, results, strict=True):
            if call == "charge":
                out.decided += 1
                self.metrics.decisions.labels("attributed").inc()
                out.latencies_s.append(elapsed)
                self.latencies.append(elapsed)
                self.metrics.latency.observe(elapsed)
                if res[0] == 1:
                    out.charged += 1
                    self.metrics.charges.labels("capped" if res[2] else "charge").inc()
                    self.metrics.charged_minor.inc(res[1])
            elif res[0] == 1:
                out.refunded += 1
                self.metrics.charges.labels("refund").inc()
        return out


def _idx(index: dict[str, int], key: str) -> int:
    """1-based position of ``key`` in a script's KEYS, adding it on first use."""
    pos = index.get(key)
    if pos is None:
        pos = index[key] = len(index) + 1
    return pos
