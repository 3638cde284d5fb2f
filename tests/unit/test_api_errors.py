"""The API's error mapping (one problem per category), its settings, and which speed days it reads."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
import redis.exceptions
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from realtime.errors import RedisUnavailable, UnknownCampaign
from realtime.views import Retention
from reporting.errors import (
    COST_LIMIT,
    INVALID_PARAMETER,
    UNAVAILABLE,
    CampaignNotFound,
    InvalidParameter,
    TooCostly,
    problem_of,
)
from reporting.problems import problem_for
from shared_logic.errors import Conflict, InvalidInput, MissingExtra
from shared_logic.settings import load_settings
from shared_logic.timeutil import MS_PER_DAY

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("exc", "status", "type_", "parameter"),
    [
        (InvalidParameter("end", "2026-01-01", "must not be before start"), 422, INVALID_PARAMETER, "end"),
        (TooCostly("end", "2026-01-01", 30, 20, "too much"), 422, COST_LIMIT, "end"),
        (InvalidInput("amount", -1, "must be positive"), 400, "about:blank", "amount"),
        (CampaignNotFound("c1"), 404, "about:blank", "campaign_id"),
        (UnknownCampaign("c1"), 404, "about:blank", None),
        (Conflict("rerun would leave stale days"), 409, "about:blank", None),
        (RedisUnavailable("down"), 503, UNAVAILABLE, None),
        (redis.exceptions.ConnectionError("Error 111 connecting to 10.0.0.7:6379"), 503, UNAVAILABLE, None),
        (redis.exceptions.TimeoutError("Timeout reading from socket"), 503, UNAVAILABLE, None),
        (ConnectionRefusedError(), 503, UNAVAILABLE, None),
        (MissingExtra("the PostgreSQL store", "postgres"), 500, "about:blank", None),
        (RuntimeError("bug"), 500, "about:blank", None),
    ],
)
def test_each_category_is_one_problem(
    exc: BaseException, status: int, type_: str, parameter: str | None
) -> None:
    p = problem_of(exc)
    body = p.body("/v1/roas")
    assert (body["status"], body["type"], body.get("parameter")) == (status, type_, parameter)
    assert body["title"]
    assert body["detail"]
    assert body["instance"] == "/v1/roas"


def test_server_side_problems_leak_nothing() -> None:
    for exc in (RuntimeError("password=hunter2"), MissingExtra("the PostgreSQL store", "postgres")):
        assert "hunter2" not in str(problem_of(exc).body("/"))
        assert "pip" not in problem_of(exc).detail
    # A client's connection error names the dependency, not its address.
    assert (
        "10.0.0.7"
        not in problem_of(redis.exceptions.ConnectionError("Error 111 connecting to 10.0.0.7")).detail
    )


def test_values_and_paths_are_echoed_cut_short() -> None:
    huge = "x" * 60_000
    assert len(problem_of(CampaignNotFound(huge)).body("/")["detail"]) < 120
    assert len(problem_of(InvalidParameter("start", huge, "not a date")).body("/")["detail"]) < 200
    assert len(problem_of(RuntimeError()).body("/" + huge)["instance"]) <= 200
    validation = RequestValidationError(
        [
            {
                "type": "date_from_datetime_parsing",
                "loc": ("query", "start"),
                "msg": "Input should be a valid date",
                "input": huge,
            }
        ]
    )
    p = problem_for(validation)
    assert (p.status, p.parameter, p.type) == (422, "start", INVALID_PARAMETER)
    assert len(p.detail) < 200


def test_validation_names_the_parameter_and_says_what_is_missing() -> None:
    missing = RequestValidationError(
        [
            {"type": "missing", "loc": ("query", "start"), "msg": "Field required", "input": None},
            {"type": "missing", "loc": ("query", "end"), "msg": "Field required", "input": None},
        ]
    )
    p = problem_for(missing)
    assert (p.parameter, p.detail) == ("start", "parameter 'start' is required (and 1 more)")


def test_http_exceptions_keep_their_status_and_headers() -> None:
    p = problem_for(HTTPException(405, "Method Not Allowed", headers={"Allow": "GET"}))
    body = p.body("/v1/roas")
    assert (body["status"], body["title"], body["type"], dict(p.headers)) == (
        405,
        "Method Not Allowed",
        "about:blank",
        {"Allow": "GET"},
    )


def test_rate_settings_per_role_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTRIBUTION_API_RATE_ADVERTISER_PER_S", "2.5")
    monkeypatch.setenv("ATTRIBUTION_API_RATE_ANONYMOUS_BURST", "3")
    monkeypatch.setenv("ATTRIBUTION_API_DOCS_PUBLIC", "true")
    api = load_settings().api
    assert api.rate("advertiser") == (2.5, 20)
    assert api.rate("anonymous") == (1.0, 3)
    assert api.docs_public
    assert not load_settings(api_docs_public=False).api.metrics_public


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ATTRIBUTION_API_RATE_ADMIN_PER_S", "0"),
        ("ATTRIBUTION_API_RATE_AD_SERVER_BURST", "0"),
        ("ATTRIBUTION_API_ROAS_MAX_COST", "0"),
        ("ATTRIBUTION_API_MAX_URL_BYTES", "10"),
    ],
)
def test_bad_limits_fail_at_start_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    from shared_logic.errors import InvalidSetting

    monkeypatch.setenv(name, value)
    with pytest.raises(InvalidSetting, match=name):
        load_settings()


def _ms(day: str, hour: int = 12) -> int:
    d = date.fromisoformat(day)
    return int(datetime(d.year, d.month, d.day, hour, tzinfo=UTC).timestamp() * 1000)


def test_speed_days_are_read_only_while_their_keys_can_exist() -> None:
    keep = Retention(counts_ms=10 * MS_PER_DAY, stats_ms=30 * MS_PER_DAY, max_future_ms=5 * 60_000)
    days = [f"2026-11-{d:02d}" for d in range(1, 31)]
    now = _ms("2026-11-23")
    # A day's keys outlive its end by the retention: the 12th ended 11.5 days ago, the 13th 10.5.
    assert keep.days(days, now, "counts") == [f"2026-11-{d:02d}" for d in range(13, 24)]
    # No later day can hold anything: events dated ahead of the clock are dead letters.
    assert keep.days(days, now, "stats") == [f"2026-11-{d:02d}" for d in range(1, 24)]
    assert keep.days(days, _ms("2026-11-23", 23) + 59 * 60_000, "counts")[-1] == "2026-11-24"
