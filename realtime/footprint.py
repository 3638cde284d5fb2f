"""Redis memory and key counts of the speed layer by record kind, sampled cheaply.

Each Redis node is asked how many keys it holds (``DBSIZE``) and for ``per_node`` random keys
(``RANDOMKEY``, drawn with replacement), each measured with ``MEMORY USAGE``: a node's keys of a
kind are estimated as its key count times the kind's share of the sample, their memory as that
times the sample's mean size for the kind. A kind of share ``p`` is off by about
``sqrt(p (1 - p) / per_node)`` of the node's keys (one standard deviation). A node holding no
more keys than ``per_node`` is scanned whole instead, and its figures are exact. About
``2 x per_node`` commands per node, pipelined, whatever the data's size;
a kind rarer than one key in ``per_node`` may be missed (a few large keys: the streams, are
measured whole, below). The worker runs it on a timer (``realtime.memory_sample_interval_s``) and
exports ``attribution_redis_keys{kind}`` and ``attribution_redis_memory_bytes{kind}``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from realtime.keys import Keys
from realtime.metrics import Metrics

#: Record kinds, with the key pattern after ``<prefix>:`` (``realtime.keys`` builds the keys).
KIND_PATTERNS: tuple[tuple[str, str], ...] = (
    ("touches", r"\{u\d+\}:t:"),
    ("touch ids", r"\{u\d+\}:ti:"),
    ("counters", r"\{u\d+\}:n:"),
    ("pending", r"\{u\d+\}:pending$"),
    ("trim floors", r"\{u\d+\}:trimmed$"),
    ("claims", r"\{u\d+\}:d:"),
    ("cancel markers", r"\{u\d+\}:x:"),
    ("charges", r"\{b\d+\}:ch:"),
    ("spend", r"\{b\d+\}:spend:"),
    ("stats", r"\{b\d+\}:stats:"),
    ("queue", r"\{b\d+\}:queue"),
    ("ledger stream", r"\{b\d+\}:ledger"),
    ("budget events", r"\{b\d+\}:(budget-events|exhausted)$"),
    ("frequency caps", r"\{u\d+\}:f:"),
    ("pacing", r"\{b\d+\}:pace(-t|-p)?:"),
    ("invalid traffic", r"ivt:"),
    ("dead letters", r"dead-letters$"),
    ("clocks", r"clocks$"),
)
KINDS: tuple[str, ...] = (*(k for k, _ in KIND_PATTERNS), "other")
#: Kinds that grow with active users, with daily orders, and with campaigns x days (counters are
#: per user bucket, campaign and day; spend, stats and budget events per campaign and day): what
#: sizing multiplies.
USER_KINDS: tuple[str, ...] = ("touches", "touch ids")
ORDER_KINDS: tuple[str, ...] = ("pending", "claims", "cancel markers", "charges", "queue", "ledger stream")
CAMPAIGN_KINDS: tuple[str, ...] = ("counters", "spend", "stats", "budget events")


class Classifier:
    """The record kind of a key of one layout (its prefix)."""

    def __init__(self, prefix: str) -> None:
        self._rx = [(kind, re.compile("^" + re.escape(prefix) + ":" + rx)) for kind, rx in KIND_PATTERNS]

    def kind_of(self, key: str | bytes) -> str:
        name = key.decode(errors="replace") if isinstance(key, bytes) else key
        for kind, rx in self._rx:
            if rx.search(name):
                return kind
        return "other"


@dataclass
class Footprint:
    """Estimated keys and bytes by kind (``sampled``: how many keys were measured)."""

    keys: Counter[str] = field(default_factory=Counter)
    bytes: Counter[str] = field(default_factory=Counter)
    sampled: int = 0


async def _nodes(redis: Any) -> list[Any]:
    """Each primary of a cluster client (redis-py's ``get_primaries``, once it has read the
    cluster's slots), or None for one server."""
    primaries = getattr(redis, "get_primaries", None)
    if primaries is None:
        return [None]
    await redis.initialize()
    return list(primaries())


async def sample(redis: Any, keys: Keys, per_node: int = 1_000) -> Footprint:
    """Estimate the speed layer's keys and memory by kind (module docstring)."""
    classify = Classifier(keys.prefix)
    out = Footprint()
    for node in await _nodes(redis):
        target = {} if node is None else {"target_nodes": node}
        total = int(await redis.execute_command("DBSIZE", **target))
        if total == 0:
            continue
        if total <= per_node:  # no more keys than the sample: measure each, the figures are exact
            names = await _every_key(redis, target)
            total = len(names)
        elif node is None:
            async with redis.pipeline(transaction=False) as pipe:
                for _ in range(per_node):
                    pipe.execute_command("RANDOMKEY")
                names = list(await pipe.execute())
        else:  # a cluster pipeline routes by key, and RANDOMKEY has none: one node at a time
            names = [await redis.execute_command("RANDOMKEY", target_nodes=node) for _ in range(per_node)]
        names = [k for k in names if k is not None]
        if not names:
            continue
        sizes = await _memory(redis, names)
        seen: Counter[str] = Counter()
        size: Counter[str] = Counter()
        for name, n in zip(names, sizes, strict=True):
            kind = classify.kind_of(name)
            seen[kind] += 1
            size[kind] += int(n or 0)
        out.sampled += len(names)
        for kind, n in seen.items():
            out.keys[kind] += round(total * n / len(names))
            out.bytes[kind] += round(total * size[kind] / len(names))
    return out


async def _every_key(redis: Any, target: dict[str, Any]) -> list[bytes]:
    """Every key of one node (``SCAN`` to the end: the node holds no more than a sample)."""
    names: list[bytes] = []
    cursor: Any = 0
    while True:
        cursor, batch = await redis.scan(cursor=cursor, count=1000, **target)
        if isinstance(cursor, dict):  # a cluster client answers {node name: cursor} (one node here)
            (cursor,) = cursor.values()
        names.extend(batch)
        if int(cursor) == 0:
            return list(dict.fromkeys(names))  # SCAN may return a key twice


async def _memory(redis: Any, names: Iterable[bytes]) -> list[Any]:
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.execute_command("MEMORY USAGE", name)
        return list(await pipe.execute())


def export(footprint: Footprint, metrics: Metrics) -> None:
    """Set the ``/metrics`` gauges of every kind (0 for a kind the sample did not meet)."""
    for kind in KINDS:
        metrics.redis_keys.labels(kind).set(footprint.keys[kind])
        metrics.redis_memory.labels(kind).set(footprint.bytes[kind])
