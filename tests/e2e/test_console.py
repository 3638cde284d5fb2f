"""The console over HTTP (FastAPI's TestClient on the real app: real Redis, DuckDB over a real
lake with two batch days reconciled): sign-in, the cookie's flags, CSRF refusals, sign-out,
advertiser isolation, and CSV downloads equal to the JSON API's numbers."""

from __future__ import annotations

import csv
import io
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import pytest
from fastapi.testclient import TestClient

from reporting.api import create_app
from tests.console_world import DAYS, World, build_world

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, redis_server: Any, spark: Any) -> World:
    return build_world(tmp_path_factory.mktemp("console"), redis_server.url, spark)


@pytest.fixture
def app_client(world: World) -> Iterator[TestClient]:
    with TestClient(create_app(world.settings()), base_url="http://127.0.0.1") as client:
        yield client


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html[:500]
    return found.group(1)


def sign_in(client: TestClient, key: str) -> Any:
    form = client.get("/console/sign-in")
    assert form.status_code == 200
    return client.post(
        "/console/sign-in", data={"api_key": key, "csrf": _csrf(form.text)}, follow_redirects=False
    )


def _json(client: TestClient, world: World, who: str, path: str, **params: Any) -> Any:
    resp = client.get(path, params=params, headers={"X-API-Key": world.keys[who]})
    assert resp.status_code == 200, resp.text
    return resp.json()


def _csv(resp: Any) -> list[dict[str, str]]:
    assert resp.status_code == 200, resp.text[:300]
    assert resp.headers["content-type"].startswith("text/csv")
    assert resp.headers["content-disposition"].startswith("attachment;")
    return list(csv.DictReader(io.StringIO(resp.text)))


def test_sign_in_sets_a_strict_httponly_expiring_cookie_and_the_key_never_in_a_url(
    app_client: TestClient, world: World
) -> None:
    assert app_client.get("/console", follow_redirects=False).headers["location"] == "/console/sign-in"
    resp = sign_in(app_client, world.keys["adv00"])
    assert resp.status_code == 303
    assert resp.headers["location"] == "/console"
    cookie = next(v for k, v in resp.headers.multi_items() if k == "set-cookie" and "console_session" in v)
    flags = {p.strip().split("=")[0].lower(): p for p in cookie.split(";")}
    assert "httponly" in flags
    assert flags["samesite"].strip().lower() == "samesite=strict"
    assert int(flags["max-age"].split("=")[1]) > 0
    assert flags["path"].strip() == "Path=/"
    assert world.keys["adv00"] not in cookie  # encrypted, not merely signed
    page = app_client.get("/console")
    assert page.status_code == 200
    assert world.keys["adv00"] not in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "unsafe-inline" not in csp


def test_a_wrong_key_or_an_ad_server_key_cannot_sign_in(app_client: TestClient, world: World) -> None:
    assert sign_in(app_client, "ak_not-a-key").status_code == 401
    assert sign_in(app_client, world.keys["ads"]).status_code == 401
    assert "console_session" not in app_client.cookies


def test_forms_without_the_csrf_token_or_from_another_origin_are_refused(
    app_client: TestClient, world: World
) -> None:
    app_client.get("/console/sign-in")
    bad = app_client.post("/console/sign-in", data={"api_key": world.keys["adv00"], "csrf": "forged"})
    assert bad.status_code == 403
    assert "console_session" not in app_client.cookies
    form = app_client.get("/console/sign-in")
    other_site = app_client.post(
        "/console/sign-in",
        data={"api_key": world.keys["adv00"], "csrf": _csrf(form.text)},
        headers={"Origin": "https://evil.example"},
    )
    assert other_site.status_code == 403
    assert sign_in(app_client, world.keys["adv00"]).status_code == 303
    refused = app_client.post("/console/sign-out", data={"csrf": "0" * 64}, follow_redirects=False)
    assert refused.status_code == 403
    assert app_client.get("/console").status_code == 200  # still signed in


def test_sign_out_ends_the_session_even_for_a_copy_of_the_cookie(
    app_client: TestClient, world: World
) -> None:
    sign_in(app_client, world.keys["adv01"])
    copy = app_client.cookies["console_session"]
    page = app_client.get("/console")
    out = app_client.post("/console/sign-out", data={"csrf": _csrf(page.text)}, follow_redirects=False)
    assert out.status_code == 303
    app_client.cookies.set("console_session", copy)  # a copy kept from before the sign-out
    replay = app_client.get("/console", follow_redirects=False)
    assert replay.status_code == 303
    assert replay.headers["location"] == "/console/sign-in"
    assert app_client.get("/console/today.json").status_code == 401


def test_json_routes_keep_x_api_key_and_ignore_the_session(app_client: TestClient, world: World) -> None:
    sign_in(app_client, world.keys["admin"])
    assert app_client.get("/v1/roas", params={"start": DAYS[0], "end": DAYS[0]}).status_code == 401
    assert app_client.get("/docs").status_code == 200  # the docs take the session


def test_an_advertiser_sees_only_its_campaigns_anywhere(app_client: TestClient, world: World) -> None:
    sign_in(app_client, world.keys["adv00"])
    mine, theirs = world.campaigns_of("adv00"), world.campaigns_of("adv01")
    assert mine
    assert theirs
    params = {"start": DAYS[0], "end": DAYS[2]}
    pages = [
        app_client.get(p, params=params).text
        for p in (
            "/console",
            "/console/roas",
            "/console/budget",
            "/console/reconciliation",
            "/console/invalid-traffic",
        )
    ]
    pages.append(app_client.get("/console/today.json").text)
    pages += [
        app_client.get(f"/console/csv/{t}.csv", params=params).text
        for t in (
            "overview",
            "roas-daily",
            "roas-models",
            "budget",
            "reconciliation-campaigns",
            "invalid-traffic",
        )
    ]
    for text in pages:
        for cid in theirs:
            assert cid not in text
        assert "adv01" not in text
    assert all(cid in pages[0] for cid in mine)
    # Asking for another advertiser's campaign, or picking an advertiser, changes nothing.
    assert app_client.get("/console/roas", params={"campaign_id": theirs[0]}).status_code == 404
    shown = app_client.get("/console", params={"advertiser": "adv01"}).text
    assert not any(cid in shown for cid in theirs)


def test_an_admin_picks_any_advertiser(app_client: TestClient, world: World) -> None:
    sign_in(app_client, world.keys["admin"])
    page = app_client.get("/console", params={"advertiser": "adv01"}).text
    assert all(cid in page for cid in world.campaigns_of("adv01"))
    assert not any(cid in page for cid in world.campaigns_of("adv00"))
    assert app_client.get("/console", params={"advertiser": "nobody"}).status_code == 422


def test_overview_csv_equals_the_roas_and_budget_apis(app_client: TestClient, world: World) -> None:
    sign_in(app_client, world.keys["adv00"])
    rows = _csv(
        app_client.get(
            "/console/csv/overview.csv", params={"start": DAYS[0], "end": DAYS[2], "model": "markov"}
        )
    )
    report = _json(app_client, world, "adv00", "/v1/roas", start=DAYS[0], end=DAYS[2])["rows"]
    spend: dict[str, int] = defaultdict(int)
    revenue: dict[str, float] = defaultdict(float)
    model_spend: dict[str, int] = defaultdict(int)
    for r in report:
        if r["model"] == "billing":
            spend[r["campaign_id"]] += r["spend_minor"]
        if r["model"] == "markov":
            revenue[r["campaign_id"]] += r["revenue_minor"]
            model_spend[r["campaign_id"]] += r["spend_minor"]
    budget = {
        b["campaign_id"]: b
        for b in _json(app_client, world, "adv00", "/v1/budget", campaign_id=[r["campaign_id"] for r in rows])
    }
    assert {r["campaign_id"] for r in rows} == set(world.campaigns_of("adv00"))
    for r in rows:
        cid = r["campaign_id"]
        assert int(r["spend_minor"]) == spend[cid]
        assert float(r["revenue_minor"]) == pytest.approx(revenue[cid], rel=1e-12)
        expected_roas = revenue[cid] / model_spend[cid] if model_spend[cid] else None
        if expected_roas is None:
            assert r["roas"] == ""
        else:
            assert float(r["roas"]) == pytest.approx(expected_roas, rel=1e-12)
        assert int(r["spend_lifetime_minor"]) == budget[cid]["spend_lifetime_minor"]
        assert r["spend_source"] == "batch+speed"  # two batch days, then a speed day
        assert r["roas_source"] in ("batch", "-")  # markov is the batch layer's only
    assert any(int(r["spend_minor"]) > 0 for r in rows)


def test_roas_by_day_draws_one_line_per_model_and_its_csv_equals_the_api(
    app_client: TestClient, world: World
) -> None:
    sign_in(app_client, world.keys["adv00"])
    cid = world.campaigns_of("adv00")[0]
    params = {"start": DAYS[0], "end": DAYS[2], "campaign_id": cid, "model": ["billing", "markov", "shapley"]}
    page = app_client.get("/console/roas", params=params).text
    svg = page[page.index('<svg xmlns="http://www.w3.org/2000/svg" id="roas-chart"') :]
    svg = svg[: svg.index("</svg>")]
    assert re.findall(r'data-series="([^"]+)"', svg) == ["billing", "markov", "shapley"]
    models = _csv(app_client.get("/console/csv/roas-models.csv", params=params))
    report = _json(app_client, world, "adv00", "/v1/roas", start=DAYS[0], end=DAYS[2], campaign_id=cid)
    for m in models:
        mine = [r for r in report["rows"] if r["model"] == m["model"]]
        assert int(m["spend_minor"]) == sum(r["spend_minor"] for r in mine)
        assert float(m["revenue_minor"]) == pytest.approx(sum(r["revenue_minor"] for r in mine), rel=1e-12)
        assert int(m["days"]) == len(mine)
    billing_points = svg.split('data-series="billing"')[1].split("</g>")[0].count("<circle")
    expected = [r for r in report["rows"] if r["model"] == "billing" and r["roas"] is not None]
    assert billing_points == len(expected)


def test_reconciliation_csv_equals_the_json_route_and_the_nightly_summary(
    app_client: TestClient, world: World
) -> None:
    from storage import partition

    sign_in(app_client, world.keys["admin"])
    params = {"start": DAYS[0], "end": DAYS[2]}
    days = _csv(app_client.get("/console/csv/reconciliation-days.csv", params=params))
    body = _json(app_client, world, "admin", "/v1/reconciliation", **params)
    assert [d["day"] for d in days] == DAYS[:2]
    assert body["unreconciled"] == [DAYS[2]]
    for row, api in zip(days, body["days"], strict=True):
        summary = world.lake.manifest(partition("reconciliation", dt=row["day"]))
        assert summary is not None
        assert int(row["orders"]) == api["orders"] == summary["orders"]
        assert int(row["differing"]) == api["differing"] == summary["differing"]
        for cause, n in summary["causes"].items():
            assert int(row[cause]) == n
    campaigns = _csv(app_client.get("/console/csv/reconciliation-campaigns.csv", params=params))
    assert [int(r["difference_minor"]) for r in campaigns] == [
        r["difference_minor"] for r in body["campaigns"]
    ]


def test_budget_view_draws_spend_and_cap_with_slots_for_pacing(app_client: TestClient, world: World) -> None:
    sign_in(app_client, world.keys["adv00"])
    page = app_client.get("/console/budget").text
    assert 'data-series="spend today"' in page
    assert 'data-slot="pacing target"' in page
    assert 'data-slot="serve probability"' in page
    today = app_client.get("/console/today.json").json()
    assert {r["campaign_id"] for r in today["campaigns"]} == set(world.campaigns_of("adv00"))
    assert all("timezone" in r and r["budget_day"] for r in today["campaigns"])


def test_docs_load_their_assets_from_this_api(app_client: TestClient, world: World) -> None:
    headers = {"X-API-Key": world.keys["admin"]}
    for page, asset in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
        html = app_client.get(page, headers=headers)
        assert html.status_code == 200
        assert "cdn." not in html.text
        assert f"/docs/assets/{asset}" in html.text
        assert "https:" not in html.headers["content-security-policy"]
        assert app_client.get(f"/docs/assets/{asset}").status_code == 200


# Invalid traffic ---------------------------------------------------------------------------------

_COUNTS = ("touches", "touches_refused", "orders_changed", "orders_unattributed", "orders_flagged")


@pytest.fixture(scope="module")
def ivt_written(world: World) -> list[Any]:
    """Verdicts this test owns: the nightly job's ``ivt/`` of both batch days replaced (rows on the
    first, none on the second), the speed layer's hash of the open day replaced, and a decoy in
    the speed layer's hash of the first day, which the lake's verdicts must hide."""
    import orjson
    import pyarrow as pa
    import redis

    from realtime.keys import Keys
    from shared_logic.contract import IVT, IVT_ROW, IvtRow, ivt_field
    from storage import partition
    from storage.arrow import arrow_schema

    mine, theirs = world.campaigns_of("adv00"), world.campaigns_of("adv01")
    cur = {c: world.traffic.catalog.get(c).currency for c in (*mine, *theirs)}  # type: ignore[union-attr]
    t0 = 1_000

    def order(day: str, cid: str, reason: str, mode: str, outcome: str, oid: str, avoided: int) -> IvtRow:
        return IvtRow("order", cid, reason, mode, outcome, "u-" + oid, "c-" + oid, t0, oid, avoided, cur[cid])

    def touch(cid: str, reason: str, outcome: str, eid: str) -> IvtRow:
        mode = "enforce" if outcome == "refused" else "report"
        return IvtRow("touch", cid, reason, mode, outcome, "u-" + eid, eid, t0)

    closed = [
        touch(mine[0], "bot_user_agent", "refused", "e1"),
        touch(mine[0], "bot_user_agent", "refused", "e2"),
        touch(mine[0], "bot_user_agent", "flagged", "e3"),
        order(DAYS[0], mine[0], "click_injection", "enforce", "changed", "o1", 1250),
        order(DAYS[0], mine[0], "click_injection", "enforce", "unattributed", "o2", 999),
        order(DAYS[0], mine[0], "click_injection", "report", "flagged", "o3", 0),
        order(DAYS[0], mine[-1], "click_flooding", "enforce", "changed", "o4", 70),
        order(DAYS[0], theirs[0], "click_flooding", "enforce", "changed", "o5", 4321),
    ]
    open_day = [
        touch(mine[0], "datacenter_ip", "refused", "e4"),
        order(DAYS[2], mine[0], "hyper_engagement", "enforce", "unattributed", "o6", 333),
        order(DAYS[2], theirs[0], "datacenter_ip", "enforce", "changed", "o7", 55),
    ]
    decoy = [order(DAYS[0], mine[0], "click_flooding", "enforce", "changed", "o8", 77_777)]
    schema = arrow_schema(IVT_ROW)
    for day, rows in ((DAYS[0], closed), (DAYS[1], [])):
        table = pa.Table.from_pylist([asdict(r) for r in rows], schema=schema)
        world.lake.write_partition(partition(IVT, dt=day), table)
    keys = Keys.of(world.settings().keys)
    client = redis.Redis.from_url(world.redis_url)
    for day, rows in ((DAYS[2], open_day), (DAYS[0], decoy)):
        client.delete(keys.ivt(day))
        client.hset(keys.ivt(day), mapping={ivt_field(r): orjson.dumps(asdict(r)) for r in rows})
    return [(DAYS[0], r) for r in closed] + [(DAYS[2], r) for r in open_day]


def _expected_ivt(written: list[Any], campaigns: list[str]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """What the rows the test wrote add up to, per day, campaign and reason."""
    out: dict[tuple[str, str, str], dict[str, Any]] = {}
    for day, r in written:
        if r.campaign_id not in campaigns:
            continue
        e = out.setdefault(
            (day, r.campaign_id, r.reason),
            {
                **dict.fromkeys(_COUNTS, 0),
                "avoided_minor": 0,
                "source": "batch" if day == DAYS[0] else "speed",
            },
        )
        e["touches"] += 1
        e["touches_refused"] += r.outcome == "refused"
        e["orders_changed"] += r.outcome == "changed"
        e["orders_unattributed"] += r.outcome == "unattributed"
        e["orders_flagged"] += r.scope == "order" and r.outcome == "flagged"
        e["avoided_minor"] += r.avoided_minor
    return out


def test_the_ivt_api_reads_the_lake_for_judged_days_and_redis_after_per_advertiser(
    app_client: TestClient, world: World, ivt_written: list[Any]
) -> None:
    """``/v1/ivt`` adds up the verdicts the test wrote: the lake's for the days the nightly job
    judged (the speed layer's decoy on such a day is not shown; mutant: reading Redis for every
    day), Redis's for the open day (mutant: the lake only, as before), only the key's campaigns."""
    params = {"start": DAYS[0], "end": DAYS[2]}
    for who, advertisers in (("adv00", ["adv00"]), ("adv01", ["adv01"]), ("admin", ["adv00", "adv01"])):
        campaigns = [c for a in advertisers for c in world.campaigns_of(a)]
        body = _json(app_client, world, who, "/v1/ivt", **params)
        got = {(r["day"], r["campaign_id"], r["reason"]): r for r in body["rows"]}
        expected = _expected_ivt(ivt_written, campaigns)
        assert set(got) == set(expected), who
        for k, e in expected.items():
            assert {f: got[k][f] for f in e} == e, (who, k)
            assert got[k]["currency"] == world.traffic.catalog.get(k[1]).currency  # type: ignore[union-attr]
    assert app_client.get("/v1/ivt", params=params).status_code == 401
    ads = app_client.get("/v1/ivt", params=params, headers={"X-API-Key": world.keys["ads"]})
    assert ads.status_code == 403
    backwards = app_client.get(
        "/v1/ivt", params={"start": DAYS[2], "end": DAYS[0]}, headers={"X-API-Key": world.keys["adv00"]}
    )
    assert backwards.status_code == 422
    assert "end" in backwards.text
    theirs = world.campaigns_of("adv01")[0]
    hidden = app_client.get(
        "/v1/ivt", params={**params, "campaign_id": theirs}, headers={"X-API-Key": world.keys["adv00"]}
    )
    assert hidden.status_code == 404


def test_invalid_traffic_page_and_csv_show_the_verdicts_of_the_advertisers_campaigns(
    app_client: TestClient, world: World, ivt_written: list[Any]
) -> None:
    from shared_logic.money import format_minor

    params = {"start": DAYS[0], "end": DAYS[2]}
    sign_in(app_client, world.keys["adv00"])
    mine, theirs = world.campaigns_of("adv00"), world.campaigns_of("adv01")
    expected = _expected_ivt(ivt_written, mine)
    page = app_client.get("/console/invalid-traffic", params=params)
    assert page.status_code == 200
    assert "placeholder" not in page.text
    for (day, cid, reason), e in expected.items():
        row = re.search(
            rf'<tr data-day="{day}" data-campaign="{re.escape(cid)}" data-reason="{reason}">(.*?)</tr>',
            page.text,
        )
        assert row, (day, cid, reason)
        cells = re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row.group(1))
        currency = world.traffic.catalog.get(cid).currency  # type: ignore[union-attr]
        assert cells[3:8] == [str(e[f]) for f in _COUNTS]
        assert cells[8] == format_minor(e["avoided_minor"], currency)
        assert cells[9] == e["source"]
    assert page.text.count('<tr data-day="') == len(expected)
    rows = _csv(app_client.get("/console/csv/invalid-traffic.csv", params=params))
    got = {(r["day"], r["campaign_id"], r["reason"]): r for r in rows}
    assert set(got) == set(expected)
    for k, e in expected.items():
        assert {f: int(got[k][f]) for f in (*_COUNTS, "avoided_minor")} == {
            f: e[f] for f in (*_COUNTS, "avoided_minor")
        }
        assert got[k]["source"] == e["source"]
    for text in (page.text, app_client.get("/console/csv/invalid-traffic.csv", params=params).text):
        assert not any(cid in text for cid in theirs)
        decoy = format_minor(77_777, world.traffic.catalog.get(mine[0]).currency)  # type: ignore[union-attr]
        assert decoy not in text  # the speed layer's decoy on a judged day
        assert ",77777," not in text
    # An admin picking adv01 sees adv01's verdicts only.
    sign_in(app_client, world.keys["admin"])
    admin = _csv(app_client.get("/console/csv/invalid-traffic.csv", params={**params, "advertiser": "adv01"}))
    assert {(r["day"], r["campaign_id"], r["reason"]) for r in admin} == set(
        _expected_ivt(ivt_written, theirs)
    )


def test_roas_rows_and_prometheus_carry_the_invalid_traffic_of_the_open_day(
    app_client: TestClient, world: World, ivt_written: list[Any]
) -> None:
    """``/v1/roas``'s ``ivt_*`` fields and ``/metrics``' ``attribution_ivt_day_*`` gauges, over
    HTTP: the open day's (the speed layer's) are the verdicts the test wrote to Redis summed per
    campaign (and per reason for the gauges); the batch days' come from the nightly job's metrics
    (no fraud in this world: 0), and the speed layer's decoy on a batch day is in neither."""
    from prometheus_client.parser import text_string_to_metric_families

    from shared_logic.contract import IVT_MEASURES

    open_day = [r for day, r in ivt_written if day == DAYS[2]]
    per_campaign: dict[str, dict[str, int]] = {}
    per_reason: dict[tuple[str, str, str], dict[str, int]] = {}
    for r in open_day:
        for slot in (
            per_campaign.setdefault(r.campaign_id, dict.fromkeys(IVT_MEASURES, 0)),
            per_reason.setdefault((DAYS[2], r.campaign_id, r.reason), dict.fromkeys(IVT_MEASURES, 0)),
        ):
            slot["ivt_touches"] += 1
            slot["ivt_orders_changed"] += r.outcome == "changed"
            slot["ivt_orders_unattributed"] += r.outcome == "unattributed"
            slot["ivt_avoided_minor"] += r.avoided_minor
    assert any(v["ivt_orders_changed"] for v in per_campaign.values())
    assert any(v["ivt_orders_unattributed"] for v in per_campaign.values())
    body = _json(app_client, world, "admin", "/v1/roas", start=DAYS[0], end=DAYS[2])
    rows = body["rows"]
    assert body["batch_through"] == DAYS[1]
    for r in rows:
        if r["day"] == DAYS[2]:
            assert r["source"] == "speed"
            want = per_campaign.get(r["campaign_id"], dict.fromkeys(IVT_MEASURES, 0))
            assert {f: r[f] for f in IVT_MEASURES} == want, r["campaign_id"]
        else:
            assert {f: r[f] for f in IVT_MEASURES} == dict.fromkeys(IVT_MEASURES, 0), r
    speed_cids = {r["campaign_id"] for r in rows if r["day"] == DAYS[2]}
    assert set(per_campaign) <= speed_cids
    # An advertiser sees the fields on its own campaigns' rows only.
    mine = world.campaigns_of("adv00")
    adv = _json(app_client, world, "adv00", "/v1/roas", start=DAYS[2], end=DAYS[2])["rows"]
    assert {r["campaign_id"] for r in adv} <= set(mine)
    assert all(r["ivt_touches"] == per_campaign.get(r["campaign_id"], {}).get("ivt_touches", 0) for r in adv)

    assert app_client.get("/metrics").status_code in (401, 403)
    resp = app_client.get("/metrics", headers={"X-API-Key": world.keys["admin"]})
    assert resp.status_code == 200
    got: dict[tuple[str, str, str], dict[str, int]] = {}
    currencies: dict[str, str] = {}
    for family in text_string_to_metric_families(resp.text):
        if not family.name.startswith("attribution_ivt_day_"):
            continue
        field = "ivt_" + family.name.removeprefix("attribution_ivt_day_")
        for sample in family.samples:
            k = (sample.labels["dt"], sample.labels["campaign_id"], sample.labels["reason"])
            got.setdefault(k, dict.fromkeys(IVT_MEASURES, 0))[field] = int(sample.value)
            if "currency" in sample.labels:
                currencies[sample.labels["campaign_id"]] = sample.labels["currency"]
    assert got == per_reason  # the decoy (a batch day's hash) is not there
    for cid, currency in currencies.items():
        assert currency == world.traffic.catalog.get(cid).currency  # type: ignore[union-attr]
