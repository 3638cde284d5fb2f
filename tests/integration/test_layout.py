"""A worker refuses a Redis filled with another key layout (issue 21: the budget shards' default
went from 1 to 16, and a campaign's spend read from another shard than it was written to would
lose its caps), on a real redis-server.

Mutants these kill (tried): ``ensure_layout`` not called by ``SpeedLayer.start``; the record
compared but the earlier layout's spend keys not scanned (a Redis filled before the record).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis as redis_sync

from realtime.client import connect
from realtime.deadletters import MemoryDeadLetters
from realtime.engine import SpeedLayer
from realtime.keys import Keys
from shared_logic import Catalog
from shared_logic.errors import InvalidSetting
from shared_logic.settings import RedisSettings, Settings
from tests.factories import campaign

pytestmark = pytest.mark.integration

CAMPAIGNS = [campaign(f"ad{i}") for i in range(8)]


async def _start(url: str, **over: Any) -> SpeedLayer:
    settings = Settings().replace(redis_url=url, **over)
    engine = SpeedLayer(connect(RedisSettings(url=url)), Catalog(CAMPAIGNS), settings, MemoryDeadLetters())
    try:
        await engine.start()
    finally:
        await engine.redis.aclose()
    return engine


def test_a_worker_records_its_layout_and_one_of_another_layout_is_refused(redis_url: str) -> None:
    asyncio.run(_start(redis_url))
    r = redis_sync.Redis.from_url(redis_url)
    assert r.get("attr:layout") == b"user_buckets=64 budget_shards=16"
    asyncio.run(_start(redis_url))  # the same layout starts again
    with pytest.raises(InvalidSetting, match="ATTRIBUTION_KEYS_BUDGET_SHARDS") as caught:
        asyncio.run(_start(redis_url, keys_budget_shards=4))
    assert "user_buckets=64 budget_shards=16" in str(caught.value)
    r.close()


def test_a_redis_filled_by_the_one_shard_layout_is_refused_unless_the_worker_keeps_it(redis_url: str) -> None:
    """No record (written before it existed): the lifetime spend keys tell where the budget state is."""
    old = Keys("attr", 64, 1)
    r = redis_sync.Redis.from_url(redis_url)
    for c in CAMPAIGNS:
        r.set(old.spend_lifetime(c.campaign_id), 500)
    assert any(Keys("attr", 64, 16).shard(c.campaign_id) != 0 for c in CAMPAIGNS)
    with pytest.raises(InvalidSetting, match="earlier layout") as caught:
        asyncio.run(_start(redis_url))
    assert "it used at least 1" in str(caught.value)
    assert r.get("attr:layout") is None
    asyncio.run(_start(redis_url, keys_budget_shards=1))
    assert r.get("attr:layout") == b"user_buckets=64 budget_shards=1"
    r.close()
