"""The baseline of ``benchmarks/kafka.py``: the textbook Faust agent, one Redis round trip per event.

It validates each event with the same ``parse_event`` and awaits one Redis write per event
(``ZADD NX`` of a touch, ``HSETNX`` of an order), with no batching, no scripts, no rules: what
Faust users who report a few hundred to a few thousand messages per second write. Run as
``python -m benchmarks.naive_faust`` with ``BENCH_BROKER``, ``BENCH_REDIS``, ``BENCH_PREFIX``;
it counts processed events in Redis (``naive:processed``) twice a second.
"""

from __future__ import annotations

import asyncio
import os
import sys

import faust
from redis.asyncio import Redis

from shared_logic import InvalidEvent, parse_event
from shared_logic.events import EVENT_TYPES

PREFIX = os.environ.get("BENCH_PREFIX", "naive")
app = faust.App(
    f"{PREFIX}-naive",
    broker=os.environ.get("BENCH_BROKER", "kafka://127.0.0.1:9092"),
    store="memory://",
    web_enabled=False,
    value_serializer="raw",
    key_serializer="raw",
    broker_session_timeout=6.0,
    broker_heartbeat_interval=1.0,
    broker_rebalance_timeout=6.0,
    consumer_auto_offset_reset="earliest",
)
topics = app.topic(*(f"{PREFIX}.{t}" for t in EVENT_TYPES), value_type=bytes, value_serializer="raw")
redis = Redis.from_url(os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/0"))
processed = 0


@app.agent(topics)
async def attribute(stream: faust.StreamT[bytes]) -> None:
    global processed
    async for value in stream:
        try:
            event = parse_event(value)
        except InvalidEvent:
            processed += 1
            continue
        if event.event_type in ("order", "order_cancel"):
            await redis.hsetnx(f"naive:p:{event.user_id}", event.order_id, value)  # type: ignore[attr-defined]
        else:
            await redis.zadd(f"naive:t:{event.user_id}", {event.event_id: event.event_time}, nx=True)
        processed += 1


@app.timer(0.5)
async def report() -> None:
    await redis.set("naive:processed", processed)


if __name__ == "__main__":
    asyncio.set_event_loop(asyncio.new_event_loop())
    sys.argv = [sys.argv[0], "worker", "--loglevel", "warn"]
    app.main()
