"""Producing events to the broker the way a real producer would: each event to its type's topic,
keyed by user, in arrival order (``realtime.routing`` decides the partition, as Kafka's default
partitioner does), batched per partition for speed."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from realtime import broker
from realtime.broker import ensure_topics
from realtime.routing import Producers, place
from shared_logic.settings import RealtimeSettings


def encode(raw: Any) -> bytes:
    """A payload as the bytes a producer sends (a dict as JSON, text as UTF-8, bytes as they are)."""
    if isinstance(raw, bytes | bytearray):
        return bytes(raw)
    if isinstance(raw, str):
        return raw.encode("utf-8", errors="surrogatepass")
    return json.dumps(raw, separators=(",", ":")).encode()


async def produce(
    values: Iterable[Any],
    config: RealtimeSettings,
    producers: Producers | None = None,
    compression_type: str | None = None,
    timestamps: Sequence[int] | None = None,
) -> int:
    """Send ``values`` to the input topics in order (creating the topics first when missing),
    each partitioned and keyed as its type's producer does (``producers``; by default by user with
    Kafka's default partitioner) and each batch compressed with ``compression_type`` (None, "gzip",
    "snappy", "lz4" or "zstd": every codec Kafka defines), each record stamped with its entry of
    ``timestamps`` (epoch ms; by default the producer's clock); returns how many were sent."""
    if timestamps is not None:
        values = list(values)
        if len(timestamps) != len(values):
            raise ValueError(f"timestamps = {len(timestamps)} times for {len(values)} values: one per value")
    await ensure_topics(config)
    producer = broker.producer(config, acks=1, linger_ms=5, compression_type=compression_type)
    await producer.start()
    open_batches: dict[tuple[str, int], Any] = {}
    pending = []
    sent = 0
    try:
        for i, raw in enumerate(values):
            stamp = None if timestamps is None else timestamps[i]
            topic, key, partition = place(raw, config, producers)
            tp = (topic, partition)
            batch = open_batches.get(tp) or open_batches.setdefault(tp, producer.create_batch())
            value = encode(raw)
            if batch.append(key=key, value=value, timestamp=stamp) is None:
                batch.close()
                pending.append(await producer.send_batch(batch, tp[0], partition=tp[1]))
                batch = open_batches[tp] = producer.create_batch()
                if batch.append(key=key, value=value, timestamp=stamp) is None:
                    raise ValueError(f"a payload of {len(value)} bytes does not fit one producer batch")
            sent += 1
        for tp, batch in open_batches.items():
            if batch.record_count():
                batch.close()
                pending.append(await producer.send_batch(batch, tp[0], partition=tp[1]))
        for ack in pending:
            await ack
    finally:
        await producer.stop()
    return sent
