"""The speed layer's core: ingest events into Redis, decide orders, settle them in one order.

Faust agents (``realtime.app``), the replay driver and tests call ``SpeedLayer``; it knows
nothing of Kafka. It takes records (topic-partition, offset, raw value) and, per batch:

1. ingest: one Lua call per user bucket (``codec.build`` prepares them): touches, pending
   orders and cancels, counters;
2. release every action whose release time the worker's watermark has passed, read the
   touches of the released orders and decide them with ``shared_logic.rules.judge_order`` (the
   billing rule with the invalid-traffic rules; a touch the list rules enforce on was never
   stored, ``codec.build``); the verdicts go to their day's hash with the checkpoint;
3. claim: one Lua call per user bucket records each decision once (the first claim wins);
4. settle: one Lua call per budget shard enqueues the released actions and charges, stops or
   refunds every queued action released before the settlement bound, in order;
5. checkpoint: each partition's next offset and watermark, after the effects above.

Time (the reasoning, README "Time"). Each partition's watermark is the greatest event time
processed from it; the worker's watermark is the minimum over its assigned partitions
(``realtime.clock``; only a partition at its end offset is idle, and only an idle one is
moved by the wall clock). Every event carries its partition's watermark at arrival. An
action (order or cancel) is released at ``R = max(event time + allowed lateness, arrival
watermark)`` once the release bound is strictly past ``R``; a touch may earn an order
released at ``R`` only if it arrived at a watermark ``<= R`` and is no older than ``R`` minus
its kind's retention (the longest window of its kind among the catalog's campaigns + lateness).

The release bound (``realtime.release``): under ``group`` (the default) it is the group's
watermark, the minimum over every partition of every input topic, this worker's own as they
stand and the others' as last checkpointed in Redis; under ``partition`` it is the worker's
own watermark, which is enough only when every producer puts a user's touches and orders in
the same partition numbers (keyed by ``user_id``, murmur2). Then:

- when an action is released, every touch it may use and every action with a smaller
  release key has been ingested, by this worker or another (touches live in Redis by user,
  not by partition): an event processed later, in any partition, arrives at a watermark
  already past ``R``. So each decision, and the order of releases, is a function of each
  partition's sequence of events, whatever the batching, the number of workers, the pace of
  the other partitions, the partitioner or key a producer used, or where a process died;
- touches older than the smallest release still possible minus their kind's retention can
  earn nothing and are trimmed; a touch arriving that far behind is not kept at all (behind its
  partition's watermark, or its bucket's trim floor: a replay by a worker that starts afresh);
- budget shards are shared by every worker, so settlement waits for the settlement bound:
  the minimum over every partition of the release bound its owner had reached when it last
  checkpointed it (a worker enqueues every action released below its release bound before
  checkpointing). The queue is scored by release time, so charges run in one global order
  (caps bind the same way) however many workers there are. Under ``group`` release this costs
  one more round of checkpoints (a timer tick, ``realtime.timer_interval_s``, when idle)
  between an order's release and its charge.

Every step is idempotent (first-writer-wins claims, charge records, ``ZADD``-new touches,
checkpoints written after effects), so a worker killed anywhere and restarted, or a
partition moved to another worker, charges every order once.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import orjson

from realtime import codec
from realtime.clock import TP, Clocks, tp_name
from realtime.deadletters import DeadLetterSink
from realtime.keys import Keys, ensure_layout
from realtime.metrics import Metrics
from realtime.pacing import Pacer
from realtime.routing import UserPartitions
from realtime.schedule import Action, ActionQueue
from realtime.scripts import Scripts
from shared_logic import AttributionPolicy, Catalog, Decision, InvalidEvent, budget_day
from shared_logic.contract import (
    CLAIM_OPS,
    CLAIM_SUPERSEDED,
    TOUCH_CODES,
    Checkpoint,
    IngestStatus,
    IvtRow,
    SettleStatus,
    cap_arg,
    ivt_field,
    ivt_order_row,
    parse_claim,
    parse_pending_record,
    pending_field,
    pending_kind,
    queue_member,
    settle_payload,
)
from shared_logic.identity import ORDER_CONFLICT_RULE, TOUCH_CONFLICT_RULE, stands
from shared_logic.ivt import GivtLists
from shared_logic.money import MAX_COUNTER_MINOR
from shared_logic.rules import judge_order, touch_retention_ms
from shared_logic.settings import Settings
from shared_logic.settlement import ActionKind, cancel_counts, cancel_window
from shared_logic.timeutil import MS_PER_DAY, utc_day

log = logging.getLogger(__name__)

DEFAULT_SOURCE: TP = ("events", 0)
# A release bound past every real event time: the end of a replay settles everything.
END_OF_TIME = MAX_COUNTER_MINOR
SETTLE_LIMIT = 20_000
SUPERSEDED = CLAIM_SUPERSEDED.encode()


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


@dataclass(slots=True)
class Settled:
    """What one step did (for callers and benchmarks)."""

    decided: int = 0
    organic: int = 0
    charged: int = 0
    refunded: int = 0
    refused: int = 0
    latencies_s: list[float] = field(default_factory=list)


class SpeedLayer:
    """Ingests record batches and settles orders against Redis; safe to replay and to share.

    ``sources`` is every topic-partition of the input (those of all workers): the settlement
    bound is the minimum over them.
    """

    def __init__(
        self,
        redis: Any,
        catalog: Catalog,
        settings: Settings,
        dead_letters: DeadLetterSink,
        policy: AttributionPolicy | None = None,
        metrics: Metrics | None = None,
        sources: Sequence[TP] | None = None,
        clock: Callable[[], int] = wall_clock_ms,
        source: TP = DEFAULT_SOURCE,
        givt: GivtLists | None = None,
    ) -> None:
        self.redis = redis
        self.catalog = catalog
        self.settings = settings
        self.config = settings.realtime
        self.policy = policy or settings.rules.policy()
        if givt is None:
            from storage.ivt_lists import load_givt_lists

            givt = load_givt_lists(settings.rules)
        self.givt = givt
        self._ivt: list[IvtRow] = []  # verdicts to record with the next checkpoint
        self.dead_letters = dead_letters
        self.metrics = metrics or Metrics()
        self.keys = Keys.of(settings.keys)
        self.lateness = self.policy.allowed_lateness_ms
        self.longest_window = self.policy.longest_window_ms(catalog)
        self.lookback_days = self.policy.lookback_days(catalog)
        self.retention = self.longest_window + self.lateness
        # How long a touch of each kind is kept (``realtime.touch_retention``): the longest window
        # of its kind among the catalog's campaigns plus the lateness, or the longest of all.
        self.retention_of = touch_retention_ms(
            self.policy, catalog, self.config.touch_retention == "per_kind"
        )
        self._retention_arg = orjson.dumps({TOUCH_CODES[k]: ms for k, ms in self.retention_of.items()})
        self.source = source  # where ``process(values)`` reads values from
        self.sources = [tp_name(tp) for tp in (sources if sources is not None else [source])]
        self.clock = clock
        self.clocks = Clocks()
        self.queue = ActionQueue(self.lateness)
        self.group_release = self.config.release == "group"
        # Events outside their user's partition are counted when the sources are the input topics'
        # partitions (a worker, a replay), not a single stream of values (``process``).
        self.user_partitions = UserPartitions(self.config.topic_partitions) if sources is not None else None
        self.scripts = Scripts()
        self.watermark = 0  # the release bound: actions released below it are decided
        self.settle_bound = 0  # every worker has enqueued what it released below it
        # Recent decision latencies (seconds, release to charge), for benchmarks and the CLI's summary.
        self.latencies: deque[float] = deque(maxlen=200_000)
        self._released_at: dict[str, float] = {}
        self._day_cache: dict[int, str] = {}
        self._published: dict[str, str] = {}
        self.pacer = Pacer(redis, catalog, self.keys, settings, self.policy)  # frequency caps, pacing

    async def start(self) -> None:
        """Refuse a Redis of another key layout (``ensure_layout``), load the scripts (partitions
        are assigned by the source: ``assign``, or implicitly)."""
        await ensure_layout(self.redis, self.keys)
        await self.scripts.load(self.redis)

    # partitions ------------------------------------------------------------

    async def assign(
        self,
        tps: Iterable[TP],
        restore: bool = True,
        ends: dict[TP, int] | None = None,
        positions: dict[TP, int] | None = None,
    ) -> dict[TP, int]:
        """Take partitions over: their checkpointed offset and watermark (``restore``; without a
        checkpoint, the source's position and no watermark), and the orders and cancels of theirs
        still pending in Redis. Returns the offset to resume each at."""
        tps = list(tps)
        names = [tp_name(tp) for tp in tps]
        saved = await self.redis.hmget(self.keys.clocks(), names) if restore and names else [None] * len(tps)
        out: dict[TP, int] = {}
        for tp, raw in zip(tps, saved, strict=True):
            state = Checkpoint.parse(raw) if raw else Checkpoint((positions or {}).get(tp, 0), 0)
            clock = self.clocks.assign(tp, state.offset, state.watermark)
            if ends is not None and tp in ends:
                clock.end_offset = ends[tp]
            out[tp] = state.offset
        await self._recover(set(names))
        return out

    async def revoke(self, tps: Iterable[TP]) -> None:
        """Give partitions up: forget their clocks and their pending actions (their new owner
        recovers the actions from Redis, where they stay until enqueued for settlement)."""
        tps = list(tps)
        dropped = self.queue.drop(tp_name(tp) for tp in tps)
        self.clocks.revoke(tps)
        for tp in tps:
            self._published.pop(tp_name(tp), None)
        if dropped:
            log.info("revoked %d partitions; %d pending actions left to their new owner", len(tps), dropped)

    def set_end(self, tp: TP, end_offset: int) -> None:
        self.clocks.set_end(tp, end_offset)

    def rewind_lost_log(self, tp: TP, end_offset: int) -> None:
        """The broker's log of ``tp`` ends (at ``end_offset``) before this partition's next offset:
        it lost records the engine had applied, or the topic was recreated. Which of the records it
        holds now are new cannot be told from offsets, so every record from the log's start is
        taken in (the source reads from there): one applied before is known by the identity rule
        and changes nothing (a touch is known, an order claimed), a new one is applied. The
        watermark is kept (time never goes back). Without this, the redelivery check would skip
        every new record until the log passed the old offset again."""
        clock = self.clocks.parts[tp]
        log.error(
            "%s: next offset %d but the log ends at %d: the broker lost records already applied, "
            "or the topic was recreated; taking the log in from its start (records applied before "
            "change nothing)",
            tp_name(tp),
            clock.next_offset,
            end_offset,
        )
        self.metrics.log_lost.labels(topic=tp[0], partition=str(tp[1])).inc()
        clock.next_offset = 0

    async def _recover(self, names: set[str]) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for bucket in range(self.keys.user_buckets):
                pipe.hgetall(self.keys.pending(bucket))
            results = await pipe.execute()
        recovered = 0
        renamed: list[tuple[int, bytes, str, bytes]] = []
        for bucket, entries in enumerate(results):
            for name, record in entries.items():
                data = orjson.loads(parse_pending_record(record)[1])
                if data.get("tp", self.sources[0]) in names:
                    kind = cast(ActionKind, pending_kind(name.decode()))
                    self.queue.push(bucket, kind, data)
                    recovered += 1
                    field = pending_field(kind, data["order_id"], data["dg"])
                    if name.decode() != field:  # a cancel pending under an earlier worker's field
                        renamed.append((bucket, name, field, record))
        if renamed:  # under the field its release removes (``_checkpoint``)
            async with self.redis.pipeline(transaction=False) as pipe:
                for bucket, old, new, record in renamed:
                    pipe.hset(self.keys.pending(bucket), new, record)
                    pipe.hdel(self.keys.pending(bucket), old)
                await pipe.execute()
        if recovered:
            log.info("recovered %d pending actions from Redis", recovered)

    @property
    def pending(self) -> int:
        return len(self.queue)

    # processing ------------------------------------------------------------

    async def process(self, values: Iterable[Any]) -> Settled:
        """One batch of raw values from this engine's own source (offsets follow on)."""
        clock = self.clocks.parts.get(self.source) or self.clocks.assign(self.source)
        start = clock.next_offset
        return await self.process_records([(self.source, start + i, v, None) for i, v in enumerate(values)])

    async def process_records(self, records: Iterable[codec.Record]) -> Settled:
        """Ingest one batch of records, then release, decide, claim, settle and checkpoint."""
        now = self.clock()
        # No order still to be released anywhere (any worker's, any partition's) has a release time
        # below the settlement bound, nor below this worker's first pending release.
        low = self.settle_bound
        trim_bound = min(low, self.queue.first_release_ms() or low)  # minus each kind's retention
        ctx = codec.BuildContext(
            self.catalog,
            self.keys,
            self.retention_of,
            self.settings.rules.max_future_ms,
            now,
            self.user_partitions,
            self.policy.ivt,
            self.givt,
        )
        taken = list(records)
        full = len(taken) >= self.settings.realtime.batch_size  # the source had more waiting
        batch = codec.build(taken, ctx, self.clocks, self._day_cache)
        results, published = await self._ingest(batch, trim_bound)
        duplicates: Counter[str] = Counter()
        conflicts: list[tuple[Any, Any]] = []  # (item, the copy standing)
        for (bucket, ops), res in zip(batch.ops.items(), results, strict=True):
            if isinstance(res, Exception):
                # Only a counter that would pass 2^53 - 1 refuses a call, before any write.
                for _kind, item in ops.tags:
                    batch.dead.append(
                        (item.raw, {"field": "<bucket>", "value": str(bucket), "rule": str(res)})
                    )
                    batch.dead_fields["<bucket>"] += 1
                continue
            for (_kind, item), r in zip(ops.tags, res, strict=True):
                self._ingested(item, r, batch, duplicates, conflicts)
                if isinstance(item, codec.TouchItem):
                    self.pacer.observe(item, r)
        rounds = 0
        while conflicts:  # the identity rule: which copy stands (rare: only conflicting copies)
            rounds += 1
            if rounds > 16:
                raise RuntimeError("copies of an event kept changing under the identity rule")
            conflicts = await self._resolve(conflicts, batch, trim_bound, duplicates)
        if batch.dead:
            await self.dead_letters.send_many(batch.dead)
        m = self.metrics
        for name, n in batch.accepted.items():
            m.events.labels(name).inc(n)
        for name, n in batch.dead_fields.items():
            m.dead_letters.labels(name).inc(n)
        for name, n in duplicates.items():
            m.duplicates.labels(name).inc(n)
        for topic, n in batch.misrouted.items():
            m.misrouted.labels(topic).inc(n)
        if batch.too_late:
            m.too_late.inc(batch.too_late)
        self._verdicts(batch.ivt)
        return await self._step(now, published, full)

    async def tick(self) -> Settled:
        """Live mode, on a timer: the wall clock moves idle partitions, then what came due settles."""
        published = await self._published_watermarks()
        return await self._step(self.clock(), published)

    async def drain(self) -> Settled:
        """The end of a replay: every partition at the end of time, everything released and settled."""
        for clock in self.clocks.parts.values():
            clock.watermark = END_OF_TIME
        published = await self._published_watermarks()
        return await self._step(self.clock(), published)

    def _ingested(
        self,
        item: codec.TouchItem | codec.PendingItem,
        r: Any,
        batch: codec.Batch,
        duplicates: Counter[str],
        conflicts: list[tuple[Any, Any]],
    ) -> None:
        """What the ingest script answered for one item (``IngestStatus``, or the standing copy)."""
        if isinstance(r, (list, bytes)):
            conflicts.append((item, r))
        elif isinstance(item, codec.TouchItem):
            if r == IngestStatus.KNOWN:
                duplicates[item.event_type] += 1
            elif r == IngestStatus.TOO_LATE:
                batch.too_late += 1
        elif r in (IngestStatus.KNOWN, IngestStatus.PENDING):
            duplicates["order" if item.kind == "decide" else "order_cancel"] += 1
        elif r == IngestStatus.CONFLICT_DECIDED:
            _refuse(batch, item.raw, "order_id", item.data["order_id"], ORDER_CONFLICT_RULE)
        else:
            self.queue.push(item.bucket, cast(ActionKind, item.kind), item.data)

    async def _resolve(
        self, conflicts: list[tuple[Any, Any]], batch: codec.Batch, trim_bound: int, duplicates: Counter[str]
    ) -> list[tuple[Any, Any]]:
        """One round of the identity rule (``shared_logic.identity``) over conflicting copies:
        the copy of least rank stands. A new copy that ranks lower replaces the standing one (the
        ingest script's replace ops move its touch and count, or its pending order) and the
        displaced copy is refused; otherwise the new copy is. A replace that finds another copy
        standing by then (another worker's) is ingested again; returns the conflicts that gives."""
        calls: dict[int, codec.BucketOps] = {}
        displaced: list[Any] = []
        for item, standing in conflicts:
            new, old, old_copy = codec.standing_rank(item, standing)
            if not stands(new, old):
                _refuse_copy(batch, item, item.raw)
                continue
            ops = calls.get(item.bucket) or calls.setdefault(item.bucket, codec.BucketOps())
            codec.replace_op(ops, self.keys, item, standing, self.catalog)
            displaced.append(old_copy)
        if not calls:
            return []
        results = _raise_first(await self._run_ingest(calls, trim_bound))
        again: dict[int, codec.BucketOps] = {}
        i = 0
        for ops, res in zip(calls.values(), results, strict=True):
            for (_tag, item), r in zip(ops.tags, res, strict=True):
                old_copy = displaced[i]
                i += 1
                if r == IngestStatus.REPLACED:
                    _refuse_copy(batch, item, old_copy)
                    if isinstance(item, codec.PendingItem):
                        self.queue.replace(item.bucket, "decide", item.data)
                else:  # another copy stands by now: look again
                    codec.add_op(
                        again.get(item.bucket) or again.setdefault(item.bucket, codec.BucketOps()),
                        self.keys,
                        item,
                    )
        out: list[tuple[Any, Any]] = []
        if again:
            for ops, res in zip(
                again.values(), _raise_first(await self._run_ingest(again, trim_bound)), strict=True
            ):
                for (_tag, item), r in zip(ops.tags, res, strict=True):
                    self._ingested(item, r, batch, duplicates, out)
        return out

    def _ingest_calls(self, calls: dict[int, codec.BucketOps], trim_bound: int) -> list[Any]:
        """One ingest call per bucket: its keys and the bucket's trim floor last; each touch kind's
        retention, the counts' TTL and the trim base (each kind trims at it minus its retention)."""
        head = [self._retention_arg, self.config.counts_ttl_ms, trim_bound]
        return [
            ("ingest", [*ops.index, self.keys.trim_floor(bucket)], [*head, orjson.dumps(ops.args)])
            for bucket, ops in calls.items()
        ]

    async def _run_ingest(self, calls: dict[int, codec.BucketOps], trim_bound: int) -> list[Any]:
        return await self.scripts.run(self.redis, self._ingest_calls(calls, trim_bound))

    async def _ingest(self, batch: codec.Batch, trim_bound: int) -> tuple[list[Any], dict[str, Checkpoint]]:
        calls = self._ingest_calls(batch.ops, trim_bound)
        results = await self.scripts.run(self.redis, calls, tail=[("HGETALL", self.keys.clocks())])
        return results[:-1], _checkpoints(results[-1])

    async def _published_watermarks(self) -> dict[str, Checkpoint]:
        return _checkpoints(await self.redis.hgetall(self.keys.clocks()))

    # release, decide, claim, settle -------------------------------------------

    async def _step(self, now: int, published: dict[str, Checkpoint], full_batch: bool = False) -> Settled:
        self.clocks.tick(now)
        own = {tp_name(tp): c.watermark for tp, c in self.clocks.parts.items()}
        # The worker's watermark: the minimum over the partitions held now. It goes down when a
        # partition with lag is taken over (a rebalance), and nothing of that partition may be
        # released until it catches up.
        local = self.clocks.watermark() or 0
        self.metrics.watermark.set(local)
        if self.group_release:
            # Released on the group's watermark (every partition of every input topic, the others'
            # as last checkpointed): each touch an order may use is in Redis, whichever partition
            # and worker it came through, so producers may partition and key as they like.
            release_bound = min((own.get(n, _wm(published.get(n))) for n in self.sources), default=0)
        else:
            release_bound = local
        self.watermark = release_bound
        released = self.queue.pop_released(release_bound)
        out = Settled()
        started = time.perf_counter()
        shard_actions: dict[int, list[list[Any]]] = {}
        if released:
            decisions = await self._decide([a for a in released if a.kind == "decide"])
            claims = await self._claim(released, decisions)
            # An order another copy superseded (the identity rule) is decided by that copy's
            # release; its pending record is the other copy's now, so it is not cleared.
            kept = [(a, c) for a, c in zip(released, claims, strict=True) if c != SUPERSEDED]
            released = [a for a, _ in kept]
            for a, claim in kept:
                entry = self._settlement_entry(a, claim, out)
                if entry is not None:
                    shard, item = entry
                    shard_actions.setdefault(shard, []).append(item)
                    self._released_at[item[1] + "@" + str(shard)] = started
            if len(self._released_at) > 200_000:  # actions another worker settled: forget their start
                self._released_at.clear()
        # Settlement waits until every owner has enqueued what it released: the minimum over the
        # partitions of the release bound their owner had reached when it last checkpointed them
        # (this worker's own: the bound it has just enqueued up to).
        bound = min(
            (release_bound if n in own else _released(published.get(n)) for n in self.sources), default=0
        )
        self.metrics.settle_bound.set(bound)
        self.settle_bound = bound
        await self._settle(shard_actions, bound, out)
        await self._checkpoint(released)
        await self.pacer.run(local, END_OF_TIME, full_batch)
        self.metrics.pending.set(len(self.queue))
        for tp, c in self.clocks.parts.items():
            labels = (tp[0], str(tp[1]))
            self.metrics.partition_watermark.labels(*labels).set(c.watermark)
            if c.lag is not None:
                self.metrics.lag.labels(*labels).set(c.lag)
        return out

    async def _decide(self, orders: Sequence[Action]) -> dict[str, Decision | None]:
        """The billing rule for each released order, over the touches it may use."""
        if not orders:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for a in orders:
                t = a.payload["event_time"]
                low = max(t - self.longest_window, a.release_ms - self.retention)
                pipe.zrangebyscore(self.keys.touches(a.payload["user_id"]), low, t, withscores=True)
            touch_sets = await pipe.execute()
        decisions: dict[str, Decision | None] = {}
        verdicts: list[IvtRow] = []
        for a, members in zip(orders, touch_sets, strict=True):
            order = codec.order_of(a.payload)
            touches = codec.touches_of(members, order.user_id, a.release_ms, self.retention_of)
            judged = judge_order(order, touches, self.catalog, self.policy)
            decisions[order.order_id] = judged.decision
            if judged.verdict is not None:
                verdicts.append(ivt_order_row(order.user_id, judged.verdict))
        self._verdicts(verdicts)
        return decisions

    def _verdicts(self, rows: list[IvtRow]) -> None:
        """Count invalid-traffic verdicts and keep them for the next checkpoint, which records them
        in their day's hash before the offsets that produced them (a replay writes them again)."""
        for row in rows:
            self.metrics.ivt_verdicts.labels(row.scope, row.campaign_id, row.reason, row.outcome).inc()
            if row.avoided_minor:
                self.metrics.ivt_avoided_minor.labels(row.campaign_id, row.currency or "").inc(
                    row.avoided_minor
                )
        self._ivt.extend(rows)

    async def _claim(self, released: Sequence[Action], decisions: dict[str, Decision | None]) -> list[bytes]:
        """Claim decisions and apply cancels, one call per user bucket, in settlement order."""
        calls: dict[int, codec.BucketOps] = {}
        where: list[tuple[int, int]] = []
        for a in released:
            oid = a.payload["order_id"]
            ops = calls.get(a.bucket) or calls.setdefault(a.bucket, codec.BucketOps())
            claim_key = ops.key(self.keys.claim(a.bucket, oid))
            marker_key = ops.key(self.keys.cancel_marker(a.bucket, oid))
            if a.kind == "decide":
                d = decisions[oid]
                payload = codec.encode_decision(d).decode() if d is not None else ""
                lo, hi = self._cancel_window(a.payload["event_time"])
                pending_key = ops.key(self.keys.pending(a.bucket))
                ops.args.append(
                    (
                        CLAIM_OPS["decide"],
                        claim_key,
                        marker_key,
                        payload,
                        lo,
                        hi,
                        pending_key,
                        pending_field("decide", oid),
                        a.payload["dg"],
                    )
                )
            else:
                ops.args.append((CLAIM_OPS["cancel"], claim_key, marker_key, "", a.payload["event_time"]))
            where.append((a.bucket, len(ops.args) - 1))
        ttl = self.settings.decision_ttl_ms
        claim_calls = [("claim", list(ops.index), [ttl, orjson.dumps(ops.args)]) for ops in calls.values()]
        results = _raise_first(await self.scripts.run(self.redis, claim_calls))
        by_bucket = dict(zip(calls, results, strict=True))
        return [by_bucket[bucket][i] for bucket, i in where]

    def _cancel_window(self, order_time_ms: int) -> tuple[int, int]:
        """The cancel times ``[lo, hi)`` that may settle an order at ``order_time_ms``
        (``shared_logic.settlement.cancel_window``, the rule the batch layer applies)."""
        return cancel_window(order_time_ms, self.lookback_days, self.policy.cancel_horizon_days)

    def _settlement_entry(self, a: Action, claim: bytes, out: Settled) -> tuple[int, list[Any]] | None:
        """What the budget shard must do for one released action, or None (organic, a cancel outside
        its order's window: nothing to settle)."""
        cancelled, _digest, raw_decision = parse_claim(claim) if claim else (False, "", b"")
        if not raw_decision:
            if a.kind == "decide":
                out.organic += 1
                self.metrics.decisions.labels("organic").inc()
            return None
        d = codec.decode_decision(raw_decision)
        if a.kind != "decide":
            horizon = self.policy.cancel_horizon_days
            if not cancel_counts(d.order_time_ms, a.payload["event_time"], self.lookback_days, horizon):
                self.metrics.cancels_outside.inc()
                return None
        campaign = self.catalog.get(d.campaign_id)
        if campaign is None:
            log.error("order %s: campaign %s left the catalog; not settled", d.order_id, d.campaign_id)
            return None
        if a.kind == "decide":
            out.decided += 1
            self.metrics.decisions.labels("attributed").inc()
        cid = campaign.campaign_id
        day = budget_day(d.order_time_ms, campaign.budget.timezone).isoformat()
        payload = settle_payload(
            m=("cancelled" if cancelled else "charge") if a.kind == "decide" else "refund",
            cid=cid,
            price=d.price_minor,
            dcap=cap_arg(campaign.budget.daily_minor),
            lcap=cap_arg(campaign.budget.lifetime_minor),
            day=day,
            amount=d.amount_minor,
            ch=self.keys.charge(cid, d.order_id),
            sd=self.keys.spend_day(cid, day),
            sl=self.keys.spend_lifetime(cid),
            st=self.keys.stats(cid, utc_day(d.order_time_ms)),
            d=raw_decision.decode(),
        )
        return self.keys.shard(cid), [
            a.release_ms,
            queue_member(a.kind, d.order_id),
            orjson.dumps(payload).decode(),
        ]

    async def _settle(self, shard_actions: dict[int, list[list[Any]]], bound: int, out: Settled) -> None:
        """One call per budget shard: enqueue, then settle everything released below ``bound``."""
        cfg = self.config
        shards = range(self.keys.budget_shards)
        calls = [
            (
                "settle",
                [
                    self.keys.queue(shard),
                    self.keys.queue_payloads(shard),
                    self.keys.ledger(shard),
                    self.keys.budget_events(shard),
                ],
                [
                    bound,
                    SETTLE_LIMIT,
                    self.settings.decision_ttl_ms,
                    cfg.budget_events_maxlen,
                    orjson.dumps(shard_actions.get(shard, [])),
                ],
            )
            for shard in shards
        ]
        results = _raise_first(await self.scripts.run(self.redis, calls))
        done = time.perf_counter()
        refused = []
        for shard, rows in zip(shards, results, strict=True):
            for member, status, charge, capped, *_ in rows:
                key = (member.decode() if isinstance(member, bytes) else member) + "@" + str(shard)
                released_at = self._released_at.pop(key, None)
                if released_at is not None and status in (SettleStatus.CHARGED, SettleStatus.STOPPED):
                    elapsed = done - released_at
                    out.latencies_s.append(elapsed)
                    self.latencies.append(elapsed)
                    self.metrics.latency.observe(elapsed)
                if status == SettleStatus.CHARGED:
                    out.charged += 1
                    self.metrics.charges.labels("capped" if capped else "charge").inc()
                    self.metrics.charged_minor.inc(int(charge))
                elif status == SettleStatus.REFUNDED:
                    out.refunded += 1
                    self.metrics.charges.labels("refund").inc()
                elif status == SettleStatus.REFUSED:
                    out.refused += 1
                    self.metrics.refused.inc()
                    refused.append(
                        (member, {"field": "charge", "value": key, "rule": "a counter would pass 2^53 - 1"})
                    )
        if refused:
            await self.dead_letters.send_many(refused)

    async def _checkpoint(self, released: Sequence[Action]) -> None:
        """After the effects: released actions leave the pending hashes, and each partition's
        next offset and watermark are checkpointed (what the settlement bound and a new owner read)."""
        state = {
            tp_name(tp): Checkpoint(c.next_offset, c.watermark, self.watermark).encode()
            for tp, c in self.clocks.parts.items()
        }
        changed = {k: v for k, v in state.items() if self._published.get(k) != v}
        if not released and not changed and not self._ivt:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            if self._ivt:
                by_day: dict[str, dict[str, bytes]] = {}
                for row in self._ivt:
                    day = self._day_cache.get(row.time_ms // MS_PER_DAY) or utc_day(row.time_ms)
                    by_day.setdefault(day, {})[ivt_field(row)] = orjson.dumps(row)
                for day, verdicts in by_day.items():
                    pipe.hset(self.keys.ivt(day), mapping=verdicts)
                    pipe.pexpire(self.keys.ivt(day), self.config.counts_ttl_ms)
            by_bucket: dict[int, list[str]] = {}
            for a in released:
                by_bucket.setdefault(a.bucket, []).append(
                    pending_field(a.kind, a.payload["order_id"], a.payload["dg"])
                )
            for bucket, fields in by_bucket.items():
                pipe.hdel(self.keys.pending(bucket), *fields)
            if changed:
                pipe.hset(self.keys.clocks(), mapping=changed)
            await pipe.execute()
        self._ivt.clear()
        self._published.update(changed)


def _refuse(batch: codec.Batch, raw: Any, name: str, value: str, rule: str) -> None:
    batch.dead.append((raw, InvalidEvent(name, value, rule).as_dict()))
    batch.dead_fields[name] += 1


def _refuse_copy(batch: codec.Batch, item: codec.TouchItem | codec.PendingItem, copy: Any) -> None:
    """Refuse a copy the identity rule does not keep (``copy``: the new one's raw value, or the
    displaced one's stored form)."""
    if isinstance(item, codec.TouchItem):
        _refuse(batch, copy, "event_id", item.event_id, TOUCH_CONFLICT_RULE)
    else:
        _refuse(batch, copy, "order_id", item.data["order_id"], ORDER_CONFLICT_RULE)


def _raise_first(results: list[Any]) -> list[Any]:
    """Claims and settlements never fail for one bucket alone (only the server can fail them): raise."""
    for r in results:
        if isinstance(r, Exception):
            raise r
    return results


def _checkpoints(raw: dict[bytes, bytes]) -> dict[str, Checkpoint]:
    """Checkpointed partitions by name."""
    return {k.decode(): Checkpoint.parse(v) for k, v in (raw or {}).items()}


def _wm(state: Checkpoint | None) -> int:
    return state.watermark if state is not None else 0


def _released(state: Checkpoint | None) -> int:
    return state.released if state is not None else 0
