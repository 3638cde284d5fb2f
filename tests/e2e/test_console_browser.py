"""The console in a real browser: Debian's Chromium driven by Playwright for Python (its own
browser download cannot work offline, so ``executable_path`` points at ``/usr/bin/chromium``,
installed by ``scripts/system-deps.sh``). The API runs as ``attribution api`` (uvicorn) over a
lake with two batch days reconciled and a speed day.

Every request the page makes is watched: anything addressed to another host than the API is
aborted and fails the test (no CDN), and no request or JSON answer may name another advertiser's
campaign. Screenshots go to ``var/test-artifacts/console/`` (``CONSOLE_ARTIFACTS`` overrides).
"""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.console_world import DAYS, World, build_world
from tests.helpers import running_api

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ROWS = "#overview tbody tr[data-campaign]"
ARTIFACTS = Path(os.environ.get("CONSOLE_ARTIFACTS", "var/test-artifacts/console"))


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, redis_server: Any, spark: Any
) -> Iterator[dict[str, Any]]:
    if CHROMIUM is None:
        pytest.skip(
            "Debian's chromium is not installed (scripts/system-deps.sh, run by `make setup`, installs it)"
        )
    world = build_world(tmp_path_factory.mktemp("console-browser"), redis_server.url, spark)
    with running_api(world.env(dict(os.environ))) as base:
        yield {"base": base, "world": world}


@pytest.fixture(scope="module")
def browser(served: dict[str, Any]) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


class Watch:
    """The page's requests and answers, with anything off the API's host aborted."""

    def __init__(self, page: Any, base: str) -> None:
        self.host = urlsplit(base).netloc
        self.urls: list[str] = []
        self.bodies: list[str] = []
        self.foreign: list[str] = []
        self.errors: list[str] = []
        page.route("**/*", self._route)
        page.on("response", self._response)
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))

    def _route(self, route: Any) -> None:
        url = route.request.url
        if urlsplit(url).netloc != self.host and not url.startswith(("data:", "blob:")):
            self.foreign.append(url)
            route.abort()
            return
        self.urls.append(url)
        route.continue_()

    def _response(self, resp: Any) -> None:
        kind = resp.headers.get("content-type", "")
        if kind.startswith(("application/json", "text/csv", "text/html")):
            with contextlib.suppress(Exception):  # a redirect has no body
                self.bodies.append(resp.text())


def _api(served: dict[str, Any], key: str, path: str, **params: Any) -> Any:
    world: World = served["world"]
    resp = httpx.get(served["base"] + path, params=params, headers={"X-API-Key": world.keys[key]}, timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()


def _shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _sign_in_by_keyboard(page: Any, base: str, key: str) -> None:
    page.goto(base + "/console")
    assert page.url.endswith("/console/sign-in")
    assert page.evaluate("document.activeElement.id") == "api_key"  # autofocus
    page.keyboard.type(key)
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "sign-in"
    page.keyboard.press("Enter")
    page.wait_for_url(base + "/console")


def _unlabelled_controls(page: Any) -> list[str]:
    return page.evaluate(
        """() => [...document.querySelectorAll('input:not([type=hidden]), select, button')]
            .filter(el => el.tagName !== 'BUTTON' ? !(el.labels && el.labels.length) : !el.textContent.trim())
            .map(el => el.outerHTML.slice(0, 80))"""
    )


def test_an_advertiser_reads_switches_downloads_and_signs_out(
    served: dict[str, Any], browser: Any, tmp_path: Path
) -> None:
    world: World = served["world"]
    base = served["base"]
    mine, theirs = world.campaigns_of("adv00"), world.campaigns_of("adv01")
    started = time.perf_counter()
    context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    watch = Watch(page, base)

    _sign_in_by_keyboard(page, base, world.keys["adv00"])
    cookie = next(c for c in context.cookies() if c["name"] == "console_session")
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert cookie["expires"] > time.time()
    assert page.evaluate("document.cookie") == ""  # the script cannot read it

    # The overview over the three days: the billing model's spend equals /v1/roas, campaign by campaign.
    page.goto(f"{base}/console?start={DAYS[0]}&end={DAYS[2]}")
    navigation = page.evaluate("JSON.stringify(performance.getEntriesByType('navigation')[0].toJSON())")
    shown = page.eval_on_selector_all(
        "#overview tbody tr[data-campaign]", "rs => rs.map(r => r.dataset.campaign)"
    )
    assert sorted(shown) == mine
    report = _api(served, "adv00", "/v1/roas", start=DAYS[0], end=DAYS[2])["rows"]
    spend: dict[str, int] = defaultdict(int)
    markov: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for r in report:
        if r["model"] == "billing":
            spend[r["campaign_id"]] += r["spend_minor"]
        if r["model"] == "markov":
            markov[r["campaign_id"]][0] += r["revenue_minor"]
            markov[r["campaign_id"]][1] += r["spend_minor"]
    for cid in mine:
        cell = page.locator(f'tr[data-campaign="{cid}"] [data-field="spend_minor"]')
        assert int(cell.get_attribute("data-value")) == spend[cid]
    assert _unlabelled_controls(page) == []
    # Keyboard order: the skip link first, then the views, then the filters.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Overview"
    # The page refreshes today's figures by itself (its script runs under the strict CSP).
    # (A function, not a string: Playwright evaluates a string with eval, which the page's CSP forbids.)
    page.wait_for_function("() => document.getElementById('refreshed').textContent.includes('as of')")
    _shot(page, "overview-advertiser")

    # Switch the model with the keyboard-reachable picker.
    page.select_option("#model", "markov")
    page.click("#apply")
    page.wait_for_url("**model=markov**")
    assert page.inner_text("#chosen-model") == "markov"
    for cid in mine:
        revenue, model_spend = markov[cid]
        value = page.locator(f'tr[data-campaign="{cid}"] [data-field="roas"]').get_attribute("data-value")
        if model_spend:
            assert float(value) == pytest.approx(revenue / model_spend, rel=1e-12)
        else:
            assert value == ""

    # Download what the table shows; its figures are the API's.
    with page.expect_download() as info:
        page.click("#csv-overview")
    path = tmp_path / "overview.csv"
    info.value.save_as(path)
    with path.open() as f:
        rows = list(csv.DictReader(f))
    assert {r["campaign_id"] for r in rows} == set(mine)
    assert {r["model"] for r in rows} == {"markov"}
    for r in rows:
        assert int(r["spend_minor"]) == spend[r["campaign_id"]]

    # ROAS by day: one line per model, one point per day with a ROAS.
    page.goto(f"{base}/console/roas?start={DAYS[0]}&end={DAYS[2]}&campaign_id={mine[0]}")
    series = page.eval_on_selector_all(
        "#roas-chart g.series[data-series]",
        "gs => gs.map(g => [g.dataset.series, g.querySelectorAll('circle').length])",
    )
    assert [s for s, _ in series] == [
        "billing", "last_touch", "first_touch", "linear", "position_based", "time_decay", "markov", "shapley"
    ]  # fmt: skip
    one = _api(served, "adv00", "/v1/roas", start=DAYS[0], end=DAYS[2], campaign_id=mine[0])["rows"]
    for name, points in series:
        assert points == sum(1 for r in one if r["model"] == name and r["roas"] is not None), name
    assert sum(points for _, points in series) > 0
    assert _unlabelled_controls(page) == []
    _shot(page, "roas-by-day")

    # Budget burn today: spend and cap drawn, a point added by each refresh.
    page.goto(f"{base}/console/budget")
    before = page.locator('#burn-chart [data-series="spend today"] circle').count()
    page.wait_for_function(
        "n => document.querySelectorAll('#burn-chart [data-series=\"spend today\"] circle').length > n",
        arg=before,
    )
    assert page.locator('#burn-chart [data-slot="pacing target"]').count() == 1
    _shot(page, "budget-today")

    page.goto(f"{base}/console/reconciliation?start={DAYS[0]}&end={DAYS[2]}")
    assert page.locator("#reconciliation tbody tr[data-day]").count() == 2
    _shot(page, "reconciliation")

    # Nothing of another advertiser anywhere: not in a page, an answer or a request.
    seen = "\n".join([*watch.urls, *watch.bodies])
    for cid in theirs:
        assert cid not in seen
    assert "adv01" not in seen
    assert watch.foreign == []
    assert [e for e in watch.errors if "Content Security Policy" in e or "Refused" in e] == []

    # Signing out ends the session: the console sends the browser back to the sign-in form.
    page.focus("#sign-out")
    page.keyboard.press("Enter")
    page.wait_for_url("**/console/sign-in")
    page.goto(base + "/console/budget")
    assert page.url.endswith("/console/sign-in")
    context.close()
    print(
        f"\nbrowser test (advertiser) took {time.perf_counter() - started:.1f}s; "
        f"overview navigation timing: {navigation[:300]}"
    )


def test_an_admin_picks_an_advertiser_and_opens_the_docs_offline(
    served: dict[str, Any], browser: Any
) -> None:
    world: World = served["world"]
    base = served["base"]
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    watch = Watch(page, base)
    _sign_in_by_keyboard(page, base, world.keys["admin"])
    page.select_option("#advertiser", "adv01")
    page.click("#apply")
    page.wait_for_url("**advertiser=adv01**")
    shown = page.eval_on_selector_all(
        "#overview tbody tr[data-campaign]", "rs => rs.map(r => r.dataset.campaign)"
    )
    assert sorted(shown) == world.campaigns_of("adv01")
    _shot(page, "overview-admin")

    # The API's docs draw from this API's own assets, authorised by the console session.
    page.goto(base + "/docs")
    page.wait_for_selector(".swagger-ui .info .title", timeout=30_000)
    assert "Attribution engine API" in page.inner_text(".swagger-ui .info .title")
    _shot(page, "docs-swagger")
    page.goto(base + "/redoc")
    page.wait_for_selector("redoc h1, .api-content h1", timeout=30_000)
    _shot(page, "docs-redoc")
    assert watch.foreign == []
    context.close()
