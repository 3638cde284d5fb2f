"""The API's rate limiter (``reporting/lua/gcra.lua``) against a real redis-server.

Rates are tiny (one token per 1,000 s) so no token comes back while a test runs, however slow the
machine: the bucket then behaves as a counter of ``burst`` tokens, which a plain Python model
predicts exactly. Nothing here asserts on elapsed time.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from reporting.ratelimit import SOURCE, Rate, RateLimiter, address_bucket

pytestmark = pytest.mark.integration
SLOW = 0.001  # tokens a second: one per 1,000 s


def test_the_script_touches_one_key_only() -> None:
    # One key per call: it runs on a Redis Cluster client unchanged (one slot, no MULTI).
    assert set(re.findall(r"KEYS\[(\d+)\]", SOURCE)) == {"1"}
    assert "MULTI" not in SOURCE.upper().replace("MULTIPLE", "")


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(
    burst=st.integers(1, 12),
    costs=st.lists(st.integers(1, 12), min_size=1, max_size=25),
)
def test_a_bucket_allows_exactly_what_it_holds_and_a_refusal_takes_nothing(
    redis_server: Any, burst: int, costs: list[int]
) -> None:
    rate = Rate(SLOW, burst)
    bucket = f"prop:{uuid.uuid4()}"  # a fresh bucket per example (hypothesis repeats its own values)

    async def run() -> list[tuple[bool, int, float]]:
        redis = Redis.from_url(redis_server.url)
        limiter = RateLimiter(redis, "test")
        out = []
        for cost in costs:
            if cost > burst:
                with pytest.raises(ValueError, match="cost"):
                    await limiter.hit(bucket, rate, cost)
                continue
            v = await limiter.hit(bucket, rate, cost)
            out.append((v.allowed, v.remaining, v.retry_after_s))
        ttl_ms = await redis.pttl(limiter.key(bucket))
        await redis.aclose()
        # The key lives only until the bucket would be full again.
        assert ttl_ms <= burst * rate.interval_us / 1000
        return out

    got = asyncio.run(run())
    tokens = burst
    for (allowed, remaining, retry_after_s), cost in zip(got, [c for c in costs if c <= burst], strict=True):
        assert allowed == (cost <= tokens)
        if allowed:
            tokens -= cost
            assert retry_after_s == 0
        else:
            # Waiting for the missing tokens would do (less the few microseconds since).
            missing_s = (cost - tokens) * rate.interval_us / 1e6
            assert missing_s - 1 < retry_after_s <= missing_s
        assert remaining == tokens


def test_buckets_are_independent_and_shared_by_every_client(redis_url: str) -> None:
    rate = Rate(SLOW, 3)

    async def run() -> tuple[list[bool], list[bool], bool]:
        a, b = Redis.from_url(redis_url), Redis.from_url(redis_url)
        first, second = RateLimiter(a, "attr"), RateLimiter(b, "attr")  # two API processes
        taken = [(await lim.hit("key:x", rate)).allowed for lim in (first, second, first, second)]
        other = [(await first.hit("key:y", rate)).allowed for _ in range(3)]
        elsewhere = (await RateLimiter(a, "other").hit("key:x", rate)).allowed
        await a.aclose()
        await b.aclose()
        return taken, other, elsewhere

    taken, other, elsewhere = asyncio.run(run())
    assert taken == [True, True, True, False]
    assert other == [True, True, True]
    assert elsewhere


def test_a_fast_rate_refills(redis_url: str) -> None:
    # A million tokens a second: the next microsecond holds a token again. Only "allowed" is
    # asserted after a wait that no scheduler can make shorter than one microsecond.
    async def run() -> list[bool]:
        redis = Redis.from_url(redis_url)
        limiter = RateLimiter(redis, "attr")
        out = [(await limiter.hit("fast", Rate(1e6, 1))).allowed]
        await asyncio.sleep(0.01)
        out.append((await limiter.hit("fast", Rate(1e6, 1))).allowed)
        await redis.aclose()
        return out

    assert asyncio.run(run()) == [True, True]


def test_addresses_bucket_by_host_and_ipv6_by_its_64() -> None:
    assert address_bucket("127.0.0.1") == "ip:127.0.0.1"
    assert address_bucket("2001:db8::1") == address_bucket("2001:db8::ffff:1") == "ip:2001:db8::/64"
    assert address_bucket("2001:db8:0:1::1") != address_bucket("2001:db8::1")
    assert address_bucket(None) == "ip:unknown"
