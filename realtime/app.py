"""The Faust app: one agent over the five event topics, or over an in-memory channel.

Topics are keyed and co-partitioned by ``user_id``. The agent takes events in
batches (``stream.take``), so one Redis pipeline serves many events; the same
agent runs on ``app.channel()`` for the embedded default and the tests, where
the channel carries record batches as a Kafka fetch would (a channel send per
event would cost more than the work it carries).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from redis.asyncio import Redis

from realtime.engine import SpeedLayer
from realtime.ledger import LedgerFlusher
from realtime.metrics import Metrics
from realtime.settings import RealtimeSettings
from realtime.sinks import DeadLetterSink, KafkaDeadLetters, RedisDeadLetters
from shared_logic import Catalog
from shared_logic.errors import AttributionError
from shared_logic.events import EVENT_TYPES

log = logging.getLogger(__name__)

# Events per value on the in-memory channel (a "fetch" of records).
CHANNEL_CHUNK = 500


class MissingExtra(AttributionError):
    """An optional dependency group is not installed."""


def _faust() -> Any:
    try:
        import faust
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingExtra(
            "the speed layer needs faust-streaming: pip install 'attribution-engine[realtime]'"
        ) from exc
    return faust


class Worker:
    """The speed layer bound to a Faust app."""

    def __init__(
        self,
        settings: RealtimeSettings,
        catalog: Catalog,
        redis: Redis | None = None,
        dead_letters: DeadLetterSink | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        faust = _faust()
        self.settings = settings
        self.in_memory = settings.broker_url.startswith("memory://")
        broker = "kafka://localhost:9092" if self.in_memory else settings.broker_url
        self.app = faust.App(
            settings.app_id,
            broker=broker,
            store="memory://",
            autodiscover=False,
            topic_partitions=settings.topic_partitions,
            value_serializer="raw",
            key_serializer="raw",
            web_enabled=not self.in_memory,
        )
        self.redis = redis or Redis.from_url(settings.redis_url)
        if self.in_memory:
            self.source: Any = self.app.channel(maxsize=16)
            self.dead_letter_topic = None
        else:
            self.source = self.app.topic(
                *(settings.topic(t) for t in EVENT_TYPES),
                key_type=bytes,
                value_type=bytes,
                value_serializer="raw",
                partitions=settings.topic_partitions,
            )
            self.dead_letter_topic = self.app.topic(settings.topic("dead_letters"), value_serializer="raw")
        if dead_letters is None:
            dead_letters = (
                RedisDeadLetters(
                    self.redis, f"{settings.key_prefix}:dead-letters", settings.dead_letter_maxlen
                )
                if self.in_memory
                else KafkaDeadLetters(self.dead_letter_topic)
            )
        self.engine = SpeedLayer(self.redis, catalog, settings, dead_letters, metrics=metrics)
        self.processed = 0
        self._progress = asyncio.Condition()
        self._ready = asyncio.Event()
        self.agent = self.app.agent(self.source, name="attribute", concurrency=1)(self._consume)
        if not self.in_memory:
            self.app.task(self._startup)
            self.app.timer(settings.timer_interval_s)(self._tick)

    async def _startup(self) -> None:
        await self.engine.start()
        self._ready.set()

    async def _tick(self) -> None:
        """Live mode: the wall clock moves the watermark, so quiet partitions still settle."""
        if self._ready.is_set():
            await self.engine.advance(int(time.time() * 1000))

    async def _consume(self, stream: Any) -> AsyncIterator[int]:
        await self._ready.wait()
        # On the channel every value is a chunk of events: take as many chunks as make a batch.
        take = (
            max(1, self.settings.batch_size // CHANNEL_CHUNK) if self.in_memory else self.settings.batch_size
        )
        async for values in stream.take(take, within=self.settings.batch_within_s):
            flat: list[Any] = []
            for v in values:
                if isinstance(v, list):
                    flat.extend(v)
                else:
                    flat.append(v)
            await self.engine.process(flat)
            async with self._progress:
                self.processed += len(flat)
                self._progress.notify_all()
            yield len(flat)

    # in-memory driving -----------------------------------------------------

    async def start_in_memory(self) -> None:
        """Start the agent on its channel without a Kafka worker."""
        await self.engine.start()
        self._ready.set()
        self.app.flow_control.resume()
        await self.agent.start()

    async def send(self, chunk: Sequence[Any]) -> None:
        await self.source.send(value=list(chunk))

    async def wait_processed(self, total: int, timeout_s: float = 600) -> None:
        async with self._progress:
            await asyncio.wait_for(self._progress.wait_for(lambda: self.processed >= total), timeout_s)

    async def stop(self) -> None:
        if self.in_memory:
            await self.agent.stop()
        await self.redis.aclose()

    def flusher(self, lake: Any) -> LedgerFlusher:
        return LedgerFlusher(self.redis, self.engine.keys, lake)

    def run_kafka_worker(self) -> None:
        """Run the real worker against Kafka (blocks)."""
        faust = _faust()
        worker = faust.Worker(self.app, loglevel="info")
        worker.execute_from_commandline()
