"""The speed layer's Faust agent on an in-memory channel: the embedded default, replays, tests.

The channel carries chunks of records (topic-partition, offset, raw value) as a Kafka fetch
would, and the agent takes them in batches (``stream.take``) so one Redis pipeline serves
many events. On Kafka the same ``SpeedLayer`` is fed by ``realtime.kafka`` instead (why, in
its docstring).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from realtime.client import connect
from realtime.clock import TP
from realtime.codec import Record
from realtime.deadletters import DEAD_LETTERS, DeadLetterSink
from realtime.engine import SpeedLayer
from realtime.keys import Keys
from realtime.ledger import LedgerFlusher
from realtime.metrics import Metrics
from realtime.routing import all_partitions
from shared_logic import Catalog
from shared_logic.errors import MissingExtra
from shared_logic.settings import Settings
from storage.lake import Lake

log = logging.getLogger(__name__)

# Records per value on the in-memory channel (a "fetch" of records).
CHANNEL_CHUNK = 500


def _faust() -> Any:
    try:
        import faust
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingExtra("the speed layer (faust-streaming)", "realtime") from exc
    return faust


class Worker:
    """The speed layer bound to a Faust agent on an in-memory channel."""

    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        redis: Any = None,
        dead_letters: DeadLetterSink | None = None,
        metrics: Metrics | None = None,
        sources: Sequence[TP] | None = None,
    ) -> None:
        faust = _faust()
        self.settings = settings
        config = settings.realtime
        # No broker is contacted: the app only hosts the agent and its channel.
        self.app = faust.App(
            config.app_id,
            broker="kafka://localhost:9092",
            store="memory://",
            autodiscover=False,
            value_serializer="raw",
            key_serializer="raw",
            web_enabled=False,
        )
        self.redis = redis or connect(settings.redis)
        self.source: Any = self.app.channel(maxsize=16)
        if dead_letters is None:
            dead_letters = DEAD_LETTERS.open(
                config.dead_letters_url or "redis://",
                redis=self.redis,
                keys=Keys.of(settings.keys),
                settings=settings,
            )
        # The worker holds every partition of the input.
        self.sources = list(sources) if sources is not None else all_partitions(config)
        self.engine = SpeedLayer(
            self.redis, catalog, settings, dead_letters, metrics=metrics, sources=self.sources
        )
        self.processed = 0
        self.error: Exception | None = None
        self._progress = asyncio.Condition()
        self._ready = asyncio.Event()
        self.agent = self.app.agent(self.source, name="attribute", concurrency=1)(self._consume)

    async def _consume(self, stream: Any) -> AsyncIterator[int]:
        await self._ready.wait()
        # Every value is a chunk of records: take as many chunks as make a batch.
        config = self.settings.realtime
        async for chunks in stream.take(
            max(1, config.batch_size // CHANNEL_CHUNK), within=config.batch_within_s
        ):
            records: list[Record] = [r for chunk in chunks for r in chunk]
            try:
                await self.engine.process_records(records)
            except Exception as exc:  # Redis failed: whoever waits for this batch hears of it
                self.error = exc
                log.exception("batch of %d records failed", len(records))
            async with self._progress:
                self.processed += len(records)
                self._progress.notify_all()
            yield len(records)

    async def start_in_memory(self, ends: dict[TP, int] | None = None) -> None:
        """Start the agent on its channel (``ends``: how many records each partition will carry,
        so a partition done is idle)."""
        await self.engine.start()
        await self.engine.assign(self.sources, restore=False, ends=ends)
        self._ready.set()
        self.app.flow_control.resume()
        await self.agent.start()

    async def send(self, chunk: Sequence[Record]) -> None:
        await self.source.send(value=list(chunk))

    async def wait_processed(self, total: int, timeout_s: float = 600) -> None:
        """Wait until ``total`` records went through; raise the error of a batch that failed."""
        async with self._progress:
            await asyncio.wait_for(
                self._progress.wait_for(lambda: self.processed >= total or self.error is not None), timeout_s
            )
        if self.error is not None:
            raise self.error

    async def stop(self) -> None:
        await self.agent.stop()
        await self.redis.aclose()

    def flusher(self, lake: Lake) -> LedgerFlusher:
        return LedgerFlusher(self.redis, self.engine.keys, lake)
