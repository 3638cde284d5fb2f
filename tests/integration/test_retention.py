"""Touches are kept per kind (issue 21): a view for the longest view window plus the allowed
lateness, a click for the longest click window plus it, on a real redis-server.

Mutants these kill (tried): the ingest script trimming every kind at the longest retention
(``realtime.touch_retention = "longest"``'s bound for all); its ``PEXPIRE`` set on every write
(a view written after a click shortening the click's life); the trim floor's check removed (a
replay by a fresh worker adding back, and counting again, a view trimmed before).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis

from realtime.client import connect
from realtime.deadletters import MemoryDeadLetters
from realtime.engine import SpeedLayer
from realtime.keys import Keys
from shared_logic import Catalog
from shared_logic.settings import RedisSettings, Settings
from tests.factories import DAY, MIN, T0, campaign

pytestmark = pytest.mark.integration

VIEW_KEPT = DAY + MIN  # the default view window (1 day) plus the default lateness
CLICK_KEPT = 7 * DAY + MIN


def _touch(eid: str, kind: str, t: int, user: str = "u1", cid: str = "ad1") -> dict[str, Any]:
    return {"event_id": eid, "event_type": kind, "event_time": t, "user_id": user, "campaign_id": cid}


async def _engine(url: str, **over: Any) -> SpeedLayer:
    settings = Settings().replace(redis_url=url, keys_user_buckets=4, **over)
    engine = SpeedLayer(
        connect(RedisSettings(url=url)), Catalog([campaign("ad1")]), settings, MemoryDeadLetters()
    )
    await engine.start()
    return engine


async def _members(r: Redis, keys: Keys, user: str) -> list[str]:
    return [m.decode().rsplit("|", 1)[1] for m in await r.zrange(keys.touches(user), 0, -1)]


async def _ids(r: Redis, keys: Keys, user: str) -> set[str]:
    return {f.decode() for f in await r.hkeys(keys.touch_ids_in(keys.bucket(user), user))}


async def _two_days(url: str, **over: Any) -> tuple[SpeedLayer, list[dict[str, Any]]]:
    """u1 sees a view and a click at T0; two days later another user's view moves the clock, then
    u1's next view makes the ingest script trim u1's set."""
    engine = await _engine(url, **over)
    first = [_touch("v0", "impression", T0), _touch("c0", "click", T0 + 1)]
    await engine.process(first)
    await engine.process([_touch("w", "impression", T0 + 2 * DAY, user="u2")])
    await engine.process([_touch("v2", "impression", T0 + 2 * DAY + 5)])
    return engine, first


def test_a_view_leaves_after_its_window_and_a_click_stays_for_its_own(redis_url: str) -> None:
    async def run() -> None:
        engine, _ = await _two_days(redis_url)
        keys = engine.keys
        assert await _members(engine.redis, keys, "u1") == ["c0", "v2"]
        assert await _ids(engine.redis, keys, "u1") == {"c0", "v2"}
        await engine.redis.aclose()

    asyncio.run(run())


def test_the_earlier_layout_keeps_every_kind_for_the_longest_window(redis_url: str) -> None:
    """``realtime.touch_retention = "longest"`` (the layout before issue 21, what the memory
    benchmark's baseline runs) keeps the view as long as the click."""

    async def run() -> None:
        engine, _ = await _two_days(redis_url, realtime_touch_retention="longest")
        assert await _members(engine.redis, engine.keys, "u1") == ["v0", "c0", "v2"]
        await engine.redis.aclose()

    asyncio.run(run())


def test_a_set_lives_as_long_as_its_longest_kept_touch(redis_url: str) -> None:
    """Views alone: the view retention; a click: the click's, which a later view does not shorten."""

    async def run() -> None:
        engine = await _engine(redis_url)
        keys, r = engine.keys, engine.redis
        await engine.process([_touch("v0", "impression", T0, user="u3")])
        ttl = await r.pttl(keys.touches("u3"))
        assert VIEW_KEPT - MIN < ttl <= VIEW_KEPT
        await engine.process([_touch("c0", "click", T0 + 1, user="u4")])
        await engine.process([_touch("v1", "impression", T0 + 2, user="u4")])
        for key in (keys.touches("u4"), keys.touch_ids_in(keys.bucket("u4"), "u4")):
            ttl = await r.pttl(key)
            assert CLICK_KEPT - MIN < ttl <= CLICK_KEPT, key
        await r.aclose()

    asyncio.run(run())


def test_a_fresh_worker_replaying_a_trimmed_view_adds_and_counts_nothing(redis_url: str) -> None:
    """A replay starts from no watermark, so the view at T0 is not too late for its partition; the
    bucket's trim floor knows it was trimmed: it is not added back nor counted a second time."""

    async def run() -> None:
        engine, first = await _two_days(redis_url)
        keys, r = engine.keys, engine.redis
        day = keys.counts(keys.bucket("u1"), "2026-11-01")
        counted = await r.hgetall(day)
        assert counted == {b"ad1|impressions": b"1", b"ad1|clicks": b"1"}
        fresh = await _engine(redis_url)
        await fresh.process(first)
        assert await _members(r, keys, "u1") == ["c0", "v2"]
        assert await r.hgetall(day) == counted
        assert fresh.metrics.value("attribution_too_late_touches_total") == 1  # the view
        assert fresh.metrics.value("attribution_duplicates_total", type="click") == 1
        await fresh.redis.aclose()
        await r.aclose()

    asyncio.run(run())
