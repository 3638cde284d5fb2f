"""The speed layer counts impressions per (user, campaign) for frequency caps and steps the pacing
controller on event time; the ad server's answer reads both. On a redis-server and a Redis Cluster."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from realtime.client import connect
from realtime.deadletters import MemoryDeadLetters
from realtime.engine import SpeedLayer
from serving import AnswerReader, Reason
from shared_logic.pacing import PACING_FIELDS, decode_state
from shared_logic.settings import RedisSettings, Settings
from tests.factories import MIN, T0, campaign, catalog
from tests.helpers import redis_snapshot

pytestmark = pytest.mark.integration

CATALOG = catalog(
    campaign("fc", frequency_cap={"impressions": 2, "window_ms": 60 * MIN}),
    campaign("paced", budget={"daily_minor": 100_000}),
)


def _imp(eid: str, user: str, cid: str, t: int) -> dict[str, Any]:
    return {"event_id": eid, "event_type": "impression", "user_id": user, "campaign_id": cid, "event_time": t}


def _click(eid: str, user: str, cid: str, t: int) -> dict[str, Any]:
    return {**_imp(eid, user, cid, t), "event_type": "click"}


FIRST = [
    _imp("i1", "u1", "fc", T0),
    _imp("i2", "u1", "fc", T0 + 10 * MIN),
    _imp("i3", "u1", "fc", T0 + 20 * MIN),
    _imp("j1", "u2", "fc", T0 + 20 * MIN),
    *[_click(f"k{i}", f"v{i}", "paced", T0 + i * MIN // 2) for i in range(50)],
]


async def _run(url: str) -> dict[str, Any]:
    settings = Settings().replace(redis_url=url, keys_user_buckets=16, keys_budget_shards=4)
    redis = connect(RedisSettings(url=url))
    engine = SpeedLayer(redis, CATALOG, settings, MemoryDeadLetters())
    await engine.start()
    keys = engine.keys
    await engine.process(FIRST[:30])
    step1_state = decode_state(await redis.hmget(keys.pacing("paced"), list(PACING_FIELDS)))
    await engine.process(FIRST[30:])
    first_steps = engine.pacer.steps
    first_state = decode_state(await redis.hmget(keys.pacing("paced"), list(PACING_FIELDS)))
    snapshot = await redis_snapshot(url, match="attr:*:[fp]*")
    # Every event again (a redelivery): nothing counted twice.
    await engine.process(FIRST)
    again = await redis_snapshot(url, match="attr:*:[fp]*")
    # Time moves on by more than an interval: a second step.
    await engine.process([_click("late", "w", "paced", T0 + 40 * MIN)])
    second_state = decode_state(await redis.hmget(keys.pacing("paced"), list(PACING_FIELDS)))
    reader = AnswerReader(redis, CATALOG, keys, settings.pacing)
    u1_now = await reader.answer("u1", ["fc", "paced"], T0 + 25 * MIN)
    paced_later = await reader.answer("u1", ["paced"], T0 + 45 * MIN)
    u1_later = await reader.answer("u1", ["fc"], T0 + 75 * MIN)
    u2 = await reader.answer("u2", ["fc"], T0 + 25 * MIN)
    members = await redis.zrange(keys.frequency(keys.bucket("u1"), "u1", "fc"), 0, -1)
    await redis.aclose()
    return {
        "first_steps": first_steps,
        "step1_state": step1_state,
        "first_state": first_state,
        "second_state": second_state,
        "snapshot": snapshot,
        "again": again,
        "u1_now": u1_now,
        "u1_later": u1_later,
        "paced_later": paced_later[0],
        "u2": u2,
        "members": members,
        "config": settings.pacing,
    }


def test_frequency_counts_and_pacing_steps_from_the_speed_layer(speed_redis_url: str) -> None:
    """Kills the mutant that drops ``if status != IngestStatus.NEW: return`` in ``Pacer.observe``
    (a redelivered touch counted again: the touch groups would double)."""
    got = asyncio.run(_run(speed_redis_url))
    cfg = got["config"]
    assert got["again"] == got["snapshot"]
    # The set keeps the cap's newest impressions: i2 and i3 (i1 trimmed).
    assert got["members"] == [b"i2", b"i3"]
    fc, _ = got["u1_now"]
    assert (fc.reason, fc.impressions, fc.serve_probability) == (Reason.FREQUENCY_CAPPED, 2, 0.0)
    # An hour later only i3 is inside (now - 60 min, now].
    assert (got["u1_later"][0].servable, got["u1_later"][0].impressions) == (True, 1)
    assert (got["u2"][0].servable, got["u2"][0].impressions) == (True, 1)

    first = got["first_state"]
    assert got["first_steps"] >= 1
    assert first is not None
    # The day starts cautiously: from start_probability, one bounded step up; then a step per
    # batch whose watermark passed an interval (each batch here passed one), moving p by up to
    # one bounded step per interval since the previous step (no estimate yet: p rises).
    assert got["first_steps"] == 2
    step1 = got["step1_state"]
    assert step1 is not None
    assert step1.probability == pytest.approx(cfg.start_probability * (1 + cfg.max_step))
    gap = (first.at_ms - step1.at_ms) // cfg.interval_ms
    assert gap > 1
    assert first.probability == pytest.approx(step1.probability * (1 + cfg.max_step) ** gap)
    assert first.liability_minor > 0  # 50 open clicks x the prior rate x the fee
    assert first.liability_minor < 50 * cfg.prior_conversion_rate * 100
    second = got["second_state"]
    assert second is not None
    assert second.at_ms > first.at_ms
    gap = (second.at_ms - first.at_ms) // cfg.interval_ms
    assert second.probability == pytest.approx(min(first.probability * (1 + cfg.max_step) ** gap, 1.0))
    paced = got["paced_later"]
    assert (paced.servable, paced.serve_probability) == (True, second.probability)
    assert paced.state_age_ms == T0 + 45 * MIN - second.at_ms
    assert paced.liability_minor == second.liability_minor


S = (T0 // MIN + 1) * MIN  # an interval's start (the step interval is a minute)
SEC = 1_000


async def _catch_up(url: str, batch_size: int) -> dict[str, Any]:
    settings = Settings().replace(
        redis_url=url, keys_user_buckets=16, keys_budget_shards=4, realtime_batch_size=batch_size
    )
    redis = connect(RedisSettings(url=url))
    engine = SpeedLayer(redis, CATALOG, settings, MemoryDeadLetters())
    await engine.start()
    keys, pacer = engine.keys, engine.pacer

    async def state() -> Any:
        return decode_state(await redis.hmget(keys.pacing("paced"), list(PACING_FIELDS)))

    got: dict[str, Any] = {"config": settings.pacing}
    await engine.process([_click("a0", "w0", "paced", S + 30 * SEC)])
    got["start"], got["start_steps"] = await state(), pacer.steps
    # 10 intervals' worth of events in one batch (not full).
    await engine.process([_click(f"b{i}", f"w{i}", "paced", S + (i + 1) * MIN + 30 * SEC) for i in range(10)])
    got["one"], got["one_steps"] = await state(), pacer.steps
    # A backlog: two full batches, each moving the watermark 5 minutes.
    backlog = [_click(f"c{i}", f"x{i}", "paced", S + 11 * MIN + i * 15 * SEC) for i in range(2 * batch_size)]
    await engine.process(backlog[:batch_size])
    await engine.process(backlog[batch_size:])
    got["backlog_steps"], got["deferred"] = pacer.steps, pacer.deferred
    # Live again: a partial batch, 45 s of event time on.
    await engine.process([_click("d0", "y0", "paced", S + 21 * MIN + 30 * SEC)])
    got["live"], got["live_steps"] = await state(), pacer.steps
    await redis.aclose()
    return got


def test_a_batch_of_many_intervals_takes_one_step_and_a_backlog_steps_when_it_ends(
    speed_redis_url: str,
) -> None:
    """A batch whose watermark passed N intervals takes one step, at the newest, moving p by up to
    N bounded steps; the full batches of a catch-up take none, and the first batch after it one.
    Kills the mutants that step every interval a batch passed (``one_steps`` 1 + 10), that move p
    by one bounded step whatever the gap, and that step on a catch-up's full batch."""
    got = asyncio.run(_catch_up(speed_redis_url, batch_size=20))
    cfg = got["config"]
    up = 1 + cfg.max_step
    start, one, live = got["start"], got["one"], got["live"]
    assert got["start_steps"] == 1
    assert start.at_ms == S
    assert start.probability == pytest.approx(cfg.start_probability * up)
    assert got["one_steps"] == 2  # one step for the 10 intervals, not 10
    assert one.at_ms == S + 10 * MIN
    assert one.probability == pytest.approx(start.probability * up**10)  # 0.285: no estimate yet
    assert (got["backlog_steps"], got["deferred"]) == (2, 2)  # a catch-up's full batches: no step
    assert got["live_steps"] == 3
    assert live.at_ms == S + 21 * MIN
    assert live.probability == pytest.approx(one.probability * up**11)  # 0.81
