"""The ledger: every settlement, from the scripts' Redis streams to Parquet in the lake.

The charge and refund scripts append to the budget shard's ledger stream in
the same atomic step that moves spend, so the stream holds each settlement
exactly once. ``LedgerFlusher`` moves it to ``realtime_ledger/dt=…/`` (``dt``
is the UTC day of the order) in batches, exactly once as well: it records the
range it is about to write before writing it, names the file after that range,
and trims the stream only after committing, so a flusher killed anywhere
redoes the same range into the same file, and flushers racing on a shard (each
Kafka worker flushes on a timer) write the same file and commit it once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import asdict, fields
from typing import Any, cast

from realtime.codec import ledger_entry
from realtime.keys import Keys
from realtime.scripts import Scripts
from shared_logic.contract import REALTIME_LEDGER, REALTIME_LEDGER_ROW
from shared_logic.settlement import LedgerEntry
from shared_logic.timeutil import utc_day
from storage.arrow import table_of
from storage.lake import Lake, partition

log = logging.getLogger(__name__)

StreamRows = list[tuple[bytes, dict[bytes, bytes]]]


async def xrange(redis: Any, key: str, **kwargs: Any) -> StreamRows:
    """``XRANGE`` with the types redis-py's asyncio stubs leave loose."""
    return cast(StreamRows, await redis.xrange(key, **kwargs) or [])


async def read_stream(redis: Any, keys: Keys) -> list[LedgerEntry]:
    """Every ledger entry still in Redis, all shards, in stream order per shard."""
    out: list[LedgerEntry] = []
    for shard in range(keys.budget_shards):
        out += [ledger_entry(f) for _, f in await xrange(redis, keys.ledger(shard))]
    return out


def _next_id(stream_id: str) -> str:
    ms, seq = stream_id.split("-")
    return f"{ms}-{int(seq) + 1}"


class LedgerFlusher:
    """Moves ledger streams to the lake, exactly once per entry, however many flushers run.

    Per shard: the range to write is fixed first (``SET NX`` of the shard's intent: a flusher
    that finds one adopts its range), the lake files named after the range are written, then
    ``flush.lua`` commits (flushed id, trim, intent cleared) only if the intent still names the
    range. Flushers racing on a shard write the same bytes to the same files and one commits; a
    flusher killed anywhere leaves the intent, and the next one rewrites the same files.
    """

    def __init__(
        self, redis: Any, keys: Keys, lake: Lake, batch: int = 50_000, scripts: Scripts | None = None
    ) -> None:
        self.redis, self.keys, self.lake, self.batch = redis, keys, lake, batch
        self.scripts = scripts or Scripts()

    def _intent_key(self, shard: int) -> str:
        return self.keys.ledger_flushed(shard) + ":intent"

    async def flush(self) -> int:
        """Flush every shard until its stream is empty; returns the number of entries written."""
        written = 0
        for shard in range(self.keys.budget_shards):
            while True:
                n = await self._flush_once(shard)
                written += n
                if n == 0:
                    break
        return written

    async def _flush_once(self, shard: int) -> int:
        stream, intent_key = self.keys.ledger(shard), self._intent_key(shard)
        intent = await self.redis.get(intent_key)
        if intent is None:
            head = await xrange(self.redis, stream, count=self.batch)
            if not head:
                return 0
            proposed = f"{head[0][0].decode()} {head[-1][0].decode()}"
            if not await self.redis.set(intent_key, proposed, nx=True):
                intent = await self.redis.get(intent_key)  # another flusher fixed a range first
                if intent is None:
                    return await self._flush_once(shard)  # ... and committed it already
            else:
                intent = proposed
        text = intent.decode() if isinstance(intent, bytes) else str(intent)
        first, last = text.split(" ")
        rows = await xrange(self.redis, stream, min=first, max=last)
        by_day: dict[str, list[dict[str, Any]]] = {}
        for sid, f in rows:
            entry = ledger_entry(f)
            by_day.setdefault(utc_day(entry.order_time_ms), []).append(
                {**asdict(entry), "stream_id": sid.decode()}
            )
        name = f"part-s{shard}-{first.replace('-', '_')}-{last.replace('-', '_')}.parquet"

        def write() -> None:
            for day, day_rows in sorted(by_day.items()):
                self.lake.put_file(
                    partition(REALTIME_LEDGER, dt=day), name, table_of(REALTIME_LEDGER_ROW, day_rows)
                )

        if rows:  # none: a racing flusher committed and trimmed the range meanwhile
            await asyncio.to_thread(write)
        keys = [intent_key, self.keys.ledger_flushed(shard), stream]
        (committed,) = await self.scripts.run(self.redis, [("flush", keys, [text, last, _next_id(last)])])
        if isinstance(committed, Exception):
            raise committed
        if not committed:  # another flusher committed this range: it goes on with the rest
            return 0
        log.info("ledger shard %d: %d entries to the lake (%s..%s)", shard, len(rows), first, last)
        return len(rows)


def read_ledger(lake: Lake, days: Iterable[str]) -> list[LedgerEntry]:
    """Ledger entries of the given UTC days from the lake."""
    table = lake.read([partition(REALTIME_LEDGER, dt=d) for d in days])
    if table.num_rows == 0:
        return []
    names = [f.name for f in fields(LedgerEntry)]
    return [LedgerEntry(**{k: row[k] for k in names}) for row in table.to_pylist()]
