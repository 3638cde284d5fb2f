"""The API over real HTTP: uvicorn in its own process, real Redis, DuckDB over a real lake."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from batch.job import run_day
from devtools.synthetic import SyntheticConfig, generate
from reporting.auth import add_key
from reporting.schemas import RoasReport
from shared_logic.settings import Settings
from storage import partition
from tests.helpers import assert_problem, land_and_replay, running_api

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
# Recent days: the API reads the speed layer only for days whose keys can still be in Redis
# (realtime.counts_ttl_ms after the day, in live operation), so the speed day must be recent.
FIRST = datetime.now(UTC).date() - timedelta(days=4)
CONFIG = SyntheticConfig(users=500, days=3, seed=11, start=FIRST)
DAYS = [(FIRST + timedelta(days=i)).isoformat() for i in range(3)]
# Generous limits: these tests are about answers, not throttling (tests/e2e/test_api_limits.py is).
UNTHROTTLED = {
    f"ATTRIBUTION_API_RATE_{role}_{knob}": "1000000"
    for role in ("ADMIN", "ADVERTISER", "AD_SERVER", "ANONYMOUS")
    for knob in ("PER_S", "BURST")
}


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, redis_server: Any, spark: Any
) -> Iterator[dict[str, Any]]:
    import redis

    folder = tmp_path_factory.mktemp("api")
    redis.Redis.from_url(redis_server.url).flushall()
    traffic = generate(CONFIG)
    lake, _, catalog = land_and_replay(folder, traffic, redis_server.url, keys_user_buckets=16)
    for day in DAYS[:2]:  # the batch view covers two days; the third is the speed layer's
        run_day(spark, lake, traffic.catalog, date.fromisoformat(day), Settings())
    keys_path = folder / "keys.yaml"
    keys = {
        "admin": add_key(keys_path, "ops", "admin"),
        "adv00": add_key(keys_path, "a0", "advertiser", "adv00"),
        "adv01": add_key(keys_path, "a1", "advertiser", "adv01"),
        "ads": add_key(keys_path, "ad server", "ad_server"),
    }
    env = {
        **os.environ,
        "ATTRIBUTION_LAKE_URL": lake.url,
        "ATTRIBUTION_CATALOG_URL": str(catalog),
        "ATTRIBUTION_API_KEYS_PATH": str(keys_path),
        "ATTRIBUTION_REDIS_URL": redis_server.url,
        "ATTRIBUTION_KEYS_USER_BUCKETS": "16",
        **UNTHROTTLED,
    }
    with running_api(env) as base:
        yield {
            "base": base,
            "keys": keys,
            "lake": lake,
            "traffic": traffic,
            "keys_path": keys_path,
            "env": env,
        }


def _get(served: Any, path: str, key: str | None = "admin", **params: Any) -> httpx.Response:
    headers = {"X-API-Key": served["keys"][key]} if key else {}
    return httpx.get(served["base"] + path, params=params, headers=headers, timeout=30)


def test_roas_numbers_equal_what_the_lake_holds(served: Any) -> None:
    resp = _get(served, "/v1/roas", start=DAYS[0], end=DAYS[1], model=["markov", "billing"])
    assert resp.status_code == 200, resp.text
    body = resp.json()
    RoasReport.model_validate(body)  # the answer is what the OpenAPI schema says
    assert body["batch_through"] == DAYS[1]
    lake_rows = served["lake"].read([partition("metrics/campaign_daily", dt=d) for d in DAYS[:2]]).to_pylist()
    expected = {
        (r["dt"], r["campaign_id"], r["model"]): r for r in lake_rows if r["model"] in ("markov", "billing")
    }
    got = {(r["day"], r["campaign_id"], r["model"]): r for r in body["rows"]}
    assert set(got) == set(expected)
    for k, r in got.items():
        e = expected[k]
        assert r["source"] == "batch"
        assert (r["spend_minor"], r["impressions"], r["clicks"]) == (
            e["spend_minor"],
            e["impressions"],
            e["clicks"],
        )
        assert r["orders"] == pytest.approx(e["orders"])
        assert r["revenue_minor"] == pytest.approx(e["revenue_minor"])
        assert r["windows"]["click_ms"] > 0


def test_batch_and_speed_days_merge_without_gaps_or_double_days(served: Any) -> None:
    report = _get(served, "/v1/roas", start=DAYS[0], end=DAYS[2], model="billing").json()
    RoasReport.model_validate(report)
    rows = report["rows"]
    sources_by_day: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        sources_by_day[r["day"]].add(r["source"])
    assert dict(sources_by_day) == {DAYS[0]: {"batch"}, DAYS[1]: {"batch"}, DAYS[2]: {"speed"}}
    # Speed rows hold what the speed layer charged: its ledger for that day, campaign by campaign.
    ledger = served["lake"].read([partition("realtime_ledger", dt=DAYS[2])]).to_pylist()
    spend: dict[str, int] = defaultdict(int)
    for e in ledger:
        spend[e["campaign_id"]] += e["charge_minor"]
    speed = {r["campaign_id"]: r["spend_minor"] for r in rows if r["day"] == DAYS[2]}
    assert {k: v for k, v in speed.items() if v} == {k: v for k, v in spend.items() if v}
    assert sum(r["impressions"] for r in rows if r["day"] == DAYS[2]) > 100


def test_a_closed_day_comes_from_the_lake_and_outlives_redis(served: Any) -> None:
    """The speed day is closed (landed, settled, its ledger flushed): an API on an empty Redis (its
    keys expired, or lost) answers it from the lake, equal to what Redis holds for it."""
    import asyncio

    import redis
    from redis.asyncio import Redis

    from realtime.keys import Keys
    from realtime.views import speed_view

    url = served["env"]["ATTRIBUTION_REDIS_URL"]
    empty = url.rsplit("/", 1)[0] + "/9"
    redis.Redis.from_url(empty).flushdb()
    asked = {"start": DAYS[2], "end": DAYS[2], "model": "billing"}
    catalog = served["traffic"].catalog

    async def in_redis() -> list[dict[str, Any]]:
        client = Redis.from_url(url)
        try:
            ids = sorted(c.campaign_id for c in catalog)
            return await speed_view(client, Keys("attr", 16, 1), catalog, [DAYS[2]], ids)
        finally:
            await client.aclose()

    full = sorted(asyncio.run(in_redis()), key=lambda r: r["campaign_id"])
    with running_api({**served["env"], "ATTRIBUTION_REDIS_URL": empty}) as base:
        resp = httpx.get(base + "/v1/roas", params=asked, headers={"X-API-Key": served["keys"]["admin"]})
    assert resp.status_code == 200, resp.text
    rows = resp.json()["rows"]
    assert rows
    assert {r["source"] for r in rows} == {"speed"}
    money = ("orders", "revenue_minor", "spend_minor", "capped_orders", "roas")
    assert [{k: r[k] for k in ("campaign_id", *money)} for r in rows] == [
        {k: r[k] for k in ("campaign_id", *money)} for r in full
    ]
    # Touches: distinct event ids landed (the speed layer's counters count a redelivered touch
    # again when it arrives at another watermark, so they are never fewer).
    assert sum(r["impressions"] for r in rows) > 100
    by_id = {r["campaign_id"]: r for r in full}
    assert all(r["impressions"] <= by_id[r["campaign_id"]]["impressions"] for r in rows)


def test_advertisers_see_only_their_own_campaigns(served: Any) -> None:
    own = _get(served, "/v1/roas", "adv00", start=DAYS[0], end=DAYS[2]).json()["rows"]
    assert own
    assert {r["advertiser_id"] for r in own} == {"adv00"}
    other = next(c.campaign_id for c in served["traffic"].catalog if c.advertiser_id == "adv01")
    foreign = _get(served, "/v1/roas", "adv00", start=DAYS[0], end=DAYS[1], campaign_id=other)
    missing = _get(served, "/v1/roas", "adv00", start=DAYS[0], end=DAYS[1], campaign_id="no-such-campaign")
    assert foreign.status_code == missing.status_code == 404
    a, b = assert_problem(foreign, 404, "campaign_id"), assert_problem(missing, 404, "campaign_id")
    assert a["detail"].replace(other, "X") == b["detail"].replace("no-such-campaign", "X")
    assert {k: v for k, v in a.items() if k != "detail"} == {k: v for k, v in b.items() if k != "detail"}
    assert set(foreign.headers) == set(missing.headers)
    assert_problem(_get(served, "/v1/budget", "adv00", campaign_id=other), 404, "campaign_id")
    assert _get(served, "/v1/roas", "adv01", start=DAYS[0], end=DAYS[1], campaign_id=other).status_code == 200


def test_ad_server_key_reads_budget_state_only(served: Any) -> None:
    ids = [c.campaign_id for c in served["traffic"].catalog][:5]
    states = _get(served, "/v1/budget", "ads", campaign_id=ids, at=1_793_577_600_000).json()
    assert [s["campaign_id"] for s in states] == ids
    assert all(s["spend_lifetime_minor"] >= 0 and s["remaining_minor"] is not None for s in states)
    assert_problem(_get(served, "/v1/roas", "ads", start=DAYS[0], end=DAYS[0]), 403)


@pytest.mark.parametrize(
    "path", ["/health", "/ready", "/v1/roas", "/v1/budget", "/docs", "/redoc", "/openapi.json", "/metrics"]
)
def test_every_route_needs_a_key(served: Any, path: str) -> None:
    assert_problem(_get(served, path, None), 401)
    bad = httpx.get(served["base"] + path, headers={"X-API-Key": "ak_wrong"})
    assert_problem(bad, 401)


def test_bad_parameters_are_named(served: Any) -> None:
    cases = [
        ({"start": "2026-13-01", "end": DAYS[0]}, "start"),
        ({"start": DAYS[1], "end": DAYS[0]}, "end"),
        ({"start": DAYS[0], "end": DAYS[0], "model": "bogus"}, "model"),
        ({"end": DAYS[0]}, "start"),
    ]
    for params, name in cases:
        resp = _get(served, "/v1/roas", **params)
        assert resp.status_code == 422, (params, resp.text)
        assert name in assert_problem(resp, 422, name)["detail"]


def test_keys_are_stored_hashed(served: Any) -> None:
    text = Path(served["keys_path"]).read_text()
    for key in served["keys"].values():
        assert key not in text
    assert text.count("sha256:") == 4


def test_readiness_reports_its_dependencies(served: Any) -> None:
    body = _get(served, "/ready").json()
    assert body == {"status": "ready", "checks": {"redis": "ok", "store": "ok"}}


def test_schemathesis_finds_no_server_error_and_every_4xx_is_a_problem(served: Any) -> None:
    import schemathesis
    from hypothesis import HealthCheck, settings

    headers = {"X-API-Key": served["keys"]["admin"]}
    schema = schemathesis.openapi.from_url(served["base"] + "/openapi.json", headers=headers, timeout=30)
    failures = []
    four_xx: set[int] = set()
    for op_result in schema.get_all_operations():
        operation = op_result.ok()
        strategy = operation.as_strategy()

        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case: Any) -> None:
            response = case.call(headers=headers, timeout=30)
            if response.status_code >= 500:
                failures.append((case.path, case.query, response.status_code, response.text[:200]))
            elif response.status_code >= 400:
                four_xx.add(response.status_code)
                try:
                    assert_problem(response, response.status_code)
                except AssertionError as exc:
                    failures.append((case.path, case.query, response.status_code, str(exc)[:200]))

        from hypothesis import given

        given(strategy)(check)()
    assert failures == []
    assert 422 in four_xx  # the generator did reach the error paths
