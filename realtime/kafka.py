"""The speed layer's worker on Kafka: an aiokafka consumer group feeding ``SpeedLayer``.

Why not a Faust agent here (the in-memory agents are Faust's): measured on this project's
2-core machine with the broker beside it, Faust's per-message dispatch caps one worker at
about 21k messages/s with no work at all, while aiokafka's ``getmany`` (the client underneath
Faust) delivers over 400k/s; and the worker needs what Faust hides: the records' partitions
and offsets, seeking a partition to its checkpoint in Redis when it is assigned, committing
offsets only after the Lua calls for their events returned, the end offset of every
partition (a partition is idle only at its end), and pausing a partition.

- Partitions are assigned with the Range assignor: a worker gets the same partition numbers of
  all five topics (they have the same partition count and are keyed by user), so a user's
  touches and orders meet in one worker.
- On assignment the worker takes each partition's checkpoint (offset and watermark) from Redis
  and seeks there, and recovers the partition's pending orders; on revocation it finishes the
  batch in hand, commits, and forgets the partition's pending orders (they stay in Redis for
  the new owner).
- Offsets are committed after each batch's effects, so a worker killed between the Lua calls
  and the commit is redelivered events whose effects are already there: they change nothing.
- Every ``realtime.ledger_flush_interval_s`` (and when it stops) a worker moves the ledger
  streams to ``realtime_ledger/`` in the lake (``realtime.ledger.LedgerFlusher``: every worker
  flushes every shard, and each entry lands once however they race).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener

from realtime import broker
from realtime.broker import ensure_topics, group_consumer, input_topics, serve
from realtime.client import connect
from realtime.clock import TP
from realtime.codec import Record
from realtime.deadletters import DEAD_LETTERS, DeadLetterSink
from realtime.engine import SpeedLayer
from realtime.fetching import UNDECODABLE_FIELD, Fetcher
from realtime.footprint import export, sample
from realtime.keys import Keys
from realtime.ledger import LedgerFlusher
from realtime.metrics import Metrics
from shared_logic import Catalog
from shared_logic.settings import Settings
from storage import Lake, open_lake

log = logging.getLogger(__name__)


class KafkaWorker:
    """One member of the speed layer's consumer group."""

    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        redis: Any = None,
        dead_letters: DeadLetterSink | None = None,
        metrics: Metrics | None = None,
        lake: Lake | None = None,
    ) -> None:
        self.settings = settings
        self.config = settings.realtime
        self.redis = redis or connect(settings.redis)
        flushing = self.config.ledger_flush_interval_s > 0
        self.lake = lake or (open_lake(settings.lake.url, settings.s3) if flushing else None)
        self.flusher = (
            LedgerFlusher(self.redis, Keys.of(settings.keys), self.lake) if self.lake is not None else None
        )
        self.metrics = metrics or Metrics()
        self.sources: list[TP] = [
            (topic, p) for topic in input_topics(self.config) for p in range(self.config.topic_partitions)
        ]
        self._dead_letters = dead_letters
        self.catalog = catalog
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.engine: SpeedLayer | None = None
        self.lock = asyncio.Lock()  # a batch and a rebalance never interleave
        self.stopping = asyncio.Event()
        self.processed = 0
        self._paused: set[str] = set()

    async def start(self) -> None:
        cfg = self.config
        await ensure_topics(cfg)
        dead = self._dead_letters
        if dead is None:
            url = cfg.dead_letters_url or "kafka://"
            if url.startswith("kafka"):
                self.producer = broker.producer(cfg, linger_ms=5)
                await self.producer.start()
            dead = DEAD_LETTERS.open(
                url,
                redis=self.redis,
                keys=Keys.of(self.settings.keys),
                settings=self.settings,
                producer=self.producer,
                topic=cfg.topic("dead_letters"),
            )
        self.engine = SpeedLayer(
            self.redis, self.catalog, self.settings, dead, metrics=self.metrics, sources=self.sources
        )
        await self.engine.start()
        self.consumer = group_consumer(cfg, cfg.app_id, cfg.batch_size)
        self.consumer.subscribe(input_topics(cfg), listener=_Listener(self))
        await self.consumer.start()

    async def run(self) -> None:
        """Consume until ``stop()`` (or SIGTERM/SIGINT when run by ``main``)."""
        consumer, engine = self.consumer, self.engine
        assert consumer is not None, "start() first"
        assert engine is not None, "start() first"
        flushing = asyncio.create_task(self._flush_loop())
        sampling = asyncio.create_task(self._footprint_loop())
        try:
            await self._consume(consumer, engine)
        except BaseException:
            flushing.cancel()  # dying, not stopping: the next flusher takes the ledger over
            with contextlib.suppress(asyncio.CancelledError):
                await flushing
            raise
        else:
            await flushing  # stopping: one last flush of what this worker settled
        finally:
            sampling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampling
            await self._close()

    async def _footprint_loop(self) -> None:
        """Sample Redis memory by record kind for ``/metrics`` every ``memory_sample_interval_s``
        (``realtime.footprint``); a failed sample is logged and tried again at the next tick."""
        interval = self.config.memory_sample_interval_s
        if interval <= 0:
            return
        keys = Keys.of(self.settings.keys)
        while not self.stopping.is_set():
            try:
                export(await sample(self.redis, keys, self.config.memory_sample_keys), self.metrics)
            except Exception as exc:
                log.warning("Redis memory sample failed (%s: %s)", type(exc).__name__, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), interval)

    async def _consume(self, consumer: AIOKafkaConsumer, engine: SpeedLayer) -> None:
        cfg = self.config

        def next_offset(tp: TopicPartition) -> int | None:
            clock = engine.clocks.parts.get((tp.topic, tp.partition))
            return None if clock is None else clock.next_offset

        # A batch it cannot decode is dead-lettered and skipped, or stops its partition (realtime.fetching).
        fetcher = Fetcher(consumer, cfg, self.metrics.undecodable, next_offset, self.lock)
        last_tick = time.monotonic()
        while not self.stopping.is_set():
            fetched = await fetcher.getmany(
                timeout_ms=int(cfg.batch_within_s * 1000), max_records=cfg.batch_size
            )
            async with self.lock:
                held = consumer.assignment()
                records: list[Record] = []
                for tp, rows in fetched.records.items():
                    if tp in held:
                        key = (tp.topic, tp.partition)
                        records += [(key, r.offset, r.value, r.timestamp) for r in rows]
                skipped = [bad for bad in fetched.skipped if bad.tp in held]
                self._refresh_ends(held)
                try:
                    if records:
                        await engine.process_records(records)
                    if skipped:  # after the records before them: the checkpoint moves past the ranges
                        await engine.dead_letters.send_many([bad.dead_letter() for bad in skipped])
                        self.metrics.dead_letters.labels(UNDECODABLE_FIELD).inc(len(skipped))
                        for bad in skipped:
                            clock = engine.clocks.parts.get((bad.tp.topic, bad.tp.partition))
                            if clock is not None and clock.next_offset <= bad.last:
                                clock.next_offset = bad.last + 1
                    if records or skipped:
                        await self._commit(
                            {tp for tp in fetched.records if tp in held} | {b.tp for b in skipped}
                        )
                        self.processed += len(records)
                    if not records or skipped or time.monotonic() - last_tick >= cfg.timer_interval_s:
                        await engine.tick()  # the wall clock moves idle partitions
                        last_tick = time.monotonic()
                except Exception as exc:  # Redis (or the commit) failed mid-batch: roll back, retry
                    log.error("batch failed (%s: %s); resuming from the checkpoints", type(exc).__name__, exc)
                    await self._rewind(held)

    async def _flush_loop(self) -> None:
        """Move the ledger streams to the lake every ``ledger_flush_interval_s``, and once more on
        stop. A failed flush (Redis or the lake away) is logged and retried at the next tick: its
        intent stays, so the retry writes the same files."""
        if self.flusher is None:
            return
        interval = self.config.ledger_flush_interval_s
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), interval)
            try:
                n = await self.flusher.flush()
            except Exception as exc:
                self.metrics.ledger_flush_errors.inc()
                log.warning("ledger flush failed (%s: %s); retrying later", type(exc).__name__, exc)
            else:
                self.metrics.ledger_flushed.inc(n)
                self.metrics.ledger_flush_at.set(time.time())
            if self.stopping.is_set():
                return

    async def _rewind(self, held: Iterable[TopicPartition]) -> None:
        """Forget the batch in hand and resume every held partition at its checkpoint in Redis (what
        the batch's effects left there is idempotent to redo), retrying while Redis is away."""
        assert self.consumer is not None
        assert self.engine is not None
        tps = sorted(held)
        delay = 0.2
        while not self.stopping.is_set():
            try:
                await self.engine.revoke([(tp.topic, tp.partition) for tp in tps])
                positions = {(tp.topic, tp.partition): await self.consumer.committed(tp) or 0 for tp in tps}
                resume_at = await self.engine.assign(list(positions), restore=True, positions=positions)
            except Exception as exc:
                log.warning("cannot resume yet (%s: %s); retrying in %.1fs", type(exc).__name__, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            for tp in tps:
                self.consumer.seek(tp, resume_at[(tp.topic, tp.partition)])
            log.info("resumed %d partitions from their checkpoints", len(tps))
            return

    def _refresh_ends(self, held: Iterable[TopicPartition]) -> None:
        """Each partition's end offset as the last fetch saw it (None until its first fetch).

        ``highwater`` comes from the Fetch responses; ListOffsets is not used (a Kafka-protocol
        broker used in the tests answers it wrongly). A log that ends before the partition's
        checkpoint lost records (``SpeedLayer.rewind_lost_log``): the partition is read again from
        offset 0 (a log that starts later is out of range there, and the consumer's
        ``auto_offset_reset=earliest`` takes its start), and what comes is taken in, not skipped as
        redelivered."""
        assert self.consumer is not None
        assert self.engine is not None
        for tp in held:
            end = self.consumer.highwater(tp)
            if end is not None:
                key = (tp.topic, tp.partition)
                clock = self.engine.clocks.parts.get(key)
                if clock is not None and clock.next_offset > end:
                    self.engine.rewind_lost_log(key, end)
                    self.consumer.seek(tp, 0)
                self.engine.set_end(key, end)

    async def _commit(self, tps: Iterable[TopicPartition]) -> None:
        """Commit the next offset of each partition whose records were just applied."""
        assert self.consumer is not None
        assert self.engine is not None
        offsets = {}
        for tp in tps:
            clock = self.engine.clocks.parts.get((tp.topic, tp.partition))
            if clock is not None:
                offsets[tp] = clock.next_offset
        if offsets:
            await self.consumer.commit(offsets)

    # pausing (an operator's lever, and how the tests make a partition slow) ---------------

    def pause(self, topics: Iterable[str]) -> None:
        self._paused |= set(topics)
        self._apply_pause()

    def resume(self, topics: Iterable[str]) -> None:
        assert self.consumer is not None
        names = set(topics)
        self._paused -= names
        self.consumer.resume(*(tp for tp in self.consumer.assignment() if tp.topic in names))

    def _apply_pause(self) -> None:
        if self.consumer is not None and self._paused:
            self.consumer.pause(*(tp for tp in self.consumer.assignment() if tp.topic in self._paused))

    def stop(self) -> None:
        """Ask ``run`` to finish its batch, commit and leave the group."""
        self.stopping.set()

    async def _close(self) -> None:
        try:
            if self.consumer is not None:
                async with self.lock:
                    with contextlib.suppress(Exception):
                        await self._commit(self.consumer.assignment())
                # Leaves the group (the others take over at once) outside the lock: stopping waits
                # for the consumer's coordination task, which may be in a rebalance that another
                # member's leaving started, calling the listener, which takes the lock. Under the
                # lock, both would wait for ever (seen when two workers stopped together).
                await self.consumer.stop()
        finally:
            try:
                if self.producer is not None:
                    await self.producer.stop()
            finally:
                await self.redis.aclose()


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka ships no type stubs
    """Partitions change hands between batches, never during one."""

    def __init__(self, worker: KafkaWorker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: Any) -> None:
        w = self.worker
        if w.engine is None or not revoked:
            return
        async with w.lock:
            with contextlib.suppress(Exception):  # the group may already be gone; the checkpoint is in Redis
                await w._commit(revoked)
            await w.engine.revoke([(tp.topic, tp.partition) for tp in revoked])

    async def on_partitions_assigned(self, assigned: Any) -> None:
        w = self.worker
        if w.engine is None or w.consumer is None or not assigned:
            return
        async with w.lock:
            tps = sorted(assigned)
            positions = {(tp.topic, tp.partition): await w.consumer.position(tp) for tp in tps}
            resume_at = await w.engine.assign(list(positions), restore=True, positions=positions)
            for tp in tps:
                offset = resume_at[(tp.topic, tp.partition)]
                if offset != positions[(tp.topic, tp.partition)]:
                    w.consumer.seek(tp, offset)  # the checkpoint is ahead of the last commit
            w._apply_pause()
            log.info("assigned %d partitions: %s", len(tps), _summary(tps))


def _summary(tps: list[Any]) -> str:
    by_topic: dict[str, list[int]] = {}
    for tp in tps:
        by_topic.setdefault(tp.topic, []).append(tp.partition)
    return "; ".join(f"{t}: {min(p)}..{max(p)} ({len(p)})" for t, p in sorted(by_topic.items()))


async def run_worker(settings: Settings, catalog: Catalog) -> None:
    """Run one worker until SIGTERM or SIGINT, then flush its ledger and leave the group cleanly."""
    worker = KafkaWorker(settings, catalog)
    cfg = settings.realtime
    await serve(worker, worker.metrics.registry, cfg.metrics_host, cfg.metrics_port)
