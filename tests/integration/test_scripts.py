"""Every Lua script reads and checks first and writes last: an error after its checks leaves Redis
exactly as it was (Redis never rolls a script back)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from devtools.synthetic import SyntheticConfig, generate
from realtime import scripts
from realtime.deadletters import MemoryDeadLetters
from realtime.engine import SpeedLayer
from realtime.ledger import LedgerFlusher
from shared_logic.settings import Settings
from storage import open_lake
from tests.helpers import redis_snapshot

pytestmark = pytest.mark.integration
WRITES = ("SET", "DEL", "HSET", "HDEL", "HINCRBY", "ZADD", "ZREM", "ZREMRANGEBYSCORE", "XADD", "XTRIM",
          "PEXPIRE", "INCRBY", "DECRBY", "EXPIRE", "HSETNX")  # fmt: skip


@pytest.mark.parametrize("name", scripts.NAMES)
def test_nothing_above_the_writes_line_writes(name: str) -> None:
    text = scripts.source(name)
    assert text.count(scripts.WRITES_BELOW) == 1, name
    reads = text.split(scripts.WRITES_BELOW)[0]
    written = re.findall(r"redis\.call\('(\w+)'", reads)
    assert written, name  # it does read
    assert not set(written) & set(WRITES), (name, set(written) & set(WRITES))


def test_an_error_right_after_the_checks_leaves_redis_unchanged(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Run real traffic; for every call of every script, first run the same call with an error forced at
    its writes line: Redis must be unchanged. Then the real call runs, and the outcome is unaffected."""
    traffic = generate(SyntheticConfig(users=150, days=2, cancel_rate=0.3, duplicate_rate=0.05))
    forced: dict[str, int] = {}
    original = scripts.Scripts.run

    async def run_twice(self: scripts.Scripts, redis: Any, calls: Any, tail: Any = ()) -> list[Any]:
        for name, keys, args in calls:
            text = self.text[name].replace(scripts.WRITES_BELOW, "error('forced after the checks')\n--", 1)
            before = await redis_snapshot(url)
            with pytest.raises(Exception, match="forced after the checks"):
                await redis.eval(text, len(keys), *keys, *args)
            assert await redis_snapshot(url) == before, name
            forced[name] = forced.get(name, 0) + 1
        return await original(self, redis, calls, tail)

    url = redis_url
    monkeypatch.setattr(scripts.Scripts, "run", run_twice)

    async def feed() -> None:
        redis = Redis.from_url(url)
        engine = SpeedLayer(redis, traffic.catalog, Settings().replace(redis_url=url), MemoryDeadLetters())
        await engine.start()
        values = [e.payload for e in traffic.events]
        for i in range(0, len(values), 400):
            await engine.process(values[i : i + 400])
        await engine.drain()
        await LedgerFlusher(redis, engine.keys, open_lake(f"file://{tmp_path}/lake"), batch=5).flush()
        await redis.aclose()

    asyncio.run(feed())
    assert set(forced) == set(scripts.NAMES)
    assert min(forced.values()) >= 3


def test_a_counter_past_two_to_the_53_is_refused_before_any_write(redis_url: str) -> None:
    """Orders at the contract's maximum amount: once a campaign's daily revenue would pass 2**53 - 1, the
    settlement is refused, dead-lettered, and leaves every key as it was (nothing half-charged)."""
    from devtools.synthetic import make_catalog
    from shared_logic.money import MAX_AMOUNT_MINOR, MAX_COUNTER_MINOR

    catalog = make_catalog(SyntheticConfig())
    campaign = next(c for c in catalog if c.lever == "promo" and c.budget.daily_minor)
    code = sorted(campaign.promo_codes)[0]
    merchant = sorted(campaign.merchant_ids)[0]
    n = MAX_COUNTER_MINOR // (MAX_AMOUNT_MINOR - 1) + 3  # enough orders to pass the bound
    orders = [
        {
            "event_id": f"e{i}",
            "event_type": "order",
            "event_time": 1_793_527_200_000 + i,
            "user_id": f"u{i}",
            "order_id": f"o{i}",
            "merchant_id": merchant,
            "amount_minor": MAX_AMOUNT_MINOR - 1,
            "currency": campaign.currency,
            "promo_codes": [code],
        }
        for i in range(n)
    ]

    async def feed() -> tuple[Any, Any]:
        redis = Redis.from_url(redis_url)
        sink = MemoryDeadLetters()
        engine = SpeedLayer(redis, catalog, Settings().replace(redis_url=redis_url), sink)
        await engine.start()
        await engine.process(orders)
        await engine.drain()
        stats = await redis.hgetall(engine.keys.stats(campaign.campaign_id, "2026-11-01"))
        await redis.aclose()
        return stats, sink.letters

    stats, letters = asyncio.run(feed())
    accepted = MAX_COUNTER_MINOR // (MAX_AMOUNT_MINOR - 1)
    assert int(stats[b"orders"]) == accepted
    assert int(stats[b"revenue"]) == accepted * (MAX_AMOUNT_MINOR - 1) <= MAX_COUNTER_MINOR
    refused = [x for x in letters if x.rule == "a counter would pass 2^53 - 1"]
    assert len(refused) == n - accepted
