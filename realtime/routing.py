"""Which topic-partition an event belongs to: its type's topic, and a partition chosen the way
the producer of that topic chooses it.

The engine's own producers (the traffic generator of ``make live``, the tests) key every
event by ``user_id`` with Kafka's default partitioner (murmur2 of the key, as the Java client
and aiokafka compute it). Other teams' producers differ: librdkafka-based clients
(confluent-kafka-python, Go, .NET, Node rdkafka) default to ``consistent_random``, a CRC32 of the
key; some send no key, or key by a session or device id. ``Producer`` names such a choice, so a
replay can meet the events in the very partitions a broker holds them in, and decide exactly as
the workers consuming them.

Under ``realtime.release = group`` (the default) the speed layer's decisions do not depend on
where a producer puts a user's events, only on each partition's sequence; ``is_misrouted``
tells the metric that counts events outside their user's murmur2 partition (what
``realtime.release = partition`` would get wrong).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson
from aiokafka.partitioner import murmur2

from realtime.clock import TP
from shared_logic.events import EVENT_TYPES, MAX_PAYLOAD_BYTES
from shared_logic.settings import RealtimeSettings

Partitioner = Callable[[bytes, int], int]


def murmur2_partition(key: bytes, partitions: int) -> int:
    """Kafka's default partitioner for a keyed record (Java client, aiokafka)."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


def crc32_partition(key: bytes, partitions: int) -> int:
    """librdkafka's default ``consistent_random`` for a keyed record: CRC32 of the key."""
    return zlib.crc32(key) % partitions


PARTITIONERS: Final[Mapping[str, Partitioner]] = {"murmur2": murmur2_partition, "crc32": crc32_partition}


def partition_for(key: bytes | None, partitions: int) -> int:
    """The engine's producers' partition for a key (an unkeyed record goes to partition 0 here)."""
    if key is None:
        return 0
    return murmur2_partition(key, partitions)


@dataclass(frozen=True, slots=True)
class Producer:
    """How one producer places its records: a partitioner over the bytes of ``key_field``.

    ``key_field=None`` is an unkeyed producer: real clients then spread records at random (or
    stick to a partition per batch); here the event id's CRC32 stands for that spread, so a
    replay can reproduce it."""

    partitioner: str = "murmur2"
    key_field: str | None = "user_id"

    def __post_init__(self) -> None:
        if self.partitioner not in PARTITIONERS:
            raise ValueError(f"partitioner = {self.partitioner!r}: one of {', '.join(PARTITIONERS)}")

    def place(self, data: Any, partitions: int) -> tuple[bytes | None, int]:
        """The key this producer sends a payload with and the partition it lands in."""
        fields = data if isinstance(data, dict) else {}
        key = _key_bytes(fields.get(self.key_field)) if self.key_field else None
        if key is not None:
            return key, PARTITIONERS[self.partitioner](key, partitions)
        spread = _key_bytes(fields.get("event_id"))
        return None, (crc32_partition(spread, partitions) if spread is not None else 0)


DEFAULT_PRODUCER: Final = Producer()
Producers = Mapping[str, Producer]  # by event type; a type not named uses DEFAULT_PRODUCER


def _key_bytes(value: Any) -> bytes | None:
    return value.encode("utf-8", errors="surrogateescape") if isinstance(value, str) and value else None


def _parsed(raw: Any) -> Any:
    try:
        if isinstance(raw, (bytes, bytearray, str)) and len(raw) <= MAX_PAYLOAD_BYTES:
            return orjson.loads(raw)
    except Exception:  # not JSON, too deep, not UTF-8: routed as unkeyed
        return None
    return raw


def route(raw: Any) -> tuple[str, bytes | None]:
    """The event type and the user key the engine's producers send a payload with; never raises (a
    payload that is not an event goes to the first type's topic, unkeyed, and becomes a dead letter
    there)."""
    data = _parsed(raw)
    if not isinstance(data, dict):
        return EVENT_TYPES[0], None
    etype = data.get("event_type")
    return (etype if etype in EVENT_TYPES else EVENT_TYPES[0]), _key_bytes(data.get("user_id"))


def place(
    raw: Any, config: RealtimeSettings, producers: Producers | None = None
) -> tuple[str, bytes | None, int]:
    """Topic, key and partition of a payload as its type's producer sends it."""
    data = _parsed(raw)
    etype = data.get("event_type") if isinstance(data, dict) else None
    etype = etype if etype in EVENT_TYPES else EVENT_TYPES[0]
    producer = (producers or {}).get(etype, DEFAULT_PRODUCER)
    if producer == DEFAULT_PRODUCER:
        _, key = route(raw)
        return config.topic(etype), key, partition_for(key, config.topic_partitions)
    key, partition = producer.place(data, config.topic_partitions)
    return config.topic(etype), key, partition


def topic_partition(
    raw: Any, config: RealtimeSettings, prefix: str = "", producers: Producers | None = None
) -> TP:
    topic, _, partition = place(raw, config, producers)
    return prefix + topic, partition


def all_partitions(config: RealtimeSettings, prefix: str = "") -> list[TP]:
    return [(prefix + config.topic(t), p) for t in EVENT_TYPES for p in range(config.topic_partitions)]


class UserPartitions:
    """Each user's partition under Kafka's default partitioner, memoised (murmur2 in Python costs
    a few microseconds; users recur). For the metric of events outside their user's partition."""

    def __init__(self, partitions: int, size: int = 200_000) -> None:
        self.partitions = partitions
        self.size = size
        self._memo: dict[str, int] = {}

    def of(self, user_id: str) -> int:
        p = self._memo.get(user_id)
        if p is None:
            if len(self._memo) >= self.size:
                self._memo.clear()
            p = self._memo[user_id] = murmur2_partition(
                user_id.encode("utf-8", errors="surrogateescape"), self.partitions
            )
        return p
