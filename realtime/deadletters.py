"""Dead-letter sinks: where events that break the contract go, with their reason.

Chosen by URL through ``DEAD_LETTERS`` (as Faust picks its stores):
``memory://`` (tests), ``redis://`` (a capped stream in the speed layer's
Redis, the embedded default), ``kafka://`` (the broker's dead-letter topic,
production). Every sink keeps a bounded record (``contract.dead_letter``):
the first bytes of the payload, its length and SHA-256, and the field, value
and rule it broke.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, Protocol

import orjson

from shared_logic.contract import DeadLetterRow, dead_letter
from storage.registry import Backend, Registry

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
    """Appends dead letters to a capped Redis stream."""

    def __init__(self, redis: Any, key: str, maxlen: int = 1_000_000) -> None:
        self.redis, self.key, self.maxlen = redis, key, maxlen

    @classmethod
    def from_url(cls, url: str, **context: Any) -> RedisDeadLetters:
        return cls(
            context["redis"], context["keys"].dead_letters(), context["settings"].realtime.dead_letter_maxlen
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
            await pipe.execute()

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
