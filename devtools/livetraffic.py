"""Live traffic for ``make live``: synthetic behaviour replayed at a set rate, stamped now.

The generator's days (``devtools.synthetic``, in arrival order: touches before the orders
they earn, cancels after their orders, a few duplicates and malformed payloads) are sent one
event after another, each with ``event_time`` set to the wall clock as it leaves, so the worker
sees traffic of today. When a day is used up the next one starts with the next seed (new event
and order ids) on the same catalog. The pace is kept by ``aiolimiter`` (a leaky bucket).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from devtools import awkward
from devtools.synthetic import SyntheticConfig, generate, make_catalog
from devtools.traffic import encode
from realtime import broker
from realtime.broker import ensure_topics
from realtime.routing import partition_for, route
from shared_logic import Catalog
from shared_logic.settings import RealtimeSettings

#: The catalog's lifetime caps are sized for this many days of traffic.
CATALOG_DAYS = 30


def live_catalog(users: int, seed: int, rate: float) -> Catalog:
    """The catalog the live traffic is drawn on: the generator's, lifetime caps for a month, every
    cap times ``cap_scale(rate)``.

    Live traffic plays a synthetic day in about ``events_per_day / rate`` seconds (half a minute at
    300/s), so the generator's caps, sized for a day, would all bind within a minute or two. Scaled,
    the tight third of the campaigns caps within the first few minutes and the rest keep spending.
    """
    scale = cap_scale(rate)
    records = []
    for record in make_catalog(_config(users, seed, seed, days=CATALOG_DAYS)).to_records():
        budget = dict(record["budget"])
        for name in ("daily_minor", "lifetime_minor"):
            if budget.get(name) is not None:
                budget[name] *= scale
        records.append({**record, "budget": budget})
    return Catalog.from_records(records)


def cap_scale(rate: float) -> int:
    """How much the live caps exceed the generator's: one per 150 events a second, at least one."""
    return max(1, round(rate / 150))


def _config(users: int, seed: int, catalog_seed: int, days: int = 1) -> SyntheticConfig:
    today = datetime.now(UTC).date()
    return SyntheticConfig(
        seed=seed,
        catalog_seed=catalog_seed,
        users=users,
        days=days,
        start=today,
        late_rate=0.0,
        awkward_rate=awkward.DEFAULT_RATE,
        awkward_kinds=awkward.LIVE_KINDS,
    )


@dataclass
class LiveTraffic:
    """Produces to the input topics at ``rate`` events per second until stopped."""

    config: RealtimeSettings
    rate: float = 300.0
    users: int = 2_000
    seed: int = 7
    sent: int = 0
    days: int = 0  # synthetic days used so far

    def payloads(self) -> Iterator[Any]:
        """One synthetic day after another (seed, seed + 1, ...) on the catalog of ``seed``."""
        seed = self.seed
        while True:
            for event in generate(_config(self.users, seed, self.seed)).events:
                yield event.payload
            self.days += 1
            seed += 1

    async def run(self, stop: asyncio.Event) -> None:
        from aiolimiter import AsyncLimiter

        await ensure_topics(self.config)
        producer = broker.producer(self.config, linger_ms=20)
        await producer.start()
        chunk = max(1, int(self.rate // 20))  # acquire a few at a time: 20 wake-ups a second
        limiter = AsyncLimiter(self.rate, 1.0)
        n = self.config.topic_partitions
        source = self.payloads()
        try:
            while not stop.is_set():
                await limiter.acquire(chunk)
                now = int(time.time() * 1000)
                for _ in range(chunk):
                    value = stamped(next(source), now)
                    etype, key = route(value)
                    topic = self.config.topic(etype)
                    await producer.send(topic, encode(value), key=key, partition=partition_for(key, n))
                    self.sent += 1
        finally:
            await producer.stop()


_RFC3339: Final = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$")


def stamped(payload: Any, now_ms: int) -> Any:
    """The payload with its event time set to ``now_ms`` (a malformed one as it is).

    An RFC 3339 time (the awkward scenes send some) is written again at ``now_ms`` in its own
    offset and number of fraction digits: left as it was, it would date the event on the day it
    was generated for, and the live loop would carry late data that it does not mean to test.
    """
    if not isinstance(payload, dict):
        return payload
    value = payload.get("event_time")
    if isinstance(value, int) and not isinstance(value, bool):
        return {**payload, "event_time": now_ms}
    if isinstance(value, str) and (m := _RFC3339.match(value)):
        digits, zone = m.group(1) or "", m.group(2)
        offset = 0 if zone == "Z" else (1 if zone[0] == "+" else -1) * (int(zone[1:3]) * 60 + int(zone[4:6]))
        text = awkward.rfc3339(
            now_ms - now_ms % 1000 if not digits else now_ms, offset, len(digits), zone == "Z"
        )
        return {**payload, "event_time": text}
    return payload
