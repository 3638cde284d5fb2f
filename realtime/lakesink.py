"""The lake sink: the event topics landed in the lake, exactly once per record.

A consumer group of its own (``<realtime.app_id>-lake-sink``), so it scales and lags apart
from the workers. It buffers the records of every partition it holds and rolls them all to the
lake together when the buffers reach ``sink.roll_records`` records or ``sink.roll_mib`` MiB, or
the oldest record has waited ``sink.roll_age_s`` (a quiet hour still lands) — on a backlog
(records on the broker past the buffers) ``sink.backlog_age_s`` instead, so a backlog after an
outage lands at the size limits, in few large files, not one file per partition per hour per
roll. A roll of offset ranges ``{partition: [first, last]}``:

1. writes an *intent* (``raw/_sink/<group>/rolls/<name>.json``: the ranges) to the lake;
2. lands the records (in topic, partition, offset order) with ``storage.raw.land`` — the writer
   ``attribution land`` uses too — in files called ``<name>`` (raw events by event hour, dead
   letters by arrival day): ``<topic>-p<partition>-<first>-<last>`` for a roll of one partition,
   ``sink-<digest of the ranges>`` for more;
3. commits every partition's offset ``last + 1`` (one commit);
4. deletes the intent.

A sink killed anywhere restarts at the committed offsets; a partition whose committed offset is
the first of an intent's range lands exactly that intent again (every range of it read back from
the broker, whoever holds the other partitions now), so the same files are rewritten whole:
nothing lost, nothing doubled. An intent all of whose partitions have committed past it is
deleted when seen. (An intent of the older one-per-partition form,
``raw/_sink/<group>/<topic>/<partition>.json``, is redone the same way.)

Hourly landing markers: each partition's progress (its landed offset and event-time watermark,
the wall clock moving it only when it is idle at its end offset, as in the workers) goes to
``raw/_sink/<group>/progress/``; an hour is marked landed (``raw/_landed/dt=/hour=/``) once every
partition of every topic has passed its end plus the allowed lateness. Every hour of a day with
data is marked, quiet ones included; the nightly DAG's sensor waits for the 24 of its day.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from prometheus_client import CollectorRegistry, Counter, Gauge

from realtime.broker import client_options, ensure_topics, group_consumer, input_topics, serve
from realtime.clock import Clocks
from realtime.fetching import Fetcher, Undecodable
from shared_logic.contract import DEAD_LETTER_ROW, DEAD_LETTERS, RAW, dead_letter
from shared_logic.events import EVENT_TYPES
from shared_logic.settings import Settings
from shared_logic.timeutil import MS_PER_HOUR, utc_day
from storage import Lake, open_lake, partition
from storage.arrow import table_of
from storage.raw import HOURS, land, landed_by_day, mark_landed

log = logging.getLogger(__name__)


class SinkMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.records = Counter(
            "lake_sink_records_total", "Records landed (events and dead letters)", registry=r
        )
        self.dead_letters = Counter(
            "lake_sink_dead_letters_total", "Records landed as dead letters", registry=r
        )
        self.files = Counter("lake_sink_files_total", "Parquet files written", registry=r)
        self.rolls = Counter("lake_sink_rolls_total", "Offset ranges landed", registry=r)
        self.markers = Counter("lake_sink_hour_markers_total", "Hourly landing markers written", registry=r)
        self.undecodable = Counter(
            "lake_sink_undecodable_batches_total",
            "Record batches the sink could not decode (corrupt, unknown codec), by topic",
            ["topic"],
            registry=r,
        )
        self.lag = Gauge(
            "lake_sink_consumer_lag", "Records not landed yet", ["topic", "partition"], registry=r
        )
        self.watermark = Gauge(
            "lake_sink_watermark_ms",
            "Event-time watermark of a partition's landed records",
            ["topic", "partition"],
            registry=r,
        )


@dataclass(slots=True)
class _Buffer:
    records: list[tuple[int, bytes, int]] = field(default_factory=list)  # (offset, value, arrival ms)
    size: int = 0
    since: float = 0.0  # monotonic time of the oldest record


Ranges = dict[TopicPartition, tuple[int, int]]


def roll_name(ranges: Ranges) -> str:
    """The files' name of a roll: its one partition's range, or a digest of all its ranges."""
    if len(ranges) == 1:
        ((tp, (first, last)),) = ranges.items()
        return f"{tp.topic}-p{tp.partition}-{first:012d}-{last:012d}"
    text = json.dumps(sorted([tp.topic, tp.partition, a, b] for tp, (a, b) in ranges.items()))
    return f"sink-{hashlib.sha256(text.encode()).hexdigest()[:24]}"


class LakeSink:
    def __init__(
        self, settings: Settings, lake: Lake | None = None, metrics: SinkMetrics | None = None
    ) -> None:
        self.settings = settings
        self.config = settings.sink
        self.lake = lake or open_lake(settings.lake.url, settings.s3)
        self.metrics = metrics or SinkMetrics()
        self.group = f"{settings.realtime.app_id}-{self.config.group_suffix}"
        self.topics = input_topics(settings.realtime)
        self.clocks = Clocks()
        self.buffers: dict[TopicPartition, _Buffer] = {}
        self.consumer: AIOKafkaConsumer | None = None
        self.lock = asyncio.Lock()
        self.stopping = asyncio.Event()
        self.complete_days: set[str] = set()  # days whose 24 hours are marked: not looked at again
        self.rolling: asyncio.Task[None] | None = None  # the roll in flight (one at a time)
        self.taken: dict[TopicPartition, int] = {}  # offset after the last record given to a roll
        self.broken = False  # a roll failed: no other may follow it in this process

    # lake paths of the sink's own state -------------------------------------------------

    def _intent_path(self, name: str) -> str:
        return f"raw/_sink/{self.group}/rolls/{name}.json"

    def _legacy_intent_path(self, tp: TopicPartition) -> str:
        return f"raw/_sink/{self.group}/{tp.topic}/{tp.partition}.json"

    def _progress_path(self, topic: str, partition: int) -> str:
        return f"raw/_sink/{self.group}/progress/{topic}-{partition}.json"

    def _read(self, rel: str) -> dict[str, Any] | None:
        raw = self.lake._get_bytes(rel)
        return json.loads(raw) if raw is not None else None

    def _write(self, rel: str, data: dict[str, Any]) -> None:
        self.lake._put_bytes(rel, json.dumps(data, sort_keys=True).encode())

    # lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        await ensure_topics(self.settings.realtime)
        cfg = self.settings.realtime
        self.consumer = group_consumer(cfg, self.group, self.config.roll_records)
        self.consumer.subscribe(self.topics, listener=_Listener(self))
        await self.consumer.start()

    def stop(self) -> None:
        self.stopping.set()

    async def run(self) -> None:
        """Land until ``stop()``; then roll what is buffered, commit, leave the group."""
        consumer = self.consumer
        assert consumer is not None, "start() first"
        # A batch it cannot decode is dead-lettered and skipped, or stops its partition (realtime.fetching).
        fetcher = Fetcher(
            consumer, self.settings.realtime, self.metrics.undecodable, self._next_offset, self.lock
        )
        last_markers = 0.0
        try:
            while not self.stopping.is_set():
                fetched = await fetcher.getmany(timeout_ms=200, max_records=self.config.roll_records)
                async with self.lock:
                    if self.rolling is not None and self.rolling.done():
                        await self._settle()  # its failure raised here
                    held = consumer.assignment()
                    now = time.monotonic()
                    for tp, rows in fetched.records.items():
                        expected = self._next_offset(tp)
                        if expected is not None:  # not what is landed already (fetched before a seek)
                            rows = [r for r in rows if r.offset >= expected]
                        if tp in held and rows:
                            buf = self.buffers.setdefault(tp, _Buffer())
                            if not buf.records:
                                buf.since = now
                            wall = int(time.time() * 1000)  # for a broker that stamps no time
                            buf.records += [
                                (r.offset, r.value, r.timestamp if (r.timestamp or 0) > 0 else wall)
                                for r in rows
                            ]
                            buf.size += sum(len(r.value or b"") for r in rows)
                    for bad in fetched.skipped:
                        if bad.tp in held:
                            await self._land_undecodable(bad)
                    if self._due(held, now):  # landed while the next records are fetched
                        await self._roll_all(held, wait=False)
                    self._refresh(held)
                    if now - last_markers >= self.config.marker_interval_s:
                        self._write_progress()
                        self._mark_hours()
                        last_markers = now
        finally:
            await self._close()

    async def _close(self) -> None:
        """Roll what is buffered and write the progress under the lock, then leave the group outside
        it: stopping waits for a rebalance in progress, whose listener takes the lock
        (``realtime.kafka.KafkaWorker._close`` says why)."""
        if self.consumer is None:
            return
        async with self.lock:
            with contextlib.suppress(Exception):
                await self._roll_all(self.consumer.assignment())
                self._write_progress()
        await self.consumer.stop()

    def _next_offset(self, tp: TopicPartition) -> int | None:
        """The offset the sink expects next from ``tp``: after its buffer, its roll in flight, or its
        landed offset."""
        buf = self.buffers.get(tp)
        if buf is not None and buf.records:
            return buf.records[-1][0] + 1
        if tp in self.taken:
            return self.taken[tp]
        clock = self.clocks.parts.get((tp.topic, tp.partition))
        return None if clock is None else clock.next_offset

    async def _land_undecodable(self, bad: Undecodable) -> None:
        """A range the consumer could not decode: land what is buffered before it, then one dead letter
        describing it (``dead_letters/``, a file named after the range like a roll's), then commit past it."""
        tp = bad.tp
        assert self.consumer is not None
        buf = self.buffers.get(tp)
        if buf is not None and buf.records:
            await self._roll_all(self.consumer.assignment())
        at = int(time.time() * 1000)
        raw, reason = bad.dead_letter()
        table = table_of(DEAD_LETTER_ROW, [asdict(dead_letter(raw, reason, at))])
        ref = partition(DEAD_LETTERS, dt=utc_day(at))
        name = f"{tp.topic}-p{tp.partition}-{bad.first:012d}-{bad.last:012d}.parquet"
        await asyncio.to_thread(self.lake.put_file, ref, name, table)
        await self.consumer.commit({tp: bad.last + 1})
        clock = self.clocks.parts.get((tp.topic, tp.partition))
        if clock is not None and clock.next_offset <= bad.last:
            clock.next_offset = bad.last + 1
        self.metrics.dead_letters.inc()

    # rolling --------------------------------------------------------------------------------

    def _due(self, held: Any, now: float) -> bool:
        """Whether the buffers of the held partitions roll now: at the size limits, or when the oldest
        record waited ``roll_age_s`` (``backlog_age_s`` if larger while the broker holds more)."""
        assert self.consumer is not None
        bufs = [(tp, b) for tp, b in self.buffers.items() if tp in held and b.records]
        if not bufs:
            return False
        cfg = self.config
        if sum(len(b.records) for _, b in bufs) >= cfg.roll_records:
            return True
        if sum(b.size for _, b in bufs) >= cfg.roll_mib * 2**20:
            return True
        age = now - min(b.since for _, b in bufs)
        if age < cfg.roll_age_s:
            return False
        behind = False
        for tp in held:  # a partition not fetched yet (no end offset known) may hold a backlog too
            end, expected = self.consumer.highwater(tp), self._next_offset(tp)
            if end is None or expected is None or end > expected:
                behind = True
                break
        return not behind or age >= cfg.backlog_age_s

    async def _settle(self) -> None:
        """Wait for the roll in flight, its commit included (its failure is raised here)."""
        task, self.rolling = self.rolling, None
        if task is not None:
            try:
                await task
            except BaseException:
                self.broken = True
                raise

    async def _roll_all(self, held: Any, wait: bool = True) -> None:
        """Land every buffered record of the held partitions as one roll (intent, files, commit), after
        the roll in flight; ``wait=False``: in a task of its own, the buffers already empty for more."""
        await self._settle()
        if self.broken:  # a roll failed: its intent must be redone (by a restart) before any other
            raise RuntimeError("the lake sink's last roll failed; restart it to land that roll again")
        parts = {tp: b.records for tp, b in sorted(self.buffers.items()) if tp in held and b.records}
        if not parts:
            return
        ranges = {tp: (rows[0][0], rows[-1][0]) for tp, rows in parts.items()}
        for tp, (_, last) in ranges.items():
            self.buffers[tp] = _Buffer()
            self.taken[tp] = last + 1
        self.rolling = asyncio.create_task(self._roll(ranges, parts))
        if wait:
            await self._settle()

    async def _roll(self, ranges: Ranges, parts: dict[TopicPartition, list[tuple[int, bytes, int]]]) -> None:
        name = roll_name(ranges)
        self._write(self._intent_path(name), _intent(ranges))
        landed = await self._land(name, parts)
        assert self.consumer is not None
        await self.consumer.commit({tp: last + 1 for tp, (_, last) in ranges.items()})
        self.lake._delete(self._intent_path(name))
        for tp, (_, last) in ranges.items():
            self._landed_to(tp, last, landed.max_event_ms)
        self.metrics.records.inc(sum(len(rows) for rows in parts.values()))
        self.metrics.rolls.inc()
        log.debug("landed %s: %d ranges, %d events", name, len(ranges), landed.accepted)

    async def _land(self, name: str, parts: dict[TopicPartition, list[tuple[int, bytes, int]]]) -> Any:
        """``storage.raw.land`` of the records of a roll, in topic, partition, offset order."""
        deliveries = [(value, ts) for tp in sorted(parts) for _, value, ts in parts[tp]]
        max_future_ms = self.settings.rules.max_future_ms  # the bound both layers apply
        landed = await asyncio.to_thread(land, self.lake, deliveries, name, max_future_ms)
        m = self.metrics
        m.dead_letters.inc(landed.rejected)
        m.files.inc(len(landed.files))
        return landed

    def _landed_to(self, tp: TopicPartition, last: int, max_event_ms: int) -> None:
        clock = self.clocks.parts.get((tp.topic, tp.partition))
        if clock is not None:
            clock.next_offset = max(clock.next_offset, last + 1)
            clock.watermark = max(clock.watermark, max_event_ms)

    # recovery ---------------------------------------------------------------------------------

    def _intents(self, assigned: list[TopicPartition]) -> dict[str, Ranges]:
        """Every intent in the lake (by name) that names an assigned partition."""
        out: dict[str, Ranges] = {}
        folder = f"raw/_sink/{self.group}/rolls"
        names = [n for n in self.lake._list(folder)[0] if n.endswith(".json")]
        for n in names:
            data = self._read(f"{folder}/{n}")
            if data is not None:
                ranges = _ranges(data)
                if any(tp in ranges for tp in assigned):
                    out[n.removesuffix(".json")] = ranges
        for tp in assigned:  # the older form: one intent per partition, its range only
            old = self._read(self._legacy_intent_path(tp))
            if old is not None:
                ranges = {tp: (int(old["first"]), int(old["last"]))}
                out.setdefault(roll_name(ranges), ranges)
        return out

    async def _recover(self, assigned: list[TopicPartition], committed: dict[TopicPartition, int]) -> None:
        """Land again every intent that starts at the committed offset of an assigned partition (its
        whole ranges, read back from the broker, under its name), commit those partitions past it;
        delete the intents every partition of which has committed past."""
        assert self.consumer is not None
        for name, ranges in sorted(self._intents(assigned).items()):
            mine = [tp for tp in assigned if tp in ranges and committed[tp] == ranges[tp][0]]
            if mine:
                log.info(
                    "lake sink: landing %s again (%d ranges) after an interrupted roll", name, len(ranges)
                )
                parts = await _read_ranges(self.settings, ranges)
                landed = await self._land(name, parts)
                await self.consumer.commit({tp: ranges[tp][1] + 1 for tp in mine})
                self.metrics.records.inc(sum(len(parts[tp]) for tp in mine))
                for tp in mine:
                    committed[tp] = ranges[tp][1] + 1
                    self.consumer.seek(tp, committed[tp])
                    self._landed_to(tp, ranges[tp][1], landed.max_event_ms)
                self.metrics.rolls.inc()
            done = True
            for tp, (_, last) in ranges.items():
                at = committed[tp] if tp in committed else await self.consumer.committed(tp)
                done = done and at is not None and at > last
            if done:
                if len(ranges) == 1:
                    (tp,) = ranges
                    old = self._read(self._legacy_intent_path(tp))
                    if old is not None and (int(old["first"]), int(old["last"])) == ranges[tp]:
                        self.lake._delete(self._legacy_intent_path(tp))
                self.lake._delete(self._intent_path(name))

    # progress and hourly markers -------------------------------------------------------------

    def _refresh(self, held: Any) -> None:
        assert self.consumer is not None
        for tp in held:
            end = self.consumer.highwater(tp)
            key = (tp.topic, tp.partition)
            if end is not None:
                self.clocks.set_end(key, end)
                clock = self.clocks.parts.get(key)
                if clock is not None:
                    self.metrics.lag.labels(tp.topic, str(tp.partition)).set(clock.lag or 0)
        self.clocks.tick(int(time.time() * 1000))  # only partitions landed up to their end offset move

    def _write_progress(self) -> None:
        for (topic, p), clock in self.clocks.parts.items():
            self._write(
                self._progress_path(topic, p), {"offset": clock.next_offset, "watermark": clock.watermark}
            )
            self.metrics.watermark.labels(topic, str(p)).set(clock.watermark)

    def _mark_hours(self) -> None:
        """Mark each hour of each day with raw data that every partition has passed (plus the lateness)."""
        marks = []
        for topic in self.topics:
            for p in range(self.settings.realtime.topic_partitions):
                state = self._read(self._progress_path(topic, p))
                marks.append(state["watermark"] if state else 0)
        bound = min(marks) - self.settings.rules.allowed_lateness_ms
        if bound <= 0:
            return
        days = {d["dt"] for t in EVENT_TYPES for d in self.lake.partitions(RAW.at(event_type=t))}
        last_day = datetime.fromtimestamp(bound / 1000, tz=UTC).date()
        marked = landed_by_day(self.lake) if days - self.complete_days else {}
        for day in sorted(days - self.complete_days):
            d = datetime.fromisoformat(day).date()
            if d > last_day:
                continue
            done = marked.get(day, set())
            if done >= set(HOURS):
                self.complete_days.add(day)
                continue
            start = int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp() * 1000)
            for i, hour in enumerate(HOURS):
                if hour not in done and start + (i + 1) * MS_PER_HOUR <= bound:
                    mark_landed(self.lake, day, hour, {"by": self.group, "bound_ms": bound})
                    self.metrics.markers.inc()


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka ships no type stubs
    def __init__(self, sink: LakeSink) -> None:
        self.sink = sink

    async def on_partitions_revoked(self, revoked: Any) -> None:
        s = self.sink
        async with s.lock:
            if s.consumer is not None:
                with contextlib.suppress(Exception):  # the group may be gone; the next owner redoes it
                    await s._roll_all(revoked)
            for tp in revoked:
                s.buffers.pop(tp, None)
                s.taken.pop(tp, None)
            s.clocks.revoke([(tp.topic, tp.partition) for tp in revoked])

    async def on_partitions_assigned(self, assigned: Any) -> None:
        s = self.sink
        assert s.consumer is not None
        async with s.lock:
            tps = sorted(assigned)
            committed = {tp: await s.consumer.position(tp) for tp in tps}
            for tp in tps:
                progress = s._read(s._progress_path(tp.topic, tp.partition)) or {}
                s.clocks.assign((tp.topic, tp.partition), committed[tp], int(progress.get("watermark", 0)))
                s.buffers[tp] = _Buffer()
                s.taken.pop(tp, None)
            await s._recover(tps, committed)
            log.info("lake sink assigned %d partitions", len(assigned))


def _intent(ranges: Ranges) -> dict[str, Any]:
    return {"ranges": sorted([tp.topic, tp.partition, a, b] for tp, (a, b) in ranges.items())}


def _ranges(data: dict[str, Any]) -> Ranges:
    return {TopicPartition(t, int(p)): (int(a), int(b)) for t, p, a, b in data["ranges"]}


async def _read_ranges(
    settings: Settings, ranges: Ranges
) -> dict[TopicPartition, list[tuple[int, bytes, int]]]:
    """The records of each range, read from the broker by a consumer of no group (so whoever holds
    the partitions now): what a roll landed, to land it again whole."""
    consumer = AIOKafkaConsumer(**client_options(settings.realtime), enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(ranges))
        for tp, (first, _) in ranges.items():
            consumer.seek(tp, first)
        out: dict[TopicPartition, list[tuple[int, bytes, int]]] = {tp: [] for tp in ranges}
        open_ = set(ranges)
        wall = int(time.time() * 1000)  # for a broker that stamps no time
        while open_:
            fetched = await consumer.getmany(*open_, timeout_ms=1_000)
            for tp, rows in fetched.items():
                first, last = ranges[tp]
                out[tp] += [
                    (r.offset, r.value, r.timestamp if (r.timestamp or 0) > 0 else wall)
                    for r in rows
                    if first <= r.offset <= last
                ]
            for tp in list(open_):  # done at its last offset (or past it: gone by retention, what is left)
                if await consumer.position(tp) > ranges[tp][1]:
                    open_.discard(tp)
                    consumer.pause(tp)
        return out
    finally:
        await consumer.stop()


async def run_sink(settings: Settings) -> None:
    """Run one lake sink until SIGTERM or SIGINT."""
    sink = LakeSink(settings)
    await serve(sink, sink.metrics.registry, settings.sink.metrics_host, settings.sink.metrics_port)
