"""Dead-letter sinks: where events that break the contract go, with their reason.

Chosen by URL through ``DEAD_LETTERS`` (as Faust picks its stores):
``memory://`` (tests), ``redis://`` (a capped stream in the speed layer's
Redis, the embedded default), ``kafka://`` (the broker's dead-letter topic,
production). Every sink keeps a bounded record (``contract.dead_letter``):
the first bytes of the payload, its length and SHA-256, and the field, value
and rule it broke.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, Protocol

import orjson

from shared_logic.contract import DeadLetterRow, dead_letter
from storage.registry import Backend, Registry

log = logging.getLogger(__name__)

#: Stream nodes ``MEMORY USAGE`` samples to estimate the dead-letter stream's size.
_SAMPLES = 5

Raw = Any  # bytes, str or a decoded dict: whatever came in
DeadLetter = tuple[Raw, dict[str, str]]


def now_ms() -> int:
    return int(time.time() * 1000)


class DeadLetterSink(Protocol):
    async def send_many(self, letters: Sequence[DeadLetter]) -> None: ...


class MemoryDeadLetters:
    """Keeps dead letters in a list (tests)."""

    def __init__(self) -> None:
        self.letters: list[DeadLetterRow] = []

    @classmethod
    def from_url(cls, url: str, **context: Any) -> MemoryDeadLetters:
        return cls()

    async def send_many(self, letters: Sequence[DeadLetter]) -> None:
        at = now_ms()
        self.letters.extend(dead_letter(raw, reason, at) for raw, reason in letters)


class RedisDeadLetters:
    """Appends dead letters to a Redis stream capped by count (``XADD MAXLEN``) and by memory.

    The memory cap is checked after each write: Redis's own estimate of the stream's size
    (``MEMORY USAGE`` on a few sampled nodes, cheap whatever the length) above ``max_bytes`` trims
    the oldest entries to the share of the count that fits in 90% of it, so the stream holds the
    newest dead letters and stays under its memory whatever their sizes."""

    def __init__(
        self, redis: Any, key: str, maxlen: int = 1_000_000, max_bytes: int = 256 * 1024 * 1024
    ) -> None:
        self.redis, self.key, self.maxlen, self.max_bytes = redis, key, maxlen, max_bytes

    @classmethod
    def from_url(cls, url: str, **context: Any) -> RedisDeadLetters:
        realtime = context["settings"].realtime
        return cls(
            context["redis"],
            context["keys"].dead_letters(),
            realtime.dead_letter_maxlen,
            realtime.dead_letter_max_mib * 1024 * 1024,
        )

    async def send_many(self, letters: Sequence[DeadLetter]) -> None:
        if not letters:
            return
        at = now_ms()
        async with self.redis.pipeline(transaction=False) as pipe:
            for raw, reason in letters:
                row = asdict(dead_letter(raw, reason, at))
                pipe.xadd(
                    self.key, {k: str(v) for k, v in row.items()}, maxlen=self.maxlen, approximate=False
                )
            pipe.memory_usage(self.key, samples=_SAMPLES)
            pipe.xlen(self.key)
            *_, used, length = await pipe.execute()
        if used and used > self.max_bytes and length > 1:
            keep = max(1, int(length * 0.9 * self.max_bytes / used))
            trimmed = await self.redis.xtrim(self.key, maxlen=keep, approximate=False)
            log.warning(
                "dead-letter stream %s over %d bytes (%d): its %d oldest entries trimmed",
                self.key,
                self.max_bytes,
                used,
                trimmed,
            )

    async def read(self, count: int = 1000) -> list[dict[str, str]]:
        rows = await self.redis.xrange(self.key, count=count)
        return [{_text(k): _text(v) for k, v in (fields or {}).items()} for _, fields in rows or []]


def _text(value: bytes | str | None) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class KafkaDeadLetters:
    """Sends dead letters to the broker's dead-letter topic (production), through the worker's producer."""

    def __init__(self, producer: Any, topic: str) -> None:
        self.producer, self.topic = producer, topic

    @classmethod
    def from_url(cls, url: str, **context: Any) -> KafkaDeadLetters:
        return cls(context["producer"], context["topic"])

    async def send_many(self, letters: Sequence[DeadLetter]) -> None:
        at = now_ms()
        sent = [
            await self.producer.send(self.topic, orjson.dumps(asdict(dead_letter(raw, reason, at))))
            for raw, reason in letters
        ]
        for ack in sent:
            await ack


DEAD_LETTERS: Registry[DeadLetterSink] = Registry(
    "dead-letter sink",
    {
        "memory": Backend("realtime.deadletters:MemoryDeadLetters", "realtime"),
        "redis": Backend("realtime.deadletters:RedisDeadLetters", "realtime"),
        "kafka": Backend("realtime.deadletters:KafkaDeadLetters", "realtime"),
    },
)
