"""The rate limit of ``/v1/answer`` rides in the answer's Redis pipeline (``DeferredLimit``, one
round trip instead of two) and keeps exactly the middleware's semantics: an empty bucket is the
same 429 (and no answer), before any 422; a NOSCRIPT reply never takes a second token; a limiter
error is counted, pauses the limiter and fails open or closed as configured; a Redis Cluster
client keeps the separate call."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError

from realtime.client import Exchange, LeadFailed, _release, connect
from reporting.errors import RATE_LIMITED, UNAVAILABLE
from reporting.ratelimit import SOURCE, RateLimiter
from serving.answer import _FREQUENCY
from tests.integration.test_answer_route import IDS, NOW, _client

pytestmark = pytest.mark.integration

PARAMS = {"user_id": "u1", "campaign_id": IDS, "at": NOW}
#: The limiter's Redis may take its time: these tests are of tokens, and a loaded machine once held
#: a round trip past the default 250 ms, which the limiter rightly took for an outage (served
#: without limits: a 200 where the test wanted its 429).
PATIENT = {"api_rate_limit_timeout_ms": 10_000}
TIGHT = {"api_rate_ad_server_per_s": 0.01, "api_rate_ad_server_burst": 2, **PATIENT}


def _errors(client: Any) -> float:
    return float(client._transport.app.metrics.rate_limit_errors._value.get())


def _count_hits(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The limiter's own round trips (``RateLimiter.hit``), by bucket."""
    hits: list[str] = []
    hit = RateLimiter.hit

    async def counted(self: RateLimiter, bucket: str, *args: Any, **kwargs: Any) -> Any:
        hits.append(bucket)
        return await hit(self, bucket, *args, **kwargs)

    monkeypatch.setattr(RateLimiter, "hit", counted)
    return hits


async def test_an_empty_bucket_is_the_same_429_without_the_answer_in_one_round_trip(
    tmp_path: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    redis = Redis.from_url(redis_url)
    await redis.script_load(SOURCE)  # as after any first request: a NOSCRIPT asks on its own
    await redis.aclose()
    hits = _count_hits(monkeypatch)
    async for client, keys in _client(tmp_path, redis_url, **TIGHT):
        headers = {"X-API-Key": keys["ad_server"]}
        answered = [await client.get("/v1/answer", params=PARAMS, headers=headers) for _ in range(2)]
        assert [r.status_code for r in answered] == [200, 200]
        assert answered[0].content == answered[1].content
        refused = await client.get("/v1/answer", params=PARAMS, headers=headers)
        assert hits == []  # the limit rode in the answer's pipeline
        assert refused.status_code == 429
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.headers["x-content-type-options"] == "nosniff"
        body = refused.json()
        assert body["type"] == RATE_LIMITED
        assert body["instance"] == "/v1/answer"
        assert body["detail"].startswith("this key may send 0.01 requests a second (bursts of 2); retry in ")
        assert refused.headers["retry-after"] == str(body["retry_after"])
        assert body["retry_after"] >= 1
        # A query FastAPI would refuse with 422 still gets the 429 first, from the limiter's own call.
        invalid = await client.get("/v1/answer", params={"campaign_id": "even"}, headers=headers)
        assert len(hits) == 1
        assert hits[0].startswith("key:")
        assert invalid.status_code == 429
        other = invalid.json()
        assert {k: v for k, v in other.items() if k not in ("detail", "retry_after")} == {
            k: v for k, v in body.items() if k not in ("detail", "retry_after")
        }
        metrics = (await client.get("/metrics", headers={"X-API-Key": keys["admin"]})).text
        assert 'attribution_api_rate_limited_total{role="ad_server"} 2.0' in metrics


@pytest.mark.parametrize("missing", ["both", "limiter", "frequency"])
async def test_a_noscript_reply_never_takes_a_second_token(
    tmp_path: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    hits = _count_hits(monkeypatch)
    async for client, keys in _client(
        tmp_path, redis_url, api_rate_ad_server_per_s=0.01, api_rate_ad_server_burst=3, **PATIENT
    ):
        headers = {"X-API-Key": keys["ad_server"]}
        expected = await client.get("/v1/answer", params=PARAMS, headers=headers)  # one token
        assert expected.status_code == 200
        redis = Redis.from_url(redis_url)
        await redis.script_flush()
        if missing == "limiter":
            await redis.script_load(_FREQUENCY.text)
        elif missing == "frequency":
            await redis.script_load(SOURCE)
        await redis.aclose()
        reloaded = await client.get("/v1/answer", params=PARAMS, headers=headers)  # the second
        assert reloaded.status_code == 200
        assert reloaded.content == expected.content
        # Only a NOSCRIPT of the limiter's own script asks the limiter again, on its own.
        assert len(hits) == (0 if missing == "frequency" else 1)
        # One token left of three: a second token taken on the reload would refuse this one.
        assert (await client.get("/v1/answer", params=PARAMS, headers=headers)).status_code == 200
        assert (await client.get("/v1/answer", params=PARAMS, headers=headers)).status_code == 429


@pytest.mark.parametrize("fail_open", [True, False])
@pytest.mark.parametrize("how", ["error reply", "round trip failed"])
async def test_a_limiter_error_is_counted_paused_and_fails_open_or_closed(
    tmp_path: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch, fail_open: bool, how: str
) -> None:
    sent: list[tuple[Any, ...]] = []
    command, exchange = RateLimiter.command, Exchange.__call__

    def recorded(self: RateLimiter, *args: Any) -> tuple[Any, ...]:
        cmd = command(self, *args)
        sent.append(cmd)
        return ("NO-SUCH-COMMAND",) if how == "error reply" else cmd

    async def failing(self: Exchange, commands: Any, *args: Any) -> Any:
        if sent and any(c[:2] == sent[0][:2] for c in commands):
            raise RedisConnectionError("the limiter's round trip failed")
        return await exchange(self, commands, *args)

    async for client, keys in _client(tmp_path, redis_url, api_rate_limit_fail_open=fail_open, **TIGHT):
        headers = {"X-API-Key": keys["ad_server"]}
        expected = await client.get("/v1/answer", params=PARAMS, headers=headers)
        assert expected.status_code == 200
        assert _errors(client) == 0
        monkeypatch.setattr(RateLimiter, "command", recorded)
        monkeypatch.setattr(Exchange, "__call__", failing)
        first = await client.get("/v1/answer", params=PARAMS, headers=headers)
        assert _errors(client) == 1
        paused = await client.get("/v1/answer", params=PARAMS, headers=headers)
        assert len(sent) == 1  # paused: the limiter is not asked again
        assert _errors(client) == 1
        for resp in (first, paused):
            if fail_open:  # served without limits: the answer, read again alone after a failed round trip
                assert resp.status_code == 200
                assert resp.content == expected.content
            else:
                assert resp.status_code == 503
                problem = resp.json()
                assert problem["type"] == UNAVAILABLE
                assert problem["detail"] == "the rate limiter's Redis did not answer"
                assert resp.headers["retry-after"] == "1"


def test_a_cluster_client_keeps_the_limiters_own_call() -> None:
    # A cluster pipeline may send its commands again; the limiter's script is not idempotent.
    cluster = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", 1)])
    assert RateLimiter(cluster, "p").pipelined is False
    assert RateLimiter(Redis(), "p").pipelined is True


async def test_an_idle_connection_the_server_closed_fails_at_most_once_then_is_replaced(
    redis_url: str,
) -> None:
    # Exchange keeps connections between round trips and runs the pool's own health check first: a
    # connection Redis dropped meanwhile (a restart, a client timeout) fails at most the one round
    # trip, as redis-py's pipeline does with a pooled one (no retries configured), and is not kept.
    from realtime.client import connect
    from realtime.keys import Keys
    from serving import AnswerReader
    from shared_logic.settings import KeySettings, RedisSettings
    from tests.factories import HOUR, campaign, catalog

    redis = connect(RedisSettings(url=redis_url))
    cat = catalog(
        campaign("even", budget={"daily_minor": 1_000}),
        campaign("freq", frequency_cap={"impressions": 2, "window_ms": HOUR}),
    )
    reader = AnswerReader(redis, cat, Keys.of(KeySettings()))
    await reader.load()
    before = await reader.answer("u1", IDS, NOW)
    assert reader._exchange is not None
    assert len(reader._exchange._idle) == 1
    admin = Redis.from_url(redis_url)
    assert await admin.client_kill_filter(_type="normal", skipme=True) >= 1
    await admin.aclose()
    try:
        again = await reader.answer("u1", IDS, NOW)
    except RedisConnectionError:
        assert reader._exchange._idle == []  # released to the pool, disconnected
        again = await reader.answer("u1", IDS, NOW)
    assert again == before
    assert len(reader._exchange._idle) == 1
    await redis.aclose()


async def test_candidates_with_nothing_to_read_still_draw_from_the_bucket(
    tmp_path: Any, redis_url: str
) -> None:
    # Only unknown campaigns: the answer reads nothing, but the limiter's command still goes alone.
    async for client, keys in _client(tmp_path, redis_url, **TIGHT):
        headers = {"X-API-Key": keys["ad_server"]}
        params = {"user_id": "u1", "campaign_id": ["nope", "gone"], "at": NOW}
        statuses = [
            (await client.get("/v1/answer", params=params, headers=headers)).status_code for _ in range(3)
        ]
        assert statuses == [200, 200, 429]


#: A script that holds the server for ARGV[1] microseconds (a slow reply, for real).
BUSY = (
    "local t = redis.call('TIME') local s = t[1] * 1000000 + t[2] "
    "repeat local n = redis.call('TIME') until n[1] * 1000000 + n[2] - s > tonumber(ARGV[1]) return 1"
)


async def test_a_late_lead_times_out_and_a_failure_after_it_keeps_its_reply(redis_url: str) -> None:
    """The lead's deadline and what a failure after its reply gives. (Redis writes a batch's
    replies together, so the deadline covers the server's work on the whole batch, microseconds
    for the answer's reads, but not the client reading the rest: see the next test.)"""
    from shared_logic.settings import RedisSettings

    redis = connect(RedisSettings(url=redis_url))
    exchange = Exchange(redis)
    assert await exchange([("PING",), ("PING",)], 0.05) == [b"PONG", b"PONG"]
    assert len(exchange._idle) == 1
    with pytest.raises(TimeoutError):
        await exchange([("EVAL", BUSY, 0, 200_000), ("PING",)], 0.05)
    assert exchange._idle == []  # the one that timed out went back to the pool, disconnected
    # The lead's reply came, the rest did not: the caller still gets the lead's reply.
    with pytest.raises(LeadFailed) as failed:
        await exchange([("PING",), ("CLIENT", "KILL", "SKIPME", "no"), ("PING",)], 1.0)
    assert failed.value.reply == b"PONG"
    assert isinstance(failed.value.__cause__, RedisConnectionError)
    await redis.aclose()


async def test_a_release_cancelled_while_it_waits_for_the_pools_lock_still_releases(redis_url: str) -> None:
    """Kills the mutant that releases without ``asyncio.shield`` (the connection's slot would be
    lost for good: the pool holds at most ``max_connections``)."""
    from shared_logic.settings import RedisSettings

    redis = connect(RedisSettings(url=redis_url))
    pool = redis.connection_pool
    conn = await pool.get_connection()
    async with pool._condition:  # another task holds the pool's lock
        task = asyncio.create_task(_release(pool, conn))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await asyncio.sleep(0.01)
    assert conn not in pool._in_use_connections
    await redis.aclose()


async def test_slow_reads_after_the_verdict_are_no_limiter_outage(
    tmp_path: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The limiter's 50 ms deadline covers its own reply only: with the client reading every later
    reply of a round trip 100 ms late (a busy event loop), an empty bucket is still a 429 and no
    limiter error is counted. Kills the mutant that puts the deadline around the whole round trip
    (the slow read would count as a limiter outage, pause the limiter and, failing open, serve the
    refused request)."""
    from redis.asyncio.connection import AbstractConnection

    send, read = AbstractConnection.send_packed_command, AbstractConnection.read_response
    replies: dict[int, int] = {}

    async def sending(self: Any, *args: Any, **kwargs: Any) -> Any:
        replies[id(self)] = 0
        return await send(self, *args, **kwargs)

    async def reading(self: Any, *args: Any, **kwargs: Any) -> Any:
        replies[id(self)] = replies.get(id(self), 0) + 1
        if replies[id(self)] > 1:
            await asyncio.sleep(0.1)
        return await read(self, *args, **kwargs)

    async for client, keys in _client(tmp_path, redis_url, **{**TIGHT, "api_rate_limit_timeout_ms": 50}):
        headers = {"X-API-Key": keys["ad_server"]}
        assert (await client.get("/v1/answer", params=PARAMS, headers=headers)).status_code == 200
        monkeypatch.setattr(AbstractConnection, "send_packed_command", sending)
        monkeypatch.setattr(AbstractConnection, "read_response", reading)
        statuses = [
            (await client.get("/v1/answer", params=PARAMS, headers=headers)).status_code for _ in range(2)
        ]
        assert statuses == [200, 429]
        assert _errors(client) == 0


async def test_a_request_that_fails_before_its_check_still_takes_its_token(
    tmp_path: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kills the mutant that takes the deferred token only after the app returned (an exception on
    the way, a 500, would skip the limit)."""
    from serving import AnswerReader

    days = AnswerReader.days

    def broken(self: Any, *args: Any) -> Any:
        raise RuntimeError("a fault before the limiter's command is sent")

    async for client, keys in _client(tmp_path, redis_url, **TIGHT):
        headers = {"X-API-Key": keys["ad_server"]}
        monkeypatch.setattr(AnswerReader, "days", broken)
        for _ in range(2):
            with pytest.raises(RuntimeError, match="a fault before"):
                await client.get("/v1/answer", params=PARAMS, headers=headers)
        monkeypatch.setattr(AnswerReader, "days", days)
        assert (await client.get("/v1/answer", params=PARAMS, headers=headers)).status_code == 429
