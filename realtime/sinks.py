"""Dead-letter sinks: where events that break the contract go, with their reason.

Picked by URL like Faust's stores: ``memory://`` (tests, embedded),
``redis://`` (a capped Redis stream, the embedded default), ``kafka://`` (a
dead-letter topic in production, sent through the Faust app).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Protocol

import orjson
from redis.asyncio import Redis

Raw = bytes | bytearray | str | dict[str, Any]
DeadLetter = tuple[Raw, dict[str, str]]


def raw_bytes(raw: Raw) -> bytes:
    """The payload as it came, as bytes (a dict is encoded as JSON)."""
    if isinstance(raw, bytes | bytearray):
        return bytes(raw)
    if isinstance(raw, str):
        return raw.encode("utf-8", errors="surrogateescape")
    try:
        return orjson.dumps(raw, default=str)
    except TypeError:
        return repr(raw).encode()


class DeadLetterSink(Protocol):
    async def send_many(self, letters: Sequence[DeadLetter]) -> None: ...


class MemoryDeadLetters:
    """Keeps dead letters in a list (tests and the embedded default without Redis)."""

    def __init__(self) -> None:
        self.letters: list[DeadLetter] = []

    async def send_many(self, letters: Sequence[DeadLetter]) -> None:
        self.letters.extend(letters)


class RedisDeadLetters:
    """Appends dead letters to a capped Redis stream (raw payload, field, value, rule, time)."""

    def __init__(self, redis: Redis, key: str, maxlen: int = 1_000_000) -> None:
        self.redis, self.key, self.maxlen = redis, key, maxlen

    async def send_many(self, letters: Sequence[DeadLetter]) -> None:
        if not letters:
            return
        now = str(int(time.time() * 1000))
        async with self.redis.pipeline(transaction=False) as pipe:
            for raw, reason in letters:
                fields: dict[Any, Any] = {"raw": raw_bytes(raw), "at_ms": now, **reason}
                pipe.xadd(self.key, fields, maxlen=self.maxlen, approximate=True)
            await pipe.execute()

    async def read(self, count: int = 1000) -> list[dict[str, str]]:
        rows = await self.redis.xrange(self.key, count=count)
        return [{_text(k): _text(v) for k, v in (fields or {}).items()} for _, fields in rows or []]


def _text(value: bytes | str | None) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class KafkaDeadLetters:
    """Sends dead letters to a Kafka topic through a Faust topic object (production)."""

    def __init__(self, topic: Any) -> None:
        self.topic = topic

    async def send_many(self, letters: Sequence[DeadLetter]) -> None:
        for raw, reason in letters:
            await self.topic.send(
                value=orjson.dumps({"raw": raw_bytes(raw).decode(errors="replace"), **reason})
            )
