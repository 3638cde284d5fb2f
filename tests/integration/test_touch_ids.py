"""A user's touch ids hash holds each touch's score, not its member (Redis records version 2): the
ingest script finds a touch's member by that score and its event id, on a real redis-server.

Mutant this kills (tried): the member matched by its tail (``'|' .. event_id``) instead of the whole
event id after the fourth separator: event id ``x1`` found ``a|x1``'s member at the same time.
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
from shared_logic.contract import parse_touch_member
from shared_logic.settings import RedisSettings, Settings
from tests.factories import T0, campaign

pytestmark = pytest.mark.integration


def _click(eid: str, cid: str) -> dict[str, Any]:
    return {"event_id": eid, "event_type": "click", "event_time": T0, "user_id": "u1", "campaign_id": cid}


@pytest.mark.parametrize("other", ["a|x1", "x1|a", "zz|x1"])
def test_an_id_is_found_by_its_score_and_whole_event_id(redis_url: str, other: str) -> None:
    settings = Settings().replace(redis_url=redis_url, keys_user_buckets=4)
    dead = MemoryDeadLetters()
    catalog = Catalog([campaign("ad1"), campaign("ad2")])

    async def run() -> None:
        engine = SpeedLayer(connect(RedisSettings(url=redis_url)), catalog, settings, dead)
        await engine.start()
        await engine.process([_click(other, "ad1"), _click("x1", "ad1")])
        await engine.process([_click("x1", "ad1")])  # the same copy again: known, nothing changes
        await engine.process([_click("x1", "ad2")])  # another copy of x1: the identity rule picks one
        await engine.redis.aclose()

    asyncio.run(run())
    keys = Keys.of(settings.keys)
    r = redis_sync.Redis.from_url(redis_url)
    members = [m.decode() for m in r.zrange(keys.touches("u1"), 0, -1)]
    by_id = {parse_touch_member(m).event_id: parse_touch_member(m) for m in members}
    assert sorted(by_id) == sorted([other, "x1"])
    assert len(members) == 2
    assert by_id[other].campaign_id == "ad1"  # the other touch is untouched
    ids = r.hgetall(keys.touch_ids_in(keys.bucket("u1"), "u1"))
    assert ids == {other.encode(): str(T0).encode(), b"x1": str(T0).encode()}
    # one copy of x1 refused (the new one, or the one it displaced), none of the other id
    assert [(d.field, d.value) for d in dead.letters] == [("event_id", repr("x1"))]
    r.close()
