"""Which topic-partition an event belongs to: its type's topic, partitioned by ``user_id`` with
Kafka's default partitioner (murmur2 of the key, as the Java client and aiokafka compute it).

Producers (the traffic generator of ``make live``, tests) and the replay use this one
function, so a replay of a file meets the events in the very partitions a broker would hold
them in, and decides exactly as a worker consuming them from the broker.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiokafka.partitioner import murmur2

from realtime.clock import TP
from shared_logic.events import EVENT_TYPES, MAX_PAYLOAD_BYTES
from shared_logic.settings import RealtimeSettings


def partition_for(key: bytes | None, partitions: int) -> int:
    """Kafka's default partitioner for a keyed record (an unkeyed one goes to partition 0 here)."""
    if key is None:
        return 0
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


def route(raw: Any) -> tuple[str, bytes | None]:
    """The event type and the key a producer sends a payload with; never raises (a payload that is
    not an event goes to the first type's topic, unkeyed, and becomes a dead letter there)."""
    data: Any = raw
    try:
        if isinstance(raw, (bytes, bytearray, str)) and len(raw) <= MAX_PAYLOAD_BYTES:
            data = orjson.loads(raw)
    except Exception:  # not JSON, too deep, not UTF-8: routed as unkeyed
        data = None
    if not isinstance(data, dict):
        return EVENT_TYPES[0], None
    etype = data.get("event_type")
    user = data.get("user_id")
    key = user.encode("utf-8", errors="surrogateescape") if isinstance(user, str) and user else None
    return (etype if etype in EVENT_TYPES else EVENT_TYPES[0]), key


def topic_partition(raw: Any, config: RealtimeSettings, prefix: str = "") -> TP:
    etype, key = route(raw)
    return prefix + config.topic(etype), partition_for(key, config.topic_partitions)


def all_partitions(config: RealtimeSettings, prefix: str = "") -> list[TP]:
    return [(prefix + config.topic(t), p) for t in EVENT_TYPES for p in range(config.topic_partitions)]
