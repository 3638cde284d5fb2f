"""The ad server's one-read answer (``serving.AnswerReader``) against a real redis-server and a Redis
Cluster: reasons, probabilities, what is left, the state's age, frequency windows, one round trip."""

from __future__ import annotations

import random
from typing import Any

import pytest
from redis.asyncio import Redis

from realtime.client import connect, exchanges, is_cluster
from realtime.keys import Keys
from realtime.pacing import write_state
from serving import AnswerReader, Reason
from shared_logic import budget_day
from shared_logic.pacing import PacingState
from shared_logic.settings import KeySettings, PacingSettings, RedisSettings
from tests.factories import HOUR, MIN, T0, campaign, catalog

pytestmark = pytest.mark.integration

NOW = T0 + 10 * HOUR
DAY = budget_day(NOW, "UTC").isoformat()


class CountingClient:
    """The client, counting the pipelines it sends (each one is one round trip per node)."""

    def __init__(self, redis: Any) -> None:
        self.redis, self.pipelines = redis, 0

    def pipeline(self, **kw: Any) -> Any:
        self.pipelines += 1
        return self.redis.pipeline(**kw)

    async def script_load(self, text: str) -> Any:
        return await self.redis.script_load(text)


def _catalog() -> Any:
    return catalog(
        campaign("free"),
        campaign("even", budget={"daily_minor": 1_000}),
        campaign("fresh", budget={"daily_minor": 1_000}),
        campaign("fast", budget={"daily_minor": 1_000, "delivery": "asap"}),
        campaign("spent", budget={"daily_minor": 1_000}),
        campaign("life", budget={"daily_minor": 500, "lifetime_minor": 2_000}),
        campaign("old", end_ms=NOW - HOUR),
        campaign("freq", frequency_cap={"impressions": 2, "window_ms": HOUR}),
        campaign("tokyo", budget={"daily_minor": 1_000, "timezone": "Asia/Tokyo"}),
    )


async def _write(redis: Any, keys: Keys) -> None:
    await redis.set(keys.spend_day("even", DAY), 300)
    await redis.set(keys.spend_lifetime("even"), 300)
    await write_state(
        redis, keys, "even", PacingState(DAY, NOW - 45_000, 0.37, 420.0, 0.3, liability_minor=120.5)
    )
    # A state of yesterday: the probability restarts cautiously, the age still shows.
    yesterday = PacingState("2026-10-31", NOW - 20 * HOUR, 0.9, 0.0, 1.0)
    await write_state(redis, keys, "fresh", yesterday)
    await redis.set(keys.spend_day("spent", DAY), 1_000)
    await redis.set(keys.spend_day("life", DAY), 10)
    await redis.set(keys.spend_lifetime("life"), 2_000)
    tokyo_day = budget_day(NOW, "Asia/Tokyo").isoformat()
    await redis.set(keys.spend_day("tokyo", tokyo_day), 999)
    fkey = keys.frequency(keys.bucket("u1"), "u1", "freq")
    # (now - window, now]: an impression exactly a window old no longer counts.
    await redis.zadd(fkey, {"i-old": NOW - HOUR, "i-edge": NOW - HOUR + 1, "i-new": NOW - MIN})
    other = keys.frequency(keys.bucket("u2"), "u2", "freq")
    await redis.zadd(other, {"j1": NOW - HOUR})


async def test_each_candidate_gets_its_reason_probability_remaining_and_age(speed_redis_url: str) -> None:
    """Kills the mutant ``'(' .. lo`` → ``lo`` in ``frequency_read.lua`` (an impression a whole
    window old counted): u2's only impression is exactly a window old."""
    redis = connect(RedisSettings(url=speed_redis_url))
    keys = Keys.of(KeySettings(budget_shards=4))
    await _write(redis, keys)
    client = CountingClient(redis)
    reader = AnswerReader(client, _catalog(), keys, PacingSettings(start_probability=0.2))
    await reader.load()
    ids = ["free", "even", "fresh", "fast", "spent", "life", "old", "freq", "nope", "tokyo"]
    got = {a.campaign_id: a for a in await reader.answer("u1", ids, NOW)}
    assert client.pipelines == 1
    assert [a.campaign_id for a in await reader.answer("u1", ids, NOW)] == ids

    assert (got["free"].servable, got["free"].serve_probability, got["free"].remaining_minor) == (
        True,
        1.0,
        None,
    )
    even = got["even"]
    assert (even.servable, even.serve_probability, even.remaining_minor) == (True, 0.37, 700)
    assert (even.state_age_ms, even.liability_minor, even.budget_day) == (45_000, 120.5, DAY)
    fresh = got["fresh"]
    assert (fresh.serve_probability, fresh.state_age_ms, fresh.liability_minor) == (0.2, 20 * HOUR, None)
    assert (got["fast"].serve_probability, got["fast"].state_age_ms) == (1.0, None)
    assert (got["spent"].reason, got["spent"].serve_probability, got["spent"].remaining_minor) == (
        Reason.BUDGET_EXHAUSTED,
        0.0,
        0,
    )
    assert got["life"].reason is Reason.LIFETIME_EXHAUSTED
    assert got["old"].reason is Reason.INACTIVE
    assert got["nope"].reason is Reason.UNKNOWN
    assert (got["freq"].reason, got["freq"].impressions) == (Reason.FREQUENCY_CAPPED, 2)
    assert got["tokyo"].remaining_minor == 1  # its own local day's spend
    assert got["free"].impressions is None

    u2 = {a.campaign_id: a for a in await reader.answer("u2", ["freq"], NOW)}
    assert (u2["freq"].servable, u2["freq"].impressions) == (True, 0)
    await redis.aclose()


async def test_fifty_candidates_over_shards_in_one_pipeline_match_each_read_alone(
    speed_redis_url: str,
) -> None:
    redis = connect(RedisSettings(url=speed_redis_url))
    keys = Keys.of(KeySettings(budget_shards=8))
    rng = random.Random(3)
    camps = [
        campaign(f"c{i}", budget={"daily_minor": 1_000}, frequency_cap={"impressions": 3, "window_ms": HOUR})
        for i in range(50)
    ]
    expected = {}
    for c in camps:
        spent = rng.choice([0, 200, 1_000])
        seen = rng.randint(0, 4)
        await redis.set(keys.spend_day(c.campaign_id, DAY), spent)
        if seen:
            await redis.zadd(
                keys.frequency(keys.bucket("u9"), "u9", c.campaign_id),
                {f"e{k}": NOW - k * MIN for k in range(seen)},
            )
        p = round(rng.random(), 3)
        await write_state(redis, keys, c.campaign_id, PacingState(DAY, NOW - MIN, p, 0.0, 0.5))
        reason = Reason.BUDGET_EXHAUSTED if spent >= 1_000 else Reason.FREQUENCY_CAPPED if seen >= 3 else None
        expected[c.campaign_id] = (reason, 0.0 if reason else p, 1_000 - spent, seen)
    client = CountingClient(redis)
    reader = AnswerReader(client, catalog(*camps), keys)
    await reader.load()
    answers = await reader.answer("u9", [c.campaign_id for c in camps], NOW)
    assert client.pipelines == 1
    assert len({keys.shard(c.campaign_id) for c in camps}) > 1
    assert {
        a.campaign_id: (a.reason, a.serve_probability, a.remaining_minor, a.impressions) for a in answers
    } == expected
    # The API's client on one server sends the same commands without redis-py's pipeline object
    # (realtime.client.Exchange; a cluster's pipelines as before): the same answers, to the last field.
    direct = AnswerReader(redis, catalog(*camps), keys)
    assert (direct._exchange is None) is is_cluster(speed_redis_url)
    if not is_cluster(speed_redis_url):  # its packed MGET is UTF-8: another encoding takes the pipeline
        latin = Redis.from_url(speed_redis_url, encoding="latin-1")
        assert exchanges(redis)
        assert not exchanges(latin)
        await latin.aclose()
    assert reader._exchange is None
    again = await direct.answer("u9", [c.campaign_id for c in camps], NOW)
    assert [repr(a) for a in again] == [repr(a) for a in answers]
    await redis.aclose()


async def test_scripts_flushed_from_the_server_are_loaded_again(redis_url: str) -> None:
    redis = connect(RedisSettings(url=redis_url))
    keys = Keys.of(KeySettings())
    await redis.set(keys.spend_day("even", DAY), 100)
    reader = AnswerReader(redis, _catalog(), keys)
    assert (await reader.answer("u1", ["even"], NOW))[0].remaining_minor == 900
    await redis.script_flush()
    assert (await reader.answer("u1", ["even", "freq"], NOW))[0].remaining_minor == 900
    await redis.aclose()


async def test_a_step_an_older_worker_won_still_publishes_the_hash_state(speed_redis_url: str) -> None:
    """A worker of a version that wrote only the hash wins an interval: the new worker's write of
    the same step is refused, but mends the published string from the hash, so the answer gives
    the hash's probability (mutant: a refused write returning before the mend answers the
    cautious start probability instead)."""
    from realtime.pacing import queue_state_write
    from shared_logic.pacing import encode_state

    redis = connect(RedisSettings(url=speed_redis_url))
    keys = Keys.of(KeySettings(budget_shards=4))
    old = PacingState(DAY, NOW - MIN, 0.61, 10.0, 0.4, liability_minor=7.25)
    await redis.hset(keys.pacing("even"), mapping=encode_state(old))  # the older worker's write
    mine = PacingState(DAY, NOW - MIN, 0.2, 10.0, 0.4, liability_minor=1.0)
    assert await write_state(redis, keys, "even", mine) is False
    reader = AnswerReader(redis, _catalog(), keys)
    (a,) = await reader.answer("u1", ["even"], NOW)
    assert (a.serve_probability, a.liability_minor, a.state_age_ms) == (0.61, 7.25, MIN)
    # A newer step is written over it, string and hash together.
    newer = PacingState(DAY, NOW, 0.3, 10.0, 0.4, liability_minor=2.0)
    async with redis.pipeline(transaction=False) as pipe:
        queue_state_write(pipe, keys, "even", newer)
        assert await pipe.execute() == [1]
    (a,) = await reader.answer("u1", ["even"], NOW)
    assert (a.serve_probability, a.liability_minor, a.state_age_ms) == (0.3, 2.0, 0)
    await redis.aclose()


async def test_the_api_answers_the_same_for_ad_server_keys_only(redis_url: str, tmp_path: Any) -> None:
    import httpx
    import yaml

    from reporting.api import create_app
    from reporting.auth import add_key
    from shared_logic.settings import load_settings

    cat = _catalog()
    (tmp_path / "catalog.yaml").write_text(yaml.safe_dump({"campaigns": cat.to_records()}))
    keys_path = tmp_path / "keys.yaml"
    ads, adv = add_key(keys_path, "ads", "ad_server"), add_key(keys_path, "a1", "advertiser", "adv1")
    settings = load_settings(
        lake_url=f"file://{tmp_path}/lake",
        catalog_url=str(tmp_path / "catalog.yaml"),
        api_keys_path=str(keys_path),
        api_rate_limit=False,
        redis_url=redis_url,
    )
    redis = connect(RedisSettings(url=redis_url))
    keys = Keys.of(settings.keys)
    await _write(redis, keys)
    ids = ["even", "spent", "freq", "nope"]
    direct = await AnswerReader(redis, cat, keys, settings.pacing).answer("u1", ids, NOW)
    app = create_app(settings)
    params: dict[str, Any] = {"user_id": "u1", "campaign_id": ids, "at": NOW}
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport) as client:
        ok = await client.get("http://api/v1/answer", params=params, headers={"X-API-Key": ads})
        denied = await client.get("http://api/v1/answer", params=params, headers={"X-API-Key": adv})
        no_user = await client.get(
            "http://api/v1/answer", params={"campaign_id": "even"}, headers={"X-API-Key": ads}
        )
    assert ok.status_code == 200, ok.text
    body = ok.json()
    assert [(r["campaign_id"], r["reason"], r["serve_probability"], r["remaining_minor"]) for r in body] == [
        (a.campaign_id, a.reason, a.serve_probability, a.remaining_minor) for a in direct
    ]
    assert body[0]["serve_probability"] == 0.37
    assert denied.status_code == 403
    assert no_user.status_code == 422
    await redis.aclose()


async def test_budget_state_carries_the_serve_probability_liability_and_frequency_cap(redis_url: str) -> None:
    """``/v1/budget`` and ``attribution budget show`` read ``BudgetReader``: the same probability
    as the answer, the liability of today's step, the delivery mode and the frequency cap."""
    from realtime.budget import BudgetReader

    redis = connect(RedisSettings(url=redis_url))
    keys = Keys.of(KeySettings())
    await _write(redis, keys)
    reader = BudgetReader(redis, _catalog(), keys, PacingSettings(start_probability=0.2).config())
    got = {
        s.campaign_id: s for s in await reader.states(["even", "fresh", "fast", "spent", "free", "freq"], NOW)
    }
    assert (got["even"].serve_probability, got["even"].liability_minor, got["even"].delivery) == (
        0.37,
        120.5,
        "even",
    )
    assert (got["fresh"].serve_probability, got["fresh"].liability_minor) == (0.2, None)
    assert (got["fast"].serve_probability, got["fast"].delivery) == (1.0, "asap")
    assert got["spent"].serve_probability == 0.0
    assert got["free"].serve_probability == 1.0
    fc = got["freq"]
    assert (fc.frequency_cap_impressions, fc.frequency_cap_window_ms) == (2, HOUR)
    assert got["even"].frequency_cap_impressions is None
    await redis.aclose()
