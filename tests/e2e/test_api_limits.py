"""The API's limits and error shape over real HTTP: rate limits per role and per address (token
buckets in a real Redis), the cost bound, size limits, problem details for every error status,
security headers on every response, docs behind a key, and 503 problems when Redis stops.

Each API runs in its own process (``tests.helpers.running_api``) over a small lake written here
(one batch day, no Spark) and a private ``redis-server``, so no other test draws from its buckets.
Rates are tiny (one token per 100 s): a burst is exactly what a test sees, however slow the machine.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pyarrow as pa
import pytest
import redis
import yaml

from devtools.servers import LocalRedis
from devtools.synthetic import SyntheticConfig, make_catalog
from reporting.auth import add_key
from shared_logic.contract import METRICS
from storage import open_lake, partition
from tests.helpers import SECURITY_HEADERS, assert_problem, markov_row, product_env, running_api

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
BURSTS = {"admin": 5, "advertiser": 3, "ad_server": 7, "anonymous": 4}
TIGHT = {
    **{f"ATTRIBUTION_API_RATE_{role.upper()}_BURST": str(n) for role, n in BURSTS.items()},
    **{f"ATTRIBUTION_API_RATE_{role.upper()}_PER_S": "0.01" for role in BURSTS},
}
ROOMY = {
    **{f"ATTRIBUTION_API_RATE_{role.upper()}_BURST": "1000000" for role in BURSTS},
    **{f"ATTRIBUTION_API_RATE_{role.upper()}_PER_S": "1000000" for role in BURSTS},
}
MAX_COST = 20  # days x campaigns; the catalog has 32 campaigns, adv00 has 4


@pytest.fixture(scope="module")
def days() -> tuple[date, str]:
    """Today (UTC) when the module's tests start, and the batch day two days before it (the days after
    it are speed days), taken when the lake is written, not when the module is imported (a long run
    may import it on the day before). A day that turns while the tests run changes nothing they
    assert: every date is derived from this one, the batch day is in the lake, and the speed days
    stay within Redis's retention and never lie in the future."""
    today = datetime.now(UTC).date()
    return today, (today - timedelta(days=2)).isoformat()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, days: tuple[date, str]) -> dict[str, Any]:
    today, batch_day = days
    folder = tmp_path_factory.mktemp("api-limits")
    catalog = make_catalog(SyntheticConfig())
    (folder / "catalog.yaml").write_text(yaml.safe_dump({"campaigns": catalog.to_records()}))
    lake = open_lake(f"file://{folder}/lake")
    rows = [markov_row(c, batch_day) for c in catalog]
    lake.write_partition(partition(METRICS, dt=batch_day), pa.Table.from_pylist(rows).drop(["dt"]))
    keys_path = folder / "keys.yaml"
    keys = {
        "admin": add_key(keys_path, "ops", "admin"),
        "admin2": add_key(keys_path, "ops 2", "admin"),
        "advertiser": add_key(keys_path, "a0", "advertiser", "adv00"),
        "advertiser2": add_key(keys_path, "a0 bis", "advertiser", "adv00"),
        "ad_server": add_key(keys_path, "ads", "ad_server"),
        "ad_server2": add_key(keys_path, "ads 2", "ad_server"),
    }
    env = {
        **product_env(),
        "ATTRIBUTION_LAKE_URL": lake.url,
        "ATTRIBUTION_CATALOG_URL": str(folder / "catalog.yaml"),
        "ATTRIBUTION_API_KEYS_PATH": str(keys_path),
    }
    own = [c.campaign_id for c in catalog if c.advertiser_id == "adv00"]
    other = next(c.campaign_id for c in catalog if c.advertiser_id != "adv00")
    return {
        "today": today,
        "batch_day": batch_day,
        "env": env,
        "keys": keys,
        "campaigns": [c.campaign_id for c in catalog],
        "own": own,
        "other": other,
    }


@pytest.fixture(scope="module")
def private_redis() -> Iterator[LocalRedis]:
    with LocalRedis() as server:
        yield server


@pytest.fixture(scope="module")
def tight_api(world: dict[str, Any], private_redis: LocalRedis) -> Iterator[str]:
    with running_api({**world["env"], "ATTRIBUTION_REDIS_URL": private_redis.url, **TIGHT}) as base:
        yield base


@pytest.fixture
def tight(tight_api: str, private_redis: LocalRedis) -> str:
    """The tightly limited API with every bucket full (its private Redis emptied)."""
    client = redis.Redis.from_url(private_redis.url)
    client.flushall()
    client.close()
    return tight_api


@pytest.fixture(scope="module")
def roomy(world: dict[str, Any], private_redis: LocalRedis) -> Iterator[str]:
    env = {
        **world["env"],
        "ATTRIBUTION_REDIS_URL": private_redis.url,
        "ATTRIBUTION_KEYS_PREFIX": "roomy",  # its own buckets beside tight_api's
        "ATTRIBUTION_API_ROAS_MAX_COST": str(MAX_COST),
        **ROOMY,
    }
    with running_api(env) as base:
        yield base


def _get(base: str, path: str, key: str | None, **kwargs: Any) -> httpx.Response:
    headers = {"X-API-Key": key} if key else {}
    return httpx.get(base + path, headers={**headers, **kwargs.pop("headers", {})}, timeout=30, **kwargs)


# Rate limits --------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["admin", "advertiser", "ad_server"])
def test_a_key_gets_its_roles_burst_then_429_with_retry_after(
    tight: str, world: dict[str, Any], role: str
) -> None:
    key = world["keys"][role]
    statuses = [_get(tight, "/health", key).status_code for _ in range(BURSTS[role])]
    assert statuses == [200] * BURSTS[role]
    refused = _get(tight, "/health", key)
    body = assert_problem(refused, 429)
    assert body["type"].endswith(":rate-limited")
    retry_after = int(refused.headers["retry-after"])
    assert 1 <= retry_after <= 100  # one token per 100 s
    assert body["retry_after"] == retry_after
    # Another key of the same role has its own bucket.
    assert _get(tight, "/health", world["keys"][f"{role}2"]).status_code == 200
    # The refused key stays refused: a refusal takes no token, and none came back.
    assert_problem(_get(tight, "/health", key), 429)


def test_wrong_and_missing_keys_are_throttled_per_address(tight: str, world: dict[str, Any]) -> None:
    attempts = [
        _get(tight, "/v1/roas", f"ak_wrong_{i}" if i % 2 else None) for i in range(BURSTS["anonymous"])
    ]
    for resp in attempts:
        assert_problem(resp, 401)
    flood = _get(tight, "/v1/budget", "ak_guess")
    assert_problem(flood, 429)
    assert int(flood.headers["retry-after"]) >= 1
    # Another address has its own bucket; a valid key from the throttled address has its own too.
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=30) as other:
        assert_problem(other.get(tight + "/health", headers={"X-API-Key": "ak_wrong"}), 401)
    assert _get(tight, "/health", world["keys"]["admin"]).status_code == 200
    metrics = _get(tight, "/metrics", world["keys"]["admin"]).text
    assert 'attribution_api_rate_limited_total{role="anonymous"} 1.0' in metrics
    assert 'attribution_api_requests_total{method="GET",route="/v1/budget",status="429"} 1.0' in metrics


# Cost and size ------------------------------------------------------------------------------


def test_the_cost_bound_is_a_422_naming_the_parameter(roomy: str, world: dict[str, Any]) -> None:
    admin, some = world["keys"]["admin"], world["campaigns"]
    day = world["batch_day"]
    two_days = (world["today"] - timedelta(days=1)).isoformat()
    ok = _get(roomy, "/v1/roas", admin, params={"start": day, "end": two_days, "campaign_id": some[:10]})
    assert ok.status_code == 200, ok.text
    long = _get(
        roomy,
        "/v1/roas",
        admin,
        params={"start": day, "end": world["today"].isoformat(), "campaign_id": some[:10]},
    )
    body = assert_problem(long, 422, "end")
    assert body["type"].endswith(":cost-limit")
    assert (body["cost"], body["limit"]) == (30, MAX_COST)
    assert "3 days x 10 campaigns" in body["detail"]
    # One day of every campaign (an admin naming none asks for all 32): the campaigns are the cost.
    wide = _get(roomy, "/v1/roas", admin, params={"start": day, "end": day})
    assert assert_problem(wide, 422, "campaign_id")["cost"] == 32
    # An advertiser's own campaigns over 5 days fit.
    assert len(world["own"]) * 5 <= MAX_COST
    five = (world["today"] - timedelta(days=4)).isoformat()
    mine = _get(
        roomy,
        "/v1/roas",
        world["keys"]["advertiser"],
        params={"start": five, "end": world["today"].isoformat()},
    )
    assert mine.status_code == 200, mine.text


def test_size_limits_answer_413_414_431_and_values_are_echoed_cut_short(
    roomy: str, world: dict[str, Any]
) -> None:
    admin = world["keys"]["admin"]
    huge = _get(roomy, "/v1/roas", admin, params={"start": "x" * 60_000, "end": world["batch_day"]})
    assert "x" * 100 not in assert_problem(huge, 414)["detail"]
    long = _get(roomy, "/v1/roas", admin, params={"start": "x" * 10_000, "end": world["batch_day"]})
    body = assert_problem(long, 422, "start")
    assert len(long.text) < 1_000
    assert "x" * 100 not in long.text
    unknown = _get(roomy, "/v1/budget", admin, params={"campaign_id": "c" * 10_000})
    assert len(assert_problem(unknown, 404, "campaign_id")["detail"]) < 200
    assert_problem(_get(roomy, "/health", admin, headers={"X-Padding": "p" * 9_000}), 431)
    with_body = httpx.request(
        "GET", roomy + "/health", headers={"X-API-Key": admin}, content=b"{}", timeout=30
    )
    assert_problem(with_body, 413)
    posted = httpx.post(roomy + "/v1/roas", headers={"X-API-Key": admin}, content=b"x" * 100, timeout=30)
    assert_problem(posted, 413)
    chunked = httpx.request(
        "GET", roomy + "/health", headers={"X-API-Key": admin}, content=iter([b"a", b"b"]), timeout=30
    )
    assert_problem(chunked, 411)
    assert body["instance"] == "/v1/roas"


def test_every_error_status_is_a_problem_with_the_security_headers(roomy: str, world: dict[str, Any]) -> None:
    admin, adv, ads = world["keys"]["admin"], world["keys"]["advertiser"], world["keys"]["ad_server"]
    cases = [
        (
            _get(roomy, "/v1/roas", None, params={"start": world["batch_day"], "end": world["batch_day"]}),
            401,
            None,
        ),
        (
            _get(roomy, "/v1/roas", ads, params={"start": world["batch_day"], "end": world["batch_day"]}),
            403,
            None,
        ),
        (_get(roomy, "/metrics", adv), 403, None),
        (_get(roomy, "/no/such/route", admin), 404, None),
        (
            _get(
                roomy,
                "/v1/roas",
                adv,
                params={
                    "start": world["batch_day"],
                    "end": world["batch_day"],
                    "campaign_id": world["other"],
                },
            ),
            404,
            "campaign_id",
        ),
        (httpx.delete(roomy + "/v1/budget", headers={"X-API-Key": admin}, timeout=30), 405, None),
        (_get(roomy, "/v1/roas", admin, params={"start": world["batch_day"]}), 422, "end"),
        (
            _get(roomy, "/v1/roas", admin, params={"start": world["batch_day"], "end": "2000-01-01"}),
            422,
            "end",
        ),
        (_get(roomy, "/v1/budget", admin, params={"campaign_id": "x", "at": "-1"}), 422, "at"),
    ]
    for resp, status, parameter in cases:
        body = assert_problem(resp, status, parameter)
        assert body["instance"].startswith("/")
    assert "GET" in cases[5][0].headers["allow"]
    ok = _get(
        roomy,
        "/v1/roas",
        admin,
        params={"start": world["batch_day"], "end": world["batch_day"], "campaign_id": world["own"]},
    )
    assert ok.status_code == 200
    for name, value in SECURITY_HEADERS.items():
        assert ok.headers[name] == value
    assert ok.headers["content-security-policy"].startswith("default-src 'none'")
    assert "max-age=" in ok.headers["strict-transport-security"]


async def test_an_unexpected_error_is_a_500_problem_with_the_security_headers(world: dict[str, Any]) -> None:
    from reporting.api import create_app
    from shared_logic.settings import load_settings

    env = world["env"]
    settings = load_settings(
        lake_url=env["ATTRIBUTION_LAKE_URL"],
        catalog_url=env["ATTRIBUTION_CATALOG_URL"],
        api_keys_path=env["ATTRIBUTION_API_KEYS_PATH"],
        api_rate_limit=False,
        redis_url="redis://127.0.0.1:1/0",
    )
    app = create_app(settings)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport) as client:
        resp = await client.get("http://api/boom")
    body = assert_problem(resp, 500)
    assert "secret" not in resp.text
    assert body["instance"] == "/boom"


# Docs and metrics ---------------------------------------------------------------------------


def test_docs_and_metrics_need_a_key_by_default(roomy: str, world: dict[str, Any]) -> None:
    admin, adv = world["keys"]["admin"], world["keys"]["advertiser"]
    for path in ("/docs", "/redoc", "/openapi.json", "/metrics"):
        assert_problem(_get(roomy, path, None), 401)
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert _get(roomy, path, adv).status_code == 200
    schema = _get(roomy, "/openapi.json", admin).json()
    responses = schema["paths"]["/v1/roas"]["get"]["responses"]
    assert set(responses["429"]["content"]) == {"application/problem+json"}
    assert set(responses["200"]["content"]) == {"application/json"}
    assert_problem(_get(roomy, "/metrics", adv), 403)
    metrics = _get(roomy, "/metrics", admin)
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "attribution_api_request_duration_seconds_bucket" in metrics.text
    assert 'route="/openapi.json",status="200"' in metrics.text


def test_docs_and_metrics_are_public_by_setting(world: dict[str, Any], private_redis: LocalRedis) -> None:
    env = {
        **world["env"],
        "ATTRIBUTION_REDIS_URL": private_redis.url,
        "ATTRIBUTION_KEYS_PREFIX": "public",
        "ATTRIBUTION_API_DOCS_PUBLIC": "true",
        "ATTRIBUTION_API_METRICS_PUBLIC": "true",
        **ROOMY,
    }
    with running_api(env) as base:
        docs = _get(base, "/docs", None)
        assert docs.status_code == 200
        assert "swagger-ui" in docs.text
        # The docs page loads Swagger UI from this API (no CDN); nothing else relaxes the policy.
        assert "script-src 'self'" in docs.headers["content-security-policy"]
        assert "https:" not in docs.headers["content-security-policy"]
        assert docs.headers["cache-control"] == "no-store"
        spec = _get(base, "/openapi.json", None)
        assert spec.status_code == 200
        assert spec.headers["content-security-policy"].startswith("default-src 'none'")
        assert _get(base, "/metrics", None).status_code == 200
        assert_problem(_get(base, "/health", None), 401)  # the data routes still need a key


# Redis down ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fail_open", [True, False])
def test_redis_stopped_means_503_problems_never_a_plain_500(world: dict[str, Any], fail_open: bool) -> None:
    admin, ads = world["keys"]["admin"], world["keys"]["ad_server"]
    speed = {
        "start": world["batch_day"],
        "end": world["today"].isoformat(),
        "model": "billing",
        "campaign_id": world["own"],
    }
    batch_only = {"start": world["batch_day"], "end": world["batch_day"], "campaign_id": world["own"]}
    server = LocalRedis()
    try:
        env = {
            **world["env"],
            "ATTRIBUTION_REDIS_URL": server.url,
            "ATTRIBUTION_API_RATE_LIMIT_FAIL_OPEN": str(fail_open).lower(),
            **ROOMY,
        }
        with running_api(env) as base:
            assert _get(base, "/v1/budget", ads, params={"campaign_id": world["own"]}).status_code == 200
            served = _get(base, "/v1/roas", admin, params=speed)
            assert served.status_code == 200
            # The batch view ends at the batch day: the days after it, up to today, are Redis's.
            assert served.json()["batch_through"] == world["batch_day"]
            server.stop()
            # First after the stop: /v1/answer sends the limiter's script in its own pipeline, and
            # its failure is the limiter's (counted, paused, open or closed) as on any route.
            answer = _get(base, "/v1/answer", ads, params={"user_id": "u1", "campaign_id": world["own"]})
            problem = assert_problem(answer, 503)
            assert problem["type"].endswith(":unavailable")
            if fail_open:  # served without limits: the answer's own read fails
                assert problem["detail"] != "the rate limiter's Redis did not answer"
                assert "Redis" in problem["detail"]
            else:
                assert problem["detail"] == "the rate limiter's Redis did not answer"
                assert answer.headers["retry-after"] == "1"
            if fail_open:
                # The limiter lets requests through; what needs Redis answers 503, the rest answers.
                budget = assert_problem(
                    _get(base, "/v1/budget", ads, params={"campaign_id": world["own"]}), 503
                )
                assert budget["type"].endswith(":unavailable")
                assert "Redis" in budget["detail"]
                assert_problem(_get(base, "/v1/roas", admin, params=speed), 503)
                assert _get(base, "/v1/roas", admin, params=batch_only).status_code == 200
                assert _get(base, "/health", admin).status_code == 200
                ready = assert_problem(_get(base, "/ready", admin), 503)
                assert ready["checks"]["redis"].startswith("unavailable")
                assert ready["checks"]["store"] == "ok"
                metrics = _get(base, "/metrics", admin).text
                assert "attribution_api_rate_limit_errors_total 0.0" not in metrics
            else:
                # Fail closed: every request is refused while the limiter cannot count it.
                refused = _get(base, "/health", admin)
                assert assert_problem(refused, 503)["type"].endswith(":unavailable")
                assert int(refused.headers["retry-after"]) >= 1
                assert_problem(_get(base, "/v1/roas", admin, params=batch_only), 503)
    finally:
        server.stop()
