"""A worker refuses a Redis filled with another key layout (issue 21: the budget shards' default
went from 1 to 16, and a campaign's spend read from another shard than it was written to would
lose its caps), on a real redis-server.

Records of an earlier encoding are refused too (version 1: decisions as JSON objects, touch ids
holding whole members), whether the layout record names it or predates it.

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
    assert r.get("attr:layout") == b"records=2 user_buckets=64 budget_shards=16"
    asyncio.run(_start(redis_url))  # the same layout starts again
    with pytest.raises(InvalidSetting, match="ATTRIBUTION_KEYS_BUDGET_SHARDS") as caught:
        asyncio.run(_start(redis_url, keys_budget_shards=4))
    assert "records=2 user_buckets=64 budget_shards=16" in str(caught.value)
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
    assert r.get("attr:layout") == b"records=2 user_buckets=64 budget_shards=1"
    r.close()


def test_a_redis_of_the_version_1_records_is_refused(redis_url: str) -> None:
    """A layout record of the same buckets and shards but the earlier records (no version named):
    this worker would misread its decisions and touch ids, so it refuses and names what to do."""
    r = redis_sync.Redis.from_url(redis_url)
    r.set("attr:layout", "user_buckets=64 budget_shards=16")
    with pytest.raises(InvalidSetting, match="records of version 1") as caught:
        asyncio.run(_start(redis_url))
    assert caught.value.field == "ATTRIBUTION_REDIS_URL"
    assert "start on an empty Redis" in str(caught.value)
    assert r.get("attr:layout") == b"user_buckets=64 budget_shards=16"
    r.close()


@pytest.mark.parametrize(
    "key", ["attr:{u3}:ti:u1", "attr:{u3}:d:o1", "attr:{b0}:queue:p", "attr:{b2}:ledger"]
)
def test_version_1_records_without_a_layout_record_are_refused(redis_url: str, key: str) -> None:
    """A Redis filled before the record existed holds version 1 records: refused by any one of them,
    in the layout it used (one budget shard) too; its spend alone (no record whose encoding changed)
    is not."""
    r = redis_sync.Redis.from_url(redis_url)
    r.set(Keys("attr", 64, 1).spend_lifetime("ad1"), 500)
    if key.endswith(":ledger"):
        r.xadd(key, {"kind": "charge"})
    elif key.endswith(":queue:p") or ":ti:" in key:
        r.hset(key, "f", "v")
    else:
        r.set(key, '0|d|{"order_id": "o1"}')
    with pytest.raises(InvalidSetting, match="before the layout was recorded") as caught:
        asyncio.run(_start(redis_url, keys_budget_shards=1))
    assert caught.value.value == key
    assert r.get("attr:layout") is None
    r.delete(key)
    asyncio.run(_start(redis_url, keys_budget_shards=1))
    assert r.get("attr:layout") == b"records=2 user_buckets=64 budget_shards=1"
    r.close()
