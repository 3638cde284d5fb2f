"""The speed layer's Redis client under a burst: more concurrent commands than the pool holds
connections wait for one, none fails (redis-py's default pool raised MaxConnectionsError past
100, which the API answered as 503)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from realtime.client import MAX_CONNECTIONS, connect
from shared_logic.settings import RedisSettings

pytestmark = pytest.mark.integration


def test_a_burst_past_the_pool_waits_for_connections_and_none_fails(redis_server: Any) -> None:
    async def burst() -> list[Any]:
        redis = connect(RedisSettings(url=redis_server.url))
        try:
            # Each BLPOP holds its connection for 0.2 s: three times the pool at once.
            calls = [redis.blpop([f"test-pool-empty-{i}"], timeout=0.2) for i in range(3 * MAX_CONNECTIONS)]
            results = await asyncio.gather(*calls, return_exceptions=True)
            assert len(redis.connection_pool._in_use_connections) == 0
            return results
        finally:
            await redis.aclose()

    results = asyncio.run(burst())
    assert [r for r in results if isinstance(r, BaseException)] == []
    assert results == [None] * (3 * MAX_CONNECTIONS)
