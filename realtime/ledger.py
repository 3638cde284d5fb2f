"""The ledger: every settlement, from the scripts' Redis streams to Parquet in the lake.

The charge and refund scripts append to the budget shard's ledger stream in
the same atomic step that moves spend, so the stream holds each settlement
exactly once. ``LedgerFlusher`` moves it to ``realtime_ledger/dt=…/`` (``dt``
is the UTC day of the order) in batches, exactly once as well: it records the
range it is about to write before writing it, names the file after that range,
and trims the stream only after committing, so a flusher killed anywhere
redoes the same range into the same file.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import asdict, fields
from typing import Any, cast

import orjson
import pyarrow as pa
from redis.asyncio import Redis

from batch.lake import Lake, partition
from realtime.engine import utc_day
from realtime.keys import Keys
from shared_logic.settlement import LedgerEntry

log = logging.getLogger(__name__)

LEDGER_DATASET = "realtime_ledger"
_ARROW_TYPES = {"int": pa.int64(), "str": pa.string(), "bool": pa.bool_(), "LedgerKind": pa.string()}
LEDGER_SCHEMA = pa.schema(
    [(f.name, _ARROW_TYPES[str(f.type)]) for f in fields(LedgerEntry)] + [("stream_id", pa.string())]
)


def entry_from_stream(fields_: dict[bytes, bytes]) -> LedgerEntry:
    d = orjson.loads(fields_[b"d"])
    return LedgerEntry(
        kind=fields_[b"kind"].decode(),  # type: ignore[arg-type]  # one of the three kinds the scripts write
        order_id=d["order_id"],
        campaign_id=d["campaign_id"],
        advertiser_id=d["advertiser_id"],
        lever=d["lever"],
        user_id=d["user_id"],
        order_time_ms=d["order_time_ms"],
        due_ms=int(fields_[b"due"]),
        amount_minor=d["amount_minor"],
        currency=d["currency"],
        price_minor=d["price_minor"],
        charge_minor=int(fields_[b"charge"]),
        capped=fields_[b"capped"] == b"1",
        budget_day=fields_[b"day"].decode(),
        touch_event_id=d["touch_event_id"],
        touch_kind=d["touch_kind"],
        touch_time_ms=d["touch_time_ms"],
    )


def ledger_table(rows: Iterable[tuple[str, LedgerEntry]]) -> pa.Table:
    records = [{**asdict(e), "stream_id": sid} for sid, e in rows]
    return pa.Table.from_pylist(records, schema=LEDGER_SCHEMA)


async def read_stream(redis: Redis, keys: Keys) -> list[LedgerEntry]:
    """Every ledger entry still in Redis, all shards, in stream order per shard."""
    out: list[LedgerEntry] = []
    for shard in range(keys.budget_shards):
        for _, f in await xrange(redis, keys.ledger(shard)):
            out.append(entry_from_stream(f))
    return out


StreamRows = list[tuple[bytes, dict[bytes, bytes]]]


async def xrange(redis: Redis, key: str, **kwargs: Any) -> StreamRows:
    """``XRANGE`` with the types redis-py's asyncio stubs leave loose."""
    return cast(StreamRows, await redis.xrange(key, **kwargs) or [])


def _next_id(stream_id: str) -> str:
    ms, seq = stream_id.split("-")
    return f"{ms}-{int(seq) + 1}"


class LedgerFlusher:
    """Moves ledger streams to the lake, exactly once per entry."""

    def __init__(self, redis: Redis, keys: Keys, lake: Lake, batch: int = 50_000) -> None:
        self.redis, self.keys, self.lake, self.batch = redis, keys, lake, batch

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
        stream = self.keys.ledger(shard)
        intent = await self.redis.get(self._intent_key(shard))
        if intent is not None:
            first, last = (intent.decode() if isinstance(intent, bytes) else str(intent)).split(" ")
            rows = await xrange(self.redis, stream, min=first, max=last)
        else:
            rows = await xrange(self.redis, stream, count=self.batch)
            if not rows:
                return 0
            first, last = rows[0][0].decode(), rows[-1][0].decode()
            await self.redis.set(self._intent_key(shard), f"{first} {last}")
        by_day: dict[str, list[tuple[str, LedgerEntry]]] = {}
        for sid, f in rows:
            entry = entry_from_stream(f)
            by_day.setdefault(utc_day(entry.order_time_ms), []).append((sid.decode(), entry))
        name = f"part-s{shard}-{first.replace('-', '_')}-{last.replace('-', '_')}.parquet"
        for day, day_rows in sorted(by_day.items()):
            self.lake.put_file(partition(LEDGER_DATASET, dt=day), name, ledger_table(day_rows))
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.keys.ledger_flushed(shard), last)
            pipe.xtrim(stream, minid=_next_id(last))
            pipe.delete(self._intent_key(shard))
            await pipe.execute()
        log.info("ledger shard %d: %d entries to the lake (%s..%s)", shard, len(rows), first, last)
        return len(rows)


def read_ledger(lake: Lake, days: Iterable[str]) -> list[LedgerEntry]:
    """Ledger entries of the given UTC days from the lake."""
    table = lake.read([partition(LEDGER_DATASET, dt=d) for d in days])
    if table.num_rows == 0:
        return []
    names = [f.name for f in fields(LedgerEntry)]
    return [LedgerEntry(**{k: row[k] for k in names}) for row in table.to_pylist()]
