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
import yaml

from batch.job import run_day
from devtools.synthetic import SyntheticConfig, generate
from reporting.auth import add_key
from reporting.schemas import RoasReport
from shared_logic.settings import KeySettings, Settings
from storage import partition
from tests.helpers import UNTHROTTLED, assert_problem, land_and_replay, running_api

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
# Recent days: the API reads the speed layer only for days whose keys can still be in Redis
# (realtime.counts_ttl_ms after the day, in live operation), so the speed day must be recent.
FIRST = datetime.now(UTC).date() - timedelta(days=4)
CONFIG = SyntheticConfig(users=500, days=3, seed=11, start=FIRST)
DAYS = [(FIRST + timedelta(days=i)).isoformat() for i in range(3)]


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
        # ROAS is the row's revenue over its spend, null when nothing was spent
        if e["spend_minor"]:
            assert r["roas"] == pytest.approx(e["revenue_minor"] / e["spend_minor"]), k
        else:
            assert r["roas"] is None, k
        assert r["windows"]["click_ms"] > 0
    assert any(r["roas"] is not None for r in got.values())  # some rows spent: the ratio was compared


def test_batch_days_and_a_closed_speed_day_merge_without_gaps_or_double_days(served: Any) -> None:
    """Days up to the batch view's last come from the store, the day after from the speed layer,
    never both. That speed day is closed (landed, settled, its ledger flushed), so the API reads it
    from the lake: ``test_an_open_day_is_served_from_redis_then_from_the_lake_once_closed`` covers
    a day the speed layer's Redis serves."""
    report = _get(served, "/v1/roas", start=DAYS[0], end=DAYS[2], model="billing").json()
    RoasReport.model_validate(report)
    rows = report["rows"]
    sources_by_day: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        sources_by_day[r["day"]].add(r["source"])
    assert dict(sources_by_day) == {DAYS[0]: {"batch"}, DAYS[1]: {"batch"}, DAYS[2]: {"speed"}}
    # Speed rows hold what the speed layer charged: its flushed ledger for that day, campaign by campaign.
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
            return await speed_view(client, Keys.of(KeySettings(user_buckets=16)), catalog, [DAYS[2]], ids)
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


# A day the speed layer's Redis still holds ------------------------------------------------------


def _recent_closed_day() -> date:
    """Yesterday (UTC), unless it ended less than 10 minutes ago: then the day before. Either has
    ended long enough for the API to close it once landed (``closed_days``: its end plus the
    settle delay, 4 minutes with the default flush interval, lies behind the clock), and its keys
    are still within the speed layer's retention."""
    return (datetime.now(UTC) - timedelta(days=1, minutes=10)).date()


def _expected_speed_rows(traffic: Any, ledger: list[Any], day: str) -> dict[str, dict[str, Any]]:
    """What the API must answer for ``day`` per campaign, computed here from the speed layer's
    ledger entries (money: an order counts while its charge is not refunded) and from the events
    fed (touches: every impression, click and promo view dated that day), not by a view."""
    from shared_logic.timeutil import utc_day

    fed = {p["order_id"]: p for p in traffic.valid_payloads() if p["event_type"] == "order"}
    of_day = [e for e in ledger if utc_day(e.order_time_ms) == day]
    charges = {e.order_id: e for e in of_day if e.kind == "charge"}
    refunds = {e.order_id: e for e in of_day if e.kind == "refund"}
    assert len(charges) + len(refunds) == sum(e.kind in ("charge", "refund") for e in of_day)  # once each
    assert set(refunds) <= set(charges)
    assert all(refunds[o].charge_minor == -charges[o].charge_minor for o in refunds)
    assert all(e.amount_minor == fed[o]["amount_minor"] for o, e in charges.items())  # orders fed, as fed
    rows: dict[str, dict[str, Any]] = defaultdict(
        lambda: dict.fromkeys(
            (
                "impressions",
                "clicks",
                "promo_views",
                "orders",
                "revenue_minor",
                "spend_minor",
                "capped_orders",
            ),
            0,
        )
    )
    for order_id, e in charges.items():
        row = rows[e.campaign_id]
        row["capped_orders"] += int(e.capped)  # a refund takes the order back, not its capping
        if order_id not in refunds:
            row["orders"] += 1
            row["revenue_minor"] += e.amount_minor
            row["spend_minor"] += e.charge_minor
    counter = {"impression": "impressions", "click": "clicks", "promo_view": "promo_views"}
    for ev in traffic.events:
        p = ev.payload
        if isinstance(p, dict) and p.get("event_type") in counter and utc_day(p["event_time"]) == day:
            rows[p["campaign_id"]][counter[p["event_type"]]] += 1
    for cid, row in rows.items():
        campaign = traffic.catalog.get(cid)
        row.update(
            campaign_id=cid,
            advertiser_id=campaign.advertiser_id,
            lever=str(campaign.lever),
            currency=campaign.currency,
            roas=row["revenue_minor"] / row["spend_minor"] if row["spend_minor"] else None,
        )
    return dict(rows)


_FIGURES = (
    "advertiser_id", "lever", "currency", "impressions", "clicks", "promo_views", "orders",
    "revenue_minor", "spend_minor", "capped_orders", "roas",
)  # fmt: skip


def _figures(rows: list[dict[str, Any]], day: str) -> dict[str, dict[str, Any]]:
    assert {(r["day"], r["source"], r["model"]) for r in rows} == {(day, "speed", "billing")}, rows[:3]
    by_campaign = {
        r["campaign_id"]: {"campaign_id": r["campaign_id"], **{k: r[k] for k in _FIGURES}} for r in rows
    }
    assert len(by_campaign) == len(rows)
    return by_campaign


def test_an_open_day_is_served_from_redis_then_from_the_lake_once_closed(
    tmp_path: Path, redis_server: Any
) -> None:
    """A day the speed layer processed but the lake has not closed (no landed markers) is served
    from Redis over HTTP, equal to the ledger and events; once landed and marked, settled and its
    ledger flushed, the same API answers it from the lake, with the same figures.

    Which store answered is proven, not assumed: while the day is open the lake holds nothing of
    it (so only Redis can answer) and a change made in Redis shows in the answer; once it is
    closed, a change in Redis, then the day's keys deleted, change nothing."""
    import asyncio

    import redis

    from realtime.client import connect
    from realtime.keys import Keys
    from realtime.ledger import LedgerFlusher, read_stream
    from realtime.replay import replay
    from storage import open_lake
    from storage.raw import land, landed_by_day, mark_days_landed

    day = _recent_closed_day()
    iso = day.isoformat()
    url = redis_server.url.rsplit("/", 1)[0] + "/5"  # its own database: the module's API uses 0
    sync = redis.Redis.from_url(url)
    sync.flushdb()
    # Few campaigns, many orders: tight daily caps are reached, cancels refund or stop charges.
    config = SyntheticConfig(
        users=1000, days=1, seed=23, start=day, advertisers=3, ad_campaigns=6, promo_campaigns=2,
        click_through_rate=0.3, click_conversion_rate=0.5, view_conversion_rate=0.05, cancel_rate=0.2,
        duplicate_rate=0.0, malformed_rate=0.0,
    )  # fmt: skip
    traffic = generate(config)
    lake = open_lake(f"file://{tmp_path}/lake")
    settings = Settings().replace(redis_url=url, lake_url=lake.url)
    keys = Keys.of(settings.keys)
    payloads = [e.payload for e in traffic.events]
    result = asyncio.run(replay(payloads, traffic.catalog, settings, show_progress=False))
    assert result.decided > 0

    async def ledger_in_redis() -> list[Any]:
        client = connect(settings.redis)
        try:
            return await read_stream(client, keys)
        finally:
            await client.aclose()

    ledger = asyncio.run(ledger_in_redis())
    expected = _expected_speed_rows(traffic, ledger, iso)
    # the day holds what the figures must get right: spend, capped charges, refunded ones
    assert sum(r["spend_minor"] for r in expected.values()) > 0
    assert sum(r["capped_orders"] for r in expected.values()) > 0
    assert {"charge", "refund"} <= {e.kind for e in ledger}

    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(yaml.safe_dump({"campaigns": traffic.catalog.to_records()}))
    keys_path = tmp_path / "keys.yaml"
    admin = add_key(keys_path, "ops", "admin")
    env = {
        **os.environ,
        "ATTRIBUTION_LAKE_URL": lake.url,
        "ATTRIBUTION_CATALOG_URL": str(catalog),
        "ATTRIBUTION_API_KEYS_PATH": str(keys_path),
        "ATTRIBUTION_REDIS_URL": url,
        **UNTHROTTLED,
    }
    probe_cid = max(expected, key=lambda c: expected[c]["spend_minor"])
    probe_key = keys.stats(probe_cid, iso)
    assert sync.exists(probe_key)

    with running_api(env) as base:

        def ask() -> dict[str, dict[str, Any]]:
            resp = httpx.get(
                base + "/v1/roas",
                params={"start": iso, "end": iso, "model": "billing"},
                headers={"X-API-Key": admin},
                timeout=30,
            )
            assert resp.status_code == 200, resp.text
            body = resp.json()
            RoasReport.model_validate(body)
            assert body["batch_through"] is None  # no batch view: every day is the speed layer's
            return _figures(body["rows"], iso)

        # Open: the lake holds nothing of the day, so the answer is Redis's.
        assert list(tmp_path.rglob("*.parquet")) == []
        opened = ask()
        assert opened == expected

        # Ledger flushed and raw events landed, but the hours not marked: still open, still Redis.
        async def flush_ledger() -> int:
            client = connect(settings.redis)
            try:
                return await LedgerFlusher(client, keys, lake).flush()
            finally:
                await client.aclose()

        assert asyncio.run(flush_ledger()) > 0
        assert asyncio.run(ledger_in_redis()) == []
        land(lake, ((e.payload, e.arrival_ms) for e in traffic.events), "backfill")
        assert iso not in landed_by_day(lake)
        sync.hincrby(probe_key, "spend", 7)
        moved = ask()
        assert moved[probe_cid]["spend_minor"] == expected[probe_cid]["spend_minor"] + 7  # Redis answered
        sync.hincrby(probe_key, "spend", -7)
        assert ask() == expected

        # Closed: every hour marked landed (the day ended long enough ago): the lake answers.
        mark_days_landed(lake, [iso], {"by": "test"})
        closed = ask()
        assert closed == opened
        sync.hincrby(probe_key, "spend", 7)
        assert ask() == expected  # Redis no longer answers for the day
        day_keys = [k for k in sync.scan_iter(match=f"{keys.prefix}:*") if k.decode().endswith(f":{iso}")]
        assert probe_key.encode() in day_keys
        sync.delete(*day_keys)
        assert ask() == expected  # ... nor needs to hold it
    sync.close()


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
