"""``/v1/answer`` and ``/v1/budget`` over the app (``reporting.lane.AdServerLane``): a plainly valid
request is answered before the framework's middlewares, router and validation, with the same
headers and metrics, and every other request (no key, a wrong one, another role, a query a rule
refuses, an unusual spelling) gets exactly what FastAPI's own handler answers: the same status, the
same problem."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from reporting.errors import INVALID_PARAMETER, RATE_LIMITED
from reporting.routes import budget
from tests.factories import HOUR, T0, campaign, catalog

pytestmark = pytest.mark.integration

NOW = T0 + 10 * HOUR
IDS = ["even", "freq", "nope"]


async def _client(tmp_path: Any, redis_url: str, **changes: Any) -> AsyncIterator[tuple[Any, dict[str, str]]]:
    import httpx
    import yaml

    from reporting.api import create_app
    from reporting.auth import add_key
    from shared_logic.settings import load_settings

    cat = catalog(
        campaign("even", budget={"daily_minor": 1_000}),
        campaign("freq", frequency_cap={"impressions": 2, "window_ms": HOUR}),
    )
    (tmp_path / "catalog.yaml").write_text(yaml.safe_dump({"campaigns": cat.to_records()}))
    keys_path = tmp_path / "keys.yaml"
    keys = {
        "ad_server": add_key(keys_path, "ads", "ad_server"),
        "admin": add_key(keys_path, "root", "admin"),
        "advertiser": add_key(keys_path, "a1", "advertiser", "adv1"),
        "other_advertiser": add_key(keys_path, "a2", "advertiser", "adv2"),
    }
    settings = load_settings(
        lake_url=f"file://{tmp_path}/lake",
        catalog_url=str(tmp_path / "catalog.yaml"),
        api_keys_path=str(keys_path),
        redis_url=redis_url,
        **changes,
    )
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://api") as client,
    ):
        yield client, keys


@pytest.fixture
async def api(tmp_path: Any, redis_url: str) -> AsyncIterator[tuple[Any, dict[str, str]]]:
    async for pair in _client(tmp_path, redis_url, api_rate_limit=False):
        yield pair


def _spy(monkeypatch: pytest.MonkeyPatch, name: str = "plain_answer") -> list[bool]:
    """Whether each request was answered by the lane (True) or left to FastAPI (False)."""
    taken: list[bool] = []
    plain = getattr(budget, name)

    def spy(*args: Any) -> Any:
        found = plain(*args)
        taken.append(found is not None)
        return found

    monkeypatch.setattr(budget, name, spy)
    return taken


QUERIES: list[tuple[str, bool]] = [
    # (query, answered by the lane)
    (f"user_id=u1&campaign_id=even&campaign_id=freq&campaign_id=nope&at={NOW}", True),
    ("user_id=u1&campaign_id=even", True),  # at: now
    ("user_id=u%201&campaign_id=ev%65n&campaign_id=&at=946684800000", True),  # escapes, an empty id
    ("user_id=a&user_id=u2&campaign_id=even&campaign_id=even&at=4102444799999", True),  # last user_id
    ("user_id=" + "u" * 256 + "&campaign_id=even", True),
    ("user_id=u1&" + "&".join(["campaign_id=even"] * 500), True),
    ("user_id=u+1&campaign_id=ev+en&campaign_id=even", True),  # '+' is a space
    ("&&user_id=u1&&campaign_id=even&user_id&campaign_id&at", False),  # blanks: an empty at is a 422
    ("&&user_id=u1&&campaign_id=even&campaign_id&other=x&", True),  # empty pairs, a bare name
    ("user_id=u1=2&campaign_id=even=odd&CAMPAIGN_ID=no", True),  # '=' in a value, names match exactly
    ("campaign_id=even", False),  # 422 missing user_id
    ("user_id=&campaign_id=even", False),  # 422 empty
    ("user_id=" + "u" * 257 + "&campaign_id=even", False),  # 422 too long
    ("user_id=u1", False),  # 422 missing campaign_id
    ("user_id=u1&" + "&".join(["campaign_id=even"] * 501), False),  # 422 too many
    ("user_id=u1&campaign_id=even&at=", False),  # 422 not a number
    ("user_id=u1&campaign_id=even&at=soon", False),
    ("user_id=u1&campaign_id=even&at=946684799999", False),  # 422 below
    ("user_id=u1&campaign_id=even&at=4102444800000", False),  # 422 at the upper bound
    ("user_id=u1&campaign_id=even&at=-1", False),
    ("user_id=u1&campaign_id=even&at=1.5e12", False),
    # Spellings the lane leaves to pydantic, whatever it decides.
    (f"user_id=u1&campaign_id=even&at=0{NOW}", False),
    (f"user_id=u1&campaign_id=even&at=%20{NOW}", False),
    (f"user_id=u1&campaign_id=even&at=%2B{NOW}", False),
]


@pytest.mark.parametrize("role", ["ad_server", "admin"])
async def test_fast_and_checked_handlers_answer_every_query_alike(
    api: tuple[Any, dict[str, str]], role: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, keys = api
    headers = {"X-API-Key": keys[role]}
    checked = []
    with monkeypatch.context() as m:

        def never(*args: Any) -> None:
            return None

        m.setattr(budget, "plain_answer", never)
        for query, _ in QUERIES:
            checked.append(await client.get(f"/v1/answer?{query}", headers=headers))
    taken = _spy(monkeypatch)
    for (query, fast), before in zip(QUERIES, checked, strict=True):
        after = await client.get(f"/v1/answer?{query}", headers=headers)
        assert taken[-1] is fast, query
        assert after.status_code == before.status_code, query
        assert after.headers["content-type"] == before.headers["content-type"], query
        if after.status_code == 200 and "at=" in query and "at=&" not in query:
            assert after.json() == before.json(), query
        elif after.status_code == 200:  # at: now, a moment apart
            assert [a["campaign_id"] for a in after.json()] == [b["campaign_id"] for b in before.json()]
        else:
            assert after.status_code == 422, query
            assert after.json() == before.json(), query
            assert after.json()["type"] == INVALID_PARAMETER
            assert after.headers["x-content-type-options"] == "nosniff"


async def test_a_valid_request_is_answered_by_the_lane(
    api: tuple[Any, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, keys = api
    taken = _spy(monkeypatch)
    ok = await client.get(
        "/v1/answer",
        params={"user_id": "u1", "campaign_id": IDS, "at": NOW},
        headers={"X-API-Key": keys["ad_server"]},
    )
    assert ok.status_code == 200, ok.text
    assert taken == [True]
    assert [(a["campaign_id"], a["servable"], a["reason"]) for a in ok.json()] == [
        ("even", True, None),
        ("freq", True, None),
        ("nope", False, "unknown"),
    ]
    assert ok.headers["content-type"] == "application/json"
    assert ok.headers["cache-control"] == "no-store"


@pytest.mark.parametrize(
    ("key", "status"),
    [(None, 401), ("ak_wrong", 401), ("advertiser", 403)],
)
async def test_no_key_a_wrong_key_or_another_role_is_refused_by_fastapi(
    api: tuple[Any, dict[str, str]], monkeypatch: pytest.MonkeyPatch, key: str | None, status: int
) -> None:
    client, keys = api
    taken = _spy(monkeypatch)
    headers = {} if key is None else {"X-API-Key": keys.get(key, key)}
    resp = await client.get("/v1/answer", params={"user_id": "u1", "campaign_id": IDS}, headers=headers)
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.json()["status"] == status
    assert resp.headers["x-frame-options"] == "DENY"
    assert taken == [False]


async def test_an_ad_server_key_past_its_burst_gets_429_from_the_lane(
    tmp_path: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async for client, keys in _client(
        # a 10 s limiter timeout: on a loaded machine a slow round trip is not taken for an outage
        tmp_path, redis_url, api_rate_ad_server_per_s=0.01, api_rate_ad_server_burst=2,
        api_rate_limit_timeout_ms=10_000,
    ):  # fmt: skip
        taken = _spy(monkeypatch)
        params = {"user_id": "u1", "campaign_id": IDS}
        statuses = [
            (
                await client.get("/v1/answer", params=params, headers={"X-API-Key": keys["ad_server"]})
            ).status_code
            for _ in range(2)
        ]
        refused = await client.get("/v1/answer", params=params, headers={"X-API-Key": keys["ad_server"]})
        assert statuses == [200, 200]
        assert refused.status_code == 429
        assert refused.json()["type"] == RATE_LIMITED
        assert int(refused.headers["retry-after"]) >= 1
        # All three were the lane's: the limit rode in the answer's pipeline and the refusal raised
        # there, answering nothing (tests/integration/test_answer_limit.py).
        assert taken == [True, True, True]


async def test_the_openapi_entry_is_the_endpoints(api: tuple[Any, dict[str, str]]) -> None:
    client, keys = api
    doc = (await client.get("/openapi.json", headers={"X-API-Key": keys["admin"]})).json()
    op = doc["paths"]["/v1/answer"]["get"]
    params = {p["name"]: p for p in op["parameters"]}
    assert set(params) == {"user_id", "campaign_id", "at"}
    assert params["user_id"]["required"]
    assert params["campaign_id"]["required"]
    assert params["user_id"]["schema"]["maxLength"] == 256
    assert params["campaign_id"]["schema"]["maxItems"] == 500
    assert {"200", "401", "403", "422", "429"} <= set(op["responses"])
    assert "application/problem+json" in op["responses"]["403"]["content"]


async def _checked_then_lane(
    client: Any, monkeypatch: pytest.MonkeyPatch, headers: dict[str, str]
) -> tuple[Any, Any, list[bool]]:
    """One answer request as FastAPI's handler answers it, then as the lane does, and whether the
    lane took each request after the first."""
    params = {"user_id": "u1", "campaign_id": IDS, "at": NOW}
    with monkeypatch.context() as m:
        m.setattr(budget, "plain_answer", lambda *args: None)
        checked = await client.get("/v1/answer", params=params, headers=headers)
    taken = _spy(monkeypatch)
    lane = await client.get("/v1/answer", params=params, headers=headers)
    return checked, lane, taken


async def test_the_lanes_answer_has_the_routes_headers_and_metrics(
    api: tuple[Any, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The lane sits inside the security headers and the request metrics: its answer and FastAPI's
    # to the same query are the same response, counted under the same route.
    client, keys = api
    checked, lane, taken = await _checked_then_lane(client, monkeypatch, {"X-API-Key": keys["ad_server"]})
    assert taken == [True]
    assert lane.status_code == checked.status_code == 200
    assert lane.content == checked.content
    assert dict(lane.headers) == dict(checked.headers)
    assert lane.headers["content-security-policy"].startswith("default-src 'none'")
    metrics = (await client.get("/metrics", headers={"X-API-Key": keys["admin"]})).text
    assert 'attribution_api_requests_total{method="GET",route="/v1/answer",status="200"} 2.0' in metrics


async def test_a_redis_outage_is_the_same_problem_from_the_lane(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from devtools.servers import free_port

    async for client, keys in _client(tmp_path, f"redis://127.0.0.1:{free_port()}/0", api_rate_limit=False):
        checked, lane, taken = await _checked_then_lane(client, monkeypatch, {"X-API-Key": keys["ad_server"]})
        assert taken == [True]
        assert lane.status_code == checked.status_code == 503
        assert lane.headers["content-type"] == "application/problem+json"
        assert lane.json() == checked.json()
        assert lane.headers["x-frame-options"] == "DENY"


BUDGET_QUERIES: list[tuple[str, bool]] = [
    # (query, answered by the lane)
    (f"campaign_id=even&at={NOW}", True),
    (f"campaign_id=even&campaign_id=freq&campaign_id=even&at={NOW}", True),
    (f"campaign_id=nope&at={NOW}", True),  # 404 from the app's handler, through the lane
    (f"campaign_id=&at={NOW}", True),  # an empty id: 404 too
    ("campaign_id=even", True),  # at: now
    (f"campaign_id=ev%65n&user_id=x&at={NOW}", True),  # escapes, a parameter it does not read
    ("", False),  # 422 missing campaign_id
    ("campaign_id=even&at=soon", False),
    ("campaign_id=even&at=946684799999", False),  # 422 below
    (f"campaign_id=even&at=0{NOW}", False),  # a spelling left to pydantic
    ("&".join(["campaign_id=even"] * 1001), False),  # 422 too many
]


@pytest.mark.parametrize("role", ["ad_server", "admin", "advertiser", "other_advertiser", None])
async def test_the_lanes_budget_read_is_the_endpoints_for_every_query_and_key(
    tmp_path: Any, redis_url: str, role: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    async for client, keys in _client(tmp_path, redis_url, api_rate_limit=False):
        headers = {} if role is None else {"X-API-Key": keys[role]}
        checked = []
        with monkeypatch.context() as m:
            m.setattr(budget, "plain_budget", lambda *args: None)
            for query, _ in BUDGET_QUERIES:
                checked.append(await client.get(f"/v1/budget?{query}", headers=headers))
        taken = _spy(monkeypatch, "plain_budget")
        for (query, lane), before in zip(BUDGET_QUERIES, checked, strict=True):
            after = await client.get(f"/v1/budget?{query}", headers=headers)
            assert taken[-1] is (lane and role is not None), query
            assert after.status_code == before.status_code, query
            assert after.headers["content-type"] == before.headers["content-type"], query
            assert after.headers["x-content-type-options"] == "nosniff"
            if after.status_code == 200 and "at=" not in query:  # at: now, a moment apart
                assert [b["campaign_id"] for b in after.json()] == [b["campaign_id"] for b in before.json()]
            else:
                assert after.json() == before.json(), query
        if role == "other_advertiser":  # another advertiser's campaign looks exactly like a missing one
            assert checked[0].status_code == 404
        elif role is None:
            assert {r.status_code for r in checked} == {401}
        else:
            assert checked[0].status_code == 200


async def test_a_budget_read_past_its_burst_gets_the_limiters_429_from_the_lane(
    tmp_path: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async for client, keys in _client(
        tmp_path, redis_url, api_rate_ad_server_per_s=0.01, api_rate_ad_server_burst=2,
        api_rate_limit_timeout_ms=10_000,
    ):  # fmt: skip
        taken = _spy(monkeypatch, "plain_budget")
        headers = {"X-API-Key": keys["ad_server"]}
        params = {"campaign_id": "even", "at": NOW}
        statuses = [
            (await client.get("/v1/budget", params=params, headers=headers)).status_code for _ in range(3)
        ]
        assert statuses == [200, 200, 429]
        assert taken == [True, True, True]
        refused = await client.get("/v1/budget", params=params, headers=headers)
        assert refused.json()["type"] == RATE_LIMITED
        assert refused.headers["content-type"] == "application/problem+json"
        assert int(refused.headers["retry-after"]) >= 1
        metrics = (await client.get("/metrics", headers={"X-API-Key": keys["admin"]})).text
        assert 'attribution_api_requests_total{method="GET",route="/v1/budget",status="429"} 2.0' in metrics
        assert 'attribution_api_rate_limited_total{role="ad_server"} 2.0' in metrics
