"""Both layers agree on awkward but valid traffic (issue 16): touches on unknown, ended or not yet
started campaigns, lever mismatches, conflicting copies of event ids and order ids, cancels by
another user or before their order, touches on window bounds, RFC 3339 times near budget-day
midnights (``devtools.awkward``).

The traffic is landed and replayed through the speed layer; the nightly job runs over the lake.
Then, for every day:

- the reconciliation finds 0 differences (every order: winner, charge, amount);
- each layer refused the same events for the same reasons (field, value, rule): the speed
  layer's dead letters and the nightly job's ``refused/`` rows, for catalog and identity rules;
- the billing row of every campaign is the same from the speed view (Redis), the lake view and
  the nightly job's metrics (impressions, clicks, promo views, orders, revenue, spend).

Mutants this kills (tried): landing dropping conflicting copies (the first kept) instead of
keeping them for the identity rule; the speed layer keeping the first copy of an event id
instead of the least rank; the batch counting refused touches; a cancel looked up in the
cancelling user's bucket.
"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import pytest
import redis as redis_sync

from batch.job import run_day
from batch.reconcile import reconcile_day
from devtools.awkward import AWKWARD_KINDS
from devtools.synthetic import SyntheticConfig, Traffic, generate
from realtime.keys import Keys
from realtime.views import lake_view, speed_view
from shared_logic.contract import BILLING_MODEL, METRICS, REFUSED
from shared_logic.timeutil import utc_day
from storage import Lake, partition
from tests.helpers import land_and_replay

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KINDS = AWKWARD_KINDS  # the future-bound scenes too: the replay meets each event at its arrival
CONFIG = SyntheticConfig(
    users=400, days=3, seed=23, cancel_rate=0.15, duplicate_rate=0.02, awkward_rate=0.05, awkward_kinds=KINDS
)
RULED_FIELDS = {"campaign_id", "event_id", "order_id"}  # catalog and identity refusals
MEASURES = ("impressions", "clicks", "promo_views", "orders", "revenue_minor", "spend_minor")


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory, redis_server: Any, spark: Any) -> dict[str, Any]:
    redis_sync.Redis.from_url(redis_server.url).flushall()
    traffic = generate(CONFIG)
    lake, settings, _ = land_and_replay(
        tmp_path_factory.mktemp("awkward"), traffic, redis_server.url, keys_user_buckets=32
    )
    days = [(CONFIG.start + timedelta(days=i)).isoformat() for i in range(CONFIG.days)]
    results = {}
    for d in days:
        day = CONFIG.start + timedelta(days=days.index(d))
        results[d] = (
            run_day(spark, lake, traffic.catalog, day, settings),
            reconcile_day(spark, lake, traffic.catalog, day, settings),
        )
    return {"lake": lake, "settings": settings, "traffic": traffic, "days": days, "results": results}


def test_the_traffic_holds_every_awkward_kind(loop: dict[str, Any]) -> None:
    traffic: Traffic = loop["traffic"]
    assert set(traffic.awkward) == set(KINDS)


def test_the_reconciliation_finds_no_difference_on_awkward_traffic(loop: dict[str, Any]) -> None:
    for day, (job, rec) in loop["results"].items():
        assert job.orders > 20, day
        assert rec.differing == 0, (day, rec.summary())
        assert rec.batch_spend_minor, day
        assert rec.realtime_spend_minor == rec.batch_spend_minor, day


def _speed_refusals(url: str, settings: Any, days: set[str]) -> set[tuple[str, str, str]]:
    key = Keys.of(settings.keys).dead_letters()
    out = set()
    for _, fields in redis_sync.Redis.from_url(url).xrange(key):
        row = {k.decode(): v.decode() for k, v in fields.items()}
        if row["field"] not in RULED_FIELDS:
            continue
        raw = json.loads(row["raw"])
        if utc_day(int(raw["event_time"])) in days:
            out.add((row["field"], row["value"], row["rule"]))
    return out


def test_both_layers_refuse_the_same_events_for_the_same_rules(
    loop: dict[str, Any], redis_server: Any
) -> None:
    lake: Lake = loop["lake"]
    days = set(loop["days"])
    batch = set()
    for day in days:
        for row in lake.read([partition(REFUSED, dt=day)]).to_pylist():
            batch.add((row["field"], row["value"], row["rule"]))
        assert sum(loop["results"][day][0].refused.values()) > 0, day
    speed = _speed_refusals(redis_server.url, loop["settings"], days)
    assert {f for f, _, _ in batch} == RULED_FIELDS
    assert speed == batch


def test_every_billing_row_is_the_same_from_redis_the_lake_and_the_nightly_job(
    loop: dict[str, Any], redis_server: Any
) -> None:
    from redis.asyncio import Redis

    lake: Lake = loop["lake"]
    traffic: Traffic = loop["traffic"]
    cids = [c.campaign_id for c in traffic.catalog]

    async def speed() -> list[dict[str, Any]]:
        client = Redis.from_url(redis_server.url)
        try:
            return await speed_view(
                client, Keys.of(loop["settings"].keys), traffic.catalog, loop["days"], cids
            )
        finally:
            await client.aclose()

    def key(rows: list[dict[str, Any]]) -> dict[tuple[str, str], tuple[float, ...]]:
        return {(r["dt"], r["campaign_id"]): tuple(float(r[m]) for m in MEASURES) for r in rows}

    from_redis = key(asyncio.run(speed()))
    from_lake = key(lake_view(lake, traffic.catalog, loop["days"], cids))
    nightly = key(
        [
            r
            for day in loop["days"]
            for r in lake.read([partition(METRICS, dt=day)]).to_pylist()
            if r["model"] == BILLING_MODEL
        ]
    )
    assert from_redis
    assert any(v[0] for v in from_redis.values())
    assert from_redis == from_lake
    assert from_lake == nightly
