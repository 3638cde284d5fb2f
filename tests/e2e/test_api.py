"""The API over real HTTP: uvicorn in its own process, real Redis, DuckDB over a real lake."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import defaultdict
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from batch.job import run_day
from batch.lake import Lake, partition
from batch.raw import land_events
from batch.settings import BatchSettings
from realtime.localredis import free_port
from realtime.replay import replay
from realtime.settings import RealtimeSettings
from reporting.auth import add_key
from shared_logic.synthetic import SyntheticConfig, generate

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
CONFIG = SyntheticConfig(users=500, days=3, seed=11)
DAYS = ["2026-11-01", "2026-11-02", "2026-11-03"]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, redis_server: Any, spark: Any) -> Any:
    import redis

    folder = tmp_path_factory.mktemp("api")
    redis.Redis.from_url(redis_server.url).flushall()
    traffic = generate(CONFIG)
    url = f"file://{folder}/lake"
    lake = Lake(url)
    land_events(lake, ((e.payload, e.arrival_ms) for e in traffic.events))
    asyncio.run(
        replay(
            [e.payload for e in traffic.events],
            traffic.catalog,
            RealtimeSettings(redis_url=redis_server.url, user_buckets=16),
            lake_url=url,
            show_progress=False,
        )
    )
    for day in DAYS[:2]:  # the batch view covers two days; the third is the speed layer's
        run_day(spark, lake, traffic.catalog, date.fromisoformat(day), BatchSettings())
    catalog = folder / "catalog.yaml"
    catalog.write_text(yaml.safe_dump({"campaigns": traffic.catalog.to_records()}))
    keys_path = folder / "keys.yaml"
    keys = {
        "admin": add_key(keys_path, "ops", "admin"),
        "adv00": add_key(keys_path, "a0", "advertiser", "adv00"),
        "adv01": add_key(keys_path, "a1", "advertiser", "adv01"),
        "ads": add_key(keys_path, "ad server", "ad_server"),
    }
    port = free_port()
    env = {
        **os.environ,
        "ATTRIBUTION_API_LAKE_URL": url,
        "ATTRIBUTION_API_CATALOG_PATH": str(catalog),
        "ATTRIBUTION_API_KEYS_PATH": str(keys_path),
        "ATTRIBUTION_API_REDIS_URL": redis_server.url,
        "ATTRIBUTION_API_USER_BUCKETS": "16",
    }
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("attribution")), "api", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{base}/health", headers={"X-API-Key": keys["admin"]}).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise RuntimeError(f"API did not start: {proc.stdout.read().decode() if proc.stdout else ''}")
        time.sleep(0.2)
    yield {"base": base, "keys": keys, "lake": lake, "traffic": traffic, "keys_path": keys_path}
    proc.terminate()
    proc.wait(10)


def _get(served: Any, path: str, key: str | None = "admin", **params: Any) -> httpx.Response:
    headers = {"X-API-Key": served["keys"][key]} if key else {}
    return httpx.get(served["base"] + path, params=params, headers=headers, timeout=30)


def test_roas_numbers_equal_what_the_lake_holds(served: Any) -> None:
    resp = _get(served, "/v1/roas", start=DAYS[0], end=DAYS[1], model=["markov", "billing"])
    assert resp.status_code == 200, resp.text
    body = resp.json()
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
    rows = _get(served, "/v1/roas", start=DAYS[0], end=DAYS[2], model="billing").json()["rows"]
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


def test_advertisers_see_only_their_own_campaigns(served: Any) -> None:
    own = _get(served, "/v1/roas", "adv00", start=DAYS[0], end=DAYS[2]).json()["rows"]
    assert own
    assert {r["advertiser_id"] for r in own} == {"adv00"}
    other = next(c.campaign_id for c in served["traffic"].catalog if c.advertiser_id == "adv01")
    foreign = _get(served, "/v1/roas", "adv00", start=DAYS[0], end=DAYS[1], campaign_id=other)
    missing = _get(served, "/v1/roas", "adv00", start=DAYS[0], end=DAYS[1], campaign_id="no-such-campaign")
    assert foreign.status_code == missing.status_code == 404
    assert foreign.json()["detail"].replace(other, "X") == missing.json()["detail"].replace(
        "no-such-campaign", "X"
    )
    assert _get(served, "/v1/budget", "adv00", campaign_id=other).status_code == 404
    assert _get(served, "/v1/roas", "adv01", start=DAYS[0], end=DAYS[1], campaign_id=other).status_code == 200


def test_ad_server_key_reads_budget_state_only(served: Any) -> None:
    ids = [c.campaign_id for c in served["traffic"].catalog][:5]
    states = _get(served, "/v1/budget", "ads", campaign_id=ids, at=1_793_577_600_000).json()
    assert [s["campaign_id"] for s in states] == ids
    assert all(s["spend_lifetime_minor"] >= 0 and s["remaining_minor"] is not None for s in states)
    assert _get(served, "/v1/roas", "ads", start=DAYS[0], end=DAYS[0]).status_code == 403


@pytest.mark.parametrize("path", ["/health", "/ready", "/v1/roas", "/v1/budget"])
def test_every_route_needs_a_key(served: Any, path: str) -> None:
    assert _get(served, path, None).status_code == 401
    bad = httpx.get(served["base"] + path, headers={"X-API-Key": "ak_wrong"})
    assert bad.status_code == 401


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
        assert name in resp.text


def test_keys_are_stored_hashed(served: Any) -> None:
    text = Path(served["keys_path"]).read_text()
    for key in served["keys"].values():
        assert key not in text
    assert text.count("sha256:") == 4


def test_readiness_reports_its_dependencies(served: Any) -> None:
    body = _get(served, "/ready").json()
    assert body == {"status": "ready", "checks": {"redis": "ok", "store": "ok"}}


def test_schemathesis_finds_no_server_error(served: Any) -> None:
    import schemathesis
    from hypothesis import HealthCheck, settings

    schema = schemathesis.openapi.from_url(served["base"] + "/openapi.json")
    headers = {"X-API-Key": served["keys"]["admin"]}
    failures = []
    for op_result in schema.get_all_operations():
        operation = op_result.ok()
        strategy = operation.as_strategy()

        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case: Any) -> None:
            response = case.call(headers=headers, timeout=30)
            if response.status_code >= 500:
                failures.append((case.path, case.query, response.status_code, response.text[:200]))

        from hypothesis import given

        given(strategy)(check)()
    assert failures == []
