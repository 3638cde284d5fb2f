"""The nightly Spark job, reconciliation and reruns, on a generated lake."""

from __future__ import annotations

import asyncio
import os
from collections import defaultdict
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from batch.errors import NoRawData
from batch.job import run_day
from batch.reconcile import reconcile_day
from devtools.synthetic import SyntheticConfig, Traffic, generate
from shared_logic import AttributionPolicy, parse_event
from shared_logic.settings import Settings
from shared_logic.settlement import settle_events
from storage import Lake, open_lake, partition
from storage.raw import land_events, read_raw, rows_to_payloads
from tests.helpers import land_and_replay

pytestmark = [pytest.mark.integration, pytest.mark.slow]
CONFIG = SyntheticConfig(users=800, days=3, cancel_rate=0.15, duplicate_rate=0.02, malformed_rate=0.003)


def _build(
    tmp: Path, config: SyntheticConfig, redis_url: str, spark: Any
) -> tuple[Lake, Traffic, dict[str, Any]]:
    traffic = generate(config)
    lake, _, _ = land_and_replay(tmp, traffic, redis_url, keys_user_buckets=32)
    results: dict[str, Any] = {}
    for i in range(config.days):
        day = config.start + timedelta(days=i)
        results[day.isoformat()] = (
            run_day(spark, lake, traffic.catalog, day, Settings()),
            reconcile_day(spark, lake, traffic.catalog, day),
        )
    return lake, traffic, results


@pytest.fixture(scope="module")
def week(
    tmp_path_factory: pytest.TempPathFactory, redis_server: Any, spark: Any
) -> tuple[Lake, Traffic, dict]:
    import redis

    redis.Redis.from_url(redis_server.url).flushall()
    return _build(tmp_path_factory.mktemp("week"), CONFIG, redis_server.url, spark)


def test_discrepancy_is_zero_when_everything_arrives_within_the_lateness(week) -> None:
    _, _, results = week
    for day, (job, rec) in results.items():
        assert job.orders > 20, day
        assert rec.orders > 10, day
        assert rec.discrepancy_pct == 0.0, (day, rec.summary())
        assert rec.batch_spend_minor
        assert rec.realtime_spend_minor == rec.batch_spend_minor


def test_batch_ledger_equals_the_one_process_reference(week) -> None:
    lake, traffic, results = week
    events = [parse_event(p) for p in traffic.valid_payloads()]
    book, _ = settle_events(events, traffic.catalog, AttributionPolicy())
    expected: dict[str, int] = defaultdict(int)
    for e in book.ledger:
        expected[e.order_id] += e.charge_minor
    got: dict[str, int] = defaultdict(int)
    for day in results:
        for row in lake.read([partition("batch_ledger", dt=day)]).to_pylist():
            got[row["order_id"]] += row["charge_minor"]
    in_days = {
        e.order_id
        for e in book.ledger
        if CONFIG.start_ms <= e.order_time_ms < CONFIG.start_ms + CONFIG.days * 86_400_000
    }
    assert {k: v for k, v in expected.items() if k in in_days} == dict(got)


def test_credits_of_every_order_sum_to_one_under_every_model(week) -> None:
    lake, _, results = week
    day = next(iter(results))
    job, _ = results[day]
    assert set(job.models) >= {"billing", "last_touch", "markov", "shapley", "time_decay"}
    for model in job.models:
        rows = lake.read([partition("attribution", model=model, dt=day)]).to_pylist()
        assert rows, model
        per_order: dict[str, float] = defaultdict(float)
        for r in rows:
            assert r["credit"] > 0
            per_order[r["order_id"]] += r["credit"]
        assert all(abs(v - 1.0) < 1e-9 for v in per_order.values()), model


def test_metrics_hold_counts_spend_and_roas(week) -> None:
    lake, traffic, results = week
    day = list(results)[1]
    job, rec = results[day]
    rows = lake.read([partition("metrics/campaign_daily", dt=day)]).to_pylist()
    models = {r["model"] for r in rows}
    assert models == set(job.models)
    raw = read_raw(lake, date.fromisoformat(day), date.fromisoformat(day)).to_pylist()
    impressions: dict[str, int] = defaultdict(int)
    for e in raw:
        if e["event_type"] == "impression":
            impressions[e["campaign_id"]] += 1
    billing = {r["campaign_id"]: r for r in rows if r["model"] == "billing"}
    for cid, r in billing.items():
        assert r["impressions"] == impressions[cid]
        if r["spend_minor"] > 0:
            assert r["roas"] == pytest.approx(r["revenue_minor"] / r["spend_minor"])
        cap = traffic.catalog.get(cid).budget.lifetime_minor  # type: ignore[union-attr]
        assert cap is None or r["spend_minor"] <= cap
    per_currency: dict[str, int] = {}
    for r in billing.values():
        per_currency[r["currency"]] = per_currency.get(r["currency"], 0) + r["spend_minor"]
    assert {c: v for c, v in per_currency.items() if v} == rec.batch_spend_minor


def test_rerun_replaces_exactly_the_dates_it_was_given(week, spark) -> None:
    lake, traffic, results = week
    days = sorted(results)
    target, other = days[1], days[2]

    def snapshot(day: str) -> dict[str, Any]:
        out = {}
        for model in results[day][0].models:
            ref = partition("attribution", model=model, dt=day)
            files = lake.files(ref)
            out[model] = (files, sorted(map(repr, lake.read([ref]).to_pylist())))
        return out

    before_target, before_other = snapshot(target), snapshot(other)
    mtimes = {f: os.stat(lake.path(f)).st_mtime_ns for m in before_other.values() for f in m[0]}
    run_day(spark, lake, traffic.catalog, date.fromisoformat(target), Settings())
    after_target, after_other = snapshot(target), snapshot(other)
    assert {m: v[1] for m, v in after_target.items()} == {m: v[1] for m, v in before_target.items()}
    assert after_other == before_other
    assert {f: os.stat(lake.path(f)).st_mtime_ns for f in mtimes} == mtimes
    # The rerun wrote new files for the target day (a true overwrite, not an append).
    assert after_target["billing"][0] != before_target["billing"][0]


def test_a_late_touch_is_a_difference_with_its_cause(tmp_path: Path, redis_url: str, spark: Any) -> None:
    """The order is decided before a later (winning) click arrives: the layers differ, and say why."""
    from shared_logic import Catalog
    from tests.factories import MIN, T0, campaign

    catalog = Catalog([campaign("ad1"), campaign("ad2", pricing={"model": "fixed", "fee_minor": 300})])
    deliveries = [  # (payload, arrival)
        (
            {
                "event_id": "c1",
                "event_type": "click",
                "user_id": "u1",
                "campaign_id": "ad1",
                "event_time": T0,
            },
            T0,
        ),
        (
            {
                "event_id": "o1",
                "event_type": "order",
                "user_id": "u1",
                "order_id": "o1",
                "merchant_id": "m1",
                "amount_minor": 5_000,
                "currency": "USD",
                "event_time": T0 + 2 * MIN,
            },
            T0 + 2 * MIN,
        ),
        (
            {
                "event_id": "i9",
                "event_type": "impression",
                "user_id": "u2",
                "campaign_id": "ad1",
                "event_time": T0 + 5 * MIN,
            },
            T0 + 5 * MIN,
        ),
        (
            {
                "event_id": "c2",
                "event_type": "click",
                "user_id": "u1",
                "campaign_id": "ad2",
                "event_time": T0 + MIN,
            },
            T0 + 10 * MIN,
        ),
        (
            {
                "event_id": "o2",
                "event_type": "order",
                "user_id": "u3",
                "order_id": "o2",
                "merchant_id": "m1",
                "amount_minor": 900,
                "currency": "USD",
                "event_time": T0 + 3 * MIN,
            },
            T0 + 3 * MIN,
        ),
        (
            {
                "event_id": "c3",
                "event_type": "click",
                "user_id": "u3",
                "campaign_id": "ad1",
                "event_time": T0 + MIN,
            },
            T0 + MIN,
        ),
    ]
    url = f"file://{tmp_path}/lake"
    lake = open_lake(url)
    land_events(lake, deliveries)
    ordered = [p for p, _ in sorted(deliveries, key=lambda d: d[1])]

    async def live() -> None:
        # One event per batch, as a live stream delivers them (a replay's big batches would let the
        # late click in: the effective lateness is the allowed lateness plus at most one batch).
        from redis.asyncio import Redis

        from realtime.deadletters import MemoryDeadLetters
        from realtime.engine import SpeedLayer
        from realtime.ledger import LedgerFlusher

        redis = Redis.from_url(redis_url)
        engine = SpeedLayer(
            redis, catalog, Settings().replace(redis_url=redis_url, keys_user_buckets=4), MemoryDeadLetters()
        )
        await engine.start()
        for payload in ordered:
            await engine.process([payload])
        await engine.drain()
        await LedgerFlusher(redis, engine.keys, lake).flush()
        await redis.aclose()

    asyncio.run(live())
    day = date(2026, 11, 1)
    run_day(spark, lake, catalog, day, Settings())
    rec = reconcile_day(spark, lake, catalog, day)
    assert (rec.orders, rec.matched, rec.causes) == (2, 1, {"late touch": 1})
    assert rec.spend_diff_minor == {"ad1": 100, "ad2": -300}
    rows = {r["order_id"]: r for r in lake.read([partition("reconciliation", dt="2026-11-01")]).to_pylist()}
    assert (rows["o1"]["rt_campaign"], rows["o1"]["bt_campaign"], rows["o1"]["status"]) == (
        "ad1",
        "ad2",
        "late touch",
    )
    assert rows["o2"]["status"] == "match"
    manifest = lake.manifest(partition("reconciliation", dt="2026-11-01"))
    assert manifest is not None
    assert manifest["discrepancy_pct"] == 50.0


def test_missing_day_is_a_clear_error(week, spark) -> None:
    lake, traffic, _ = week
    with pytest.raises(NoRawData, match="2027-01-01"):
        run_day(spark, lake, traffic.catalog, date(2027, 1, 1), Settings())


def test_lake_round_trip_replays_the_same_events(week) -> None:
    lake, traffic, _ = week
    table = read_raw(lake, CONFIG.start, CONFIG.start + timedelta(days=CONFIG.days - 1))
    payloads = rows_to_payloads(table)
    assert len(payloads) == len({p["event_id"] for p in traffic.valid_payloads()})
    assert pq.read_schema(lake.path(lake.files(partition("raw/order", dt="2026-11-01", hour="12"))[0]))
