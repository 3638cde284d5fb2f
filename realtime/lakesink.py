"""The lake sink: the event topics landed in the lake, exactly once per record.

A consumer group of its own (``<realtime.app_id>-lake-sink``), so it scales and lags apart
from the workers. Per topic-partition it buffers records and rolls them to the lake when the
buffer reaches ``sink.roll_records`` records or ``sink.roll_mib`` MiB, or its oldest record
has waited ``sink.roll_age_s`` (a quiet hour still lands). A roll of offsets ``[first, last]``:

1. writes an *intent* (``raw/_sink/<group>/<topic>/<partition>.json``: the range) to the lake;
2. lands the records with ``storage.raw.land`` — the writer ``attribution land`` uses too —
   in files named ``<topic>-p<partition>-<first>-<last>`` (raw events by event hour, dead
   letters by arrival day);
3. commits offset ``last + 1``.

A sink killed anywhere restarts at the committed offset; if an intent starts there, it rolls
exactly that range again, so the same files are rewritten whole: nothing lost, nothing doubled.

Hourly landing markers: each partition's progress (its landed offset and event-time watermark,
the wall clock moving it only when it is idle at its end offset, as in the workers) goes to
``raw/_sink/<group>/progress/``; an hour is marked landed (``raw/_landed/dt=/hour=/``) once every
partition of every topic has passed its end plus the allowed lateness. Every hour of a day with
data is marked, quiet ones included; the nightly DAG's sensor waits for the 24 of its day.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from prometheus_client import CollectorRegistry, Counter, Gauge

from realtime.broker import ensure_topics, group_consumer, input_topics, serve
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
    target: int | None = None  # an intent's last offset: roll exactly there


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

    # lake paths of the sink's own state -------------------------------------------------

    def _intent_path(self, tp: TopicPartition) -> str:
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
                    held = consumer.assignment()
                    now = time.monotonic()
                    for tp, rows in fetched.records.items():
                        if tp in held:
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
                    for tp in list(self.buffers):
                        if tp in held:
                            await self._maybe_roll(tp, now)
                    self._refresh(held)
                    if now - last_markers >= self.config.marker_interval_s:
                        self._write_progress()
                        self._mark_hours()
                        last_markers = now
        finally:
            async with self.lock:
                if self.consumer is not None:
                    with contextlib.suppress(Exception):
                        for tp in list(self.buffers):
                            if tp in self.consumer.assignment():
                                await self._roll(tp, len(self.buffers[tp].records))
                        self._write_progress()
                    await self.consumer.stop()

    def _next_offset(self, tp: TopicPartition) -> int | None:
        """The offset the sink expects next from ``tp``: after its buffer, or its landed offset."""
        buf = self.buffers.get(tp)
        if buf is not None and buf.records:
            return buf.records[-1][0] + 1
        clock = self.clocks.parts.get((tp.topic, tp.partition))
        return None if clock is None else clock.next_offset

    async def _land_undecodable(self, bad: Undecodable) -> None:
        """A range the consumer could not decode: land what is buffered before it, then one dead letter
        describing it (``dead_letters/``, a file named after the range like a roll's), then commit past it."""
        tp = bad.tp
        buf = self.buffers.get(tp)
        if buf is not None and buf.records:
            await self._roll(tp, len(buf.records))
        at = int(time.time() * 1000)
        raw, reason = bad.dead_letter()
        table = table_of(DEAD_LETTER_ROW, [asdict(dead_letter(raw, reason, at))])
        ref = partition(DEAD_LETTERS, dt=utc_day(at))
        name = f"{tp.topic}-p{tp.partition}-{bad.first:012d}-{bad.last:012d}.parquet"
        await asyncio.to_thread(self.lake.put_file, ref, name, table)
        assert self.consumer is not None
        await self.consumer.commit({tp: bad.last + 1})
        clock = self.clocks.parts.get((tp.topic, tp.partition))
        if clock is not None and clock.next_offset <= bad.last:
            clock.next_offset = bad.last + 1
        self.metrics.dead_letters.inc()

    # rolling --------------------------------------------------------------------------------

    async def _maybe_roll(self, tp: TopicPartition, now: float) -> None:
        buf = self.buffers[tp]
        if not buf.records:
            return
        if buf.target is not None:  # an interrupted range: exactly it, as soon as it is all here
            if buf.records[-1][0] >= buf.target:
                await self._roll(tp, sum(1 for r in buf.records if r[0] <= buf.target))
            return
        cfg = self.config
        if (
            len(buf.records) >= cfg.roll_records
            or buf.size >= cfg.roll_mib * 2**20
            or now - buf.since >= cfg.roll_age_s
        ):
            await self._roll(tp, len(buf.records))

    async def _roll(self, tp: TopicPartition, count: int) -> None:
        """Land the first ``count`` buffered records of ``tp``: intent, files, commit."""
        buf = self.buffers[tp]
        rows, rest = buf.records[:count], buf.records[count:]
        if not rows:
            return
        first, last = rows[0][0], rows[-1][0]
        self._write(self._intent_path(tp), {"first": first, "last": last})
        name = f"{tp.topic}-p{tp.partition}-{first:012d}-{last:012d}"
        deliveries = [(value, ts) for _, value, ts in rows]
        max_future_ms = self.settings.rules.max_future_ms  # the bound both layers apply
        landed = await asyncio.to_thread(land, self.lake, deliveries, name, max_future_ms)
        assert self.consumer is not None
        await self.consumer.commit({tp: last + 1})
        buf.records, buf.target = rest, None
        buf.size = sum(len(r[1] or b"") for r in rest)
        buf.since = time.monotonic()
        clock = self.clocks.parts.get((tp.topic, tp.partition))
        if clock is not None:
            clock.next_offset = last + 1
            clock.watermark = max(clock.watermark, landed.max_event_ms)
        m = self.metrics
        m.records.inc(len(rows))
        m.dead_letters.inc(landed.rejected)
        m.files.inc(len(landed.files))
        m.rolls.inc()
        log.debug(
            "landed %s [%d, %d]: %d events, %d dead letters",
            tp,
            first,
            last,
            landed.accepted,
            landed.rejected,
        )

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
            for tp in revoked:
                if s.consumer is not None and tp in s.buffers:
                    with contextlib.suppress(Exception):  # the group may be gone; the next owner redoes it
                        await s._roll(tp, len(s.buffers[tp].records))
                s.buffers.pop(tp, None)
            s.clocks.revoke([(tp.topic, tp.partition) for tp in revoked])

    async def on_partitions_assigned(self, assigned: Any) -> None:
        s = self.sink
        assert s.consumer is not None
        async with s.lock:
            for tp in sorted(assigned):
                committed = await s.consumer.position(tp)
                progress = s._read(s._progress_path(tp.topic, tp.partition)) or {}
                s.clocks.assign((tp.topic, tp.partition), committed, int(progress.get("watermark", 0)))
                intent = s._read(s._intent_path(tp))
                buf = s.buffers.setdefault(tp, _Buffer())
                buf.records, buf.size = [], 0
                buf.target = intent["last"] if intent and intent["first"] == committed else None
            log.info("lake sink assigned %d partitions", len(assigned))


async def run_sink(settings: Settings) -> None:
    """Run one lake sink until SIGTERM or SIGINT."""
    sink = LakeSink(settings)
    await serve(sink, sink.metrics.registry, settings.sink.metrics_host, settings.sink.metrics_port)
