"""The cached mode of the ad server's answer (``serving.CachedAnswerReader``) against a real
redis-server and a Redis Cluster: answers equal the direct read's with no round trip for the budget
part, a spend change reaches memory within the bound, and a lost tracking connection or a lost
server never leaves stale state served past the bound."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from devtools.servers import LocalRedis
from realtime.client import connect
from realtime.keys import Keys
from realtime.pacing import write_state
from serving import AnswerReader, CachedAnswerReader, Reason, StaleBudgetState
from shared_logic import budget_day
from shared_logic.pacing import PacingState
from shared_logic.settings import KeySettings, RedisSettings
from tests.factories import HOUR, MIN, campaign, catalog

pytestmark = pytest.mark.integration

NOW = int(time.time() * 1000)
DAY = budget_day(NOW, "UTC").isoformat()
MAX_AGE_MS = 400


@pytest.fixture(autouse=True)
def _now() -> None:
    """``NOW`` and ``DAY`` at each test's start, not at import: the cached reader loads the budget
    day of its own clock (the wall clock), so a ``NOW`` taken when the suite was collected named
    yesterday's day once a long run crossed midnight UTC (a fresh-clone run collected at 23:57 ran
    this file at 00:05: its 6 tests failed on the day's keys the reader never loaded)."""
    global NOW, DAY  # the module's helpers and tests read them
    NOW = int(time.time() * 1000)
    DAY = budget_day(NOW, "UTC").isoformat()


class CountingClient:
    """The client, counting the pipelines it sends (each one is one round trip per node)."""

    def __init__(self, redis: Any) -> None:
        self.redis, self.pipelines = redis, 0

    def pipeline(self, **kw: Any) -> Any:
        self.pipelines += 1
        return self.redis.pipeline(**kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.redis, name)


def _campaigns(n: int, capped_every: int = 0) -> list[Any]:
    return [
        campaign(
            f"c{i}",
            budget={"daily_minor": 1_000, **({"timezone": "Asia/Tokyo"} if i % 7 == 3 else {})},
            **(
                {"frequency_cap": {"impressions": 2, "window_ms": HOUR}}
                if capped_every and i % capped_every == 0
                else {}
            ),
        )
        for i in range(n)
    ]


async def _fill(redis: Any, keys: Keys, camps: list[Any], rng: random.Random) -> None:
    for c in camps:
        day = budget_day(NOW, c.budget.timezone).isoformat()
        await redis.set(keys.spend_day(c.campaign_id, day), rng.choice([0, 250, 999, 1_000]))
        await redis.set(keys.spend_lifetime(c.campaign_id), 5_000)
        if rng.random() < 0.7:
            state = PacingState(day, NOW - MIN, round(rng.random(), 3), 10.0, 0.4, liability_minor=3.5)
            await write_state(redis, keys, c.campaign_id, state)
        if c.frequency_cap is not None:
            fkey = keys.frequency(keys.bucket("u1"), "u1", c.campaign_id)
            seen = rng.randint(0, 3)
            if seen:
                await redis.zadd(fkey, {f"e{k}": NOW - k * MIN for k in range(seen)})


async def _until(predicate: Any, timeout_s: float) -> float:
    """Seconds until ``predicate()`` holds (fails the test past ``timeout_s``)."""
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError(f"not within {timeout_s} s")
        await asyncio.sleep(0.001)
    return time.monotonic() - t0


async def test_cached_answers_equal_the_direct_read_with_no_round_trip_for_the_budget(
    speed_redis_url: str,
) -> None:
    redis = connect(RedisSettings(url=speed_redis_url))
    keys = Keys.of(KeySettings(budget_shards=8))
    camps = _campaigns(60, capped_every=5)
    await _fill(redis, keys, camps, random.Random(7))
    cat = catalog(*camps)
    counting = CountingClient(redis)
    cached = CachedAnswerReader(AnswerReader(counting, cat, keys), max_age_ms=MAX_AGE_MS, heartbeat_ms=20)
    await cached.start()
    direct = AnswerReader(redis, cat, keys)
    try:
        uncapped = [*[c.campaign_id for c in camps if c.frequency_cap is None][:40], "nope"]
        before = counting.pipelines
        got = await cached.answer("u1", uncapped, NOW)
        assert counting.pipelines == before  # the budget part came from memory
        assert got == await direct.answer("u1", uncapped, NOW)
        assert {a.reason for a in got} >= {None, Reason.BUDGET_EXHAUSTED, Reason.UNKNOWN}

        mixed = [c.campaign_id for c in camps[:50]]
        before = counting.pipelines
        got = await cached.answer("u1", mixed, NOW)
        assert counting.pipelines == before + 1  # the user's frequency part only
        assert got == await direct.answer("u1", mixed, NOW)
        assert cached.stats.fallbacks == 0
        assert any(a.reason is Reason.FREQUENCY_CAPPED for a in got)
    finally:
        await cached.close()
        await redis.aclose()


async def test_a_spend_change_reaches_the_cache_within_the_bound(speed_redis_url: str) -> None:
    redis = connect(RedisSettings(url=speed_redis_url))
    keys = Keys.of(KeySettings(budget_shards=4))
    camps = _campaigns(20)
    await _fill(redis, keys, camps, random.Random(1))
    cat = catalog(*camps)
    cached = CachedAnswerReader(AnswerReader(redis, cat, keys), max_age_ms=MAX_AGE_MS, heartbeat_ms=20)
    await cached.start()
    direct = AnswerReader(redis, cat, keys)
    try:
        for i, c in enumerate(camps[:8]):
            cid = c.campaign_id
            day = budget_day(NOW, c.budget.timezone).isoformat()
            spent = 100 + i
            t0 = time.monotonic()
            await redis.set(keys.spend_day(cid, day), spent)
            seen = await _until(
                lambda cid=cid, s=spent: cached._entries[cid].values[0] == str(s).encode(), 2.0
            )
            assert seen * 1000 < MAX_AGE_MS, f"{cid} seen after {seen * 1000:.0f} ms"
            assert time.monotonic() - t0 < 2.0
            (a,) = await cached.answer("u1", [cid], NOW)
            assert a.remaining_minor == 1_000 - spent
            assert [a] == await direct.answer("u1", [cid], NOW)
        # A pacing step too: the probability moves.
        cid = camps[9].campaign_id
        day = budget_day(NOW, camps[9].budget.timezone).isoformat()
        await write_state(redis, keys, cid, PacingState(day, NOW, 0.123, 0.0, 0.1))
        await _until(lambda: getattr(cached._entries[cid].parsed[2], "probability", None) == 0.123, 2.0)
        (a,) = await cached.answer("u1", [cid], NOW)
        assert a == (await direct.answer("u1", [cid], NOW))[0]
        assert a.serve_probability in (0.0, 0.123)
        assert cached.stats.invalidations >= 9
    finally:
        await cached.close()
        await redis.aclose()


async def test_a_killed_tracking_connection_reconnects_and_reads_everything_again(redis_url: str) -> None:
    redis = connect(RedisSettings(url=redis_url))
    keys = Keys.of(KeySettings())
    camps = _campaigns(10)
    await _fill(redis, keys, camps, random.Random(2))
    cat = catalog(*camps)
    cached = CachedAnswerReader(AnswerReader(redis, cat, keys), max_age_ms=MAX_AGE_MS, heartbeat_ms=20)
    await cached.start()
    try:
        tracking = [c for c in await redis.client_list() if "t" in c["flags"]]
        assert len(tracking) == 1
        await redis.client_kill_filter(_id=tracking[0]["id"])
        cid = camps[0].campaign_id
        # Written while no tracking connection exists (the reconnect takes its backoff first).
        await redis.set(keys.spend_day(cid, DAY), 640)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            (a,) = await cached.answer("u1", [cid], NOW)
            if a.remaining_minor == 360:
                break
            # Until then it may answer the old value, never older than the bound.
            assert (cached.age_ms(cid) or 0) <= MAX_AGE_MS or cached.stats.fallbacks > 0
            await asyncio.sleep(0.005)
        assert a.remaining_minor == 360
        await _until(lambda: cached.stats.connects >= 2, 3.0)
        assert cached.stats.disconnects >= 1
        # Tracking again: the next change is pushed.
        await redis.set(keys.spend_day(cid, DAY), 700)
        await _until(lambda: cached._entries[cid].values[0] == b"700", 2.0)
    finally:
        await cached.close()
        await redis.aclose()


@pytest.mark.parametrize("on_stale", ["refuse", "read"])
async def test_a_lost_server_is_never_served_from_memory_past_the_bound(on_stale: Any) -> None:
    with LocalRedis() as server:
        redis = connect(RedisSettings(url=server.url))
        keys = Keys.of(KeySettings())
        camps = _campaigns(5)
        await _fill(redis, keys, camps, random.Random(3))
        cat = catalog(*camps)
        cached = CachedAnswerReader(
            AnswerReader(redis, cat, keys), max_age_ms=MAX_AGE_MS, heartbeat_ms=20, on_stale=on_stale
        )
        await cached.start()
        ids = [c.campaign_id for c in camps]
        before = await cached.answer("u1", ids, NOW)
        server.stop()
        lost = time.monotonic()
        served_after = 0.0
        try:
            while True:
                try:
                    assert await cached.answer("u1", ids, NOW) == before
                    served_after = time.monotonic() - lost
                except StaleBudgetState as exc:
                    assert on_stale == "refuse"
                    assert exc.age_ms is not None
                    assert exc.age_ms > MAX_AGE_MS
                    break
                except (RedisConnectionError, OSError) as exc:
                    assert on_stale == "read", exc
                    break
                assert time.monotonic() - lost < 5
                await asyncio.sleep(0.005)
            # Served from memory only inside the bound (plus the heartbeat it was last proved at).
            assert served_after * 1000 <= MAX_AGE_MS + 20
            assert cached.stats.fallbacks + cached.stats.refused >= len(ids)
        finally:
            await cached.close()
            await redis.aclose()


async def test_a_silent_server_is_refused_past_the_bound_and_served_again_after(redis_url: str) -> None:
    """``CLIENT PAUSE … ALL`` holds every reply, the tracking connection's PONGs too, without
    closing it: the heartbeat, not a connection error, must age the memory out."""
    redis = connect(RedisSettings(url=redis_url))
    keys = Keys.of(KeySettings())
    camps = _campaigns(5)
    await _fill(redis, keys, camps, random.Random(4))
    cat = catalog(*camps)
    cached = CachedAnswerReader(
        AnswerReader(redis, cat, keys), max_age_ms=MAX_AGE_MS, heartbeat_ms=20, on_stale="refuse"
    )
    await cached.start()
    ids = [c.campaign_id for c in camps]
    try:
        before = await cached.answer("u1", ids, NOW)
        await redis.execute_command("CLIENT", "PAUSE", 1_500, "ALL")
        paused = time.monotonic()

        async def serve_while_paused() -> None:
            while time.monotonic() - paused < 1.4:
                assert await cached.answer("u1", ids, NOW) == before
                assert (time.monotonic() - paused) * 1000 <= MAX_AGE_MS + 20
                await asyncio.sleep(0.005)

        with pytest.raises(StaleBudgetState):
            await serve_while_paused()
        assert cached.stats.refused == len(ids)
        await _until(lambda: all((cached.age_ms(cid) or 1e9) <= MAX_AGE_MS for cid in ids), 5.0)
        assert await cached.answer("u1", ids, NOW) == before
    finally:
        await cached.close()
        await redis.aclose()
