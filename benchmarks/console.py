"""The console at volume: 90 days x 200 campaigns x 8 models of metrics on DuckDB over the lake.

Measures (issue 23, item 5), for an admin over every campaign and for one advertiser (20
campaigns), model ``markov``:

- the overview's data: ``/console/csv/overview.csv`` over HTTP (the same figures the page
  shows, from the same functions), median of 5, against the 300 ms target;
- the overview page in Debian's Chromium (Playwright): the Navigation Timing entry's
  ``responseEnd`` (the page and its data arrived) and ``loadEventEnd`` (drawn, its script and
  style loaded: usable), median of 3, against the 1.5 s target.

Over every campaign the range is 18,000 day-campaigns, past ``API_ROAS_MAX_COST`` (5,000): the
API runs here with ``ATTRIBUTION_API_ROAS_MAX_COST=20000`` (costing an aggregate by what it reads
is still open).
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

import httpx
import yaml

from benchmarks._harness import Row, console, print_table, quick
from benchmarks.serving import UNTHROTTLED, _metrics_lake
from devtools.servers import LocalRedis, free_port
from devtools.synthetic import SyntheticConfig, make_catalog
from reporting.auth import add_key

START = date(2026, 8, 1)  # where benchmarks.serving._metrics_lake starts


def _signed_in(base: str, key: str) -> httpx.Client:
    client = httpx.Client(base_url=base, timeout=120)
    form = client.get("/console/sign-in").text
    csrf = re.search(r'name="csrf" value="([^"]+)"', form)
    assert csrf is not None
    resp = client.post("/console/sign-in", data={"api_key": key, "csrf": csrf.group(1)})
    assert resp.status_code == 303, resp.text[:300]
    return client


def _data_s(client: httpx.Client, params: dict[str, str], n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        resp = client.get("/console/csv/overview.csv", params=params)
        times.append(time.perf_counter() - t0)
        assert resp.status_code == 200, resp.text[:300]
    return statistics.median(times)


def _page_s(base: str, key: str, query: str, n: int) -> tuple[float, float] | None:
    chromium = shutil.which("chromium")
    if chromium is None:
        console.print("console bench: no chromium installed, page timings skipped")
        return None
    from playwright.sync_api import sync_playwright

    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=args)
        page = browser.new_page()
        page.goto(base + "/console/sign-in")
        page.fill("#api_key", key)
        page.click("#sign-in")
        page.wait_for_url(base + "/console")
        arrived, usable = [], []
        for _ in range(n):
            page.goto(f"{base}/console?{query}", wait_until="load")
            timing = page.evaluate("performance.getEntriesByType('navigation')[0].toJSON()")
            arrived.append(timing["responseEnd"] / 1000)
            usable.append(timing["loadEventEnd"] / 1000)
        browser.close()
    return statistics.median(arrived), statistics.median(usable)


def run() -> list[Row]:
    days = 20 if quick() else 90
    n = 2 if quick() else 5
    catalog = make_catalog(SyntheticConfig(ad_campaigns=184, promo_campaigns=16, advertisers=10))
    folder = tempfile.mkdtemp(prefix="attribution-bench-console-")
    rows: list[Row] = []
    with LocalRedis() as server:
        lake = _metrics_lake(folder + "/lake", catalog, days)
        cat_path = Path(folder, "catalog.yaml")
        cat_path.write_text(yaml.safe_dump({"campaigns": catalog.to_records()}))
        keys_path = Path(folder, "keys.yaml")
        admin = add_key(keys_path, "bench", "admin")
        advertiser = next(iter(catalog)).advertiser_id
        adv_key = add_key(keys_path, "bench adv", "advertiser", advertiser)
        port = free_port()
        env = {
            **os.environ,
            "ATTRIBUTION_LAKE_URL": lake.url,
            "ATTRIBUTION_CATALOG_URL": str(cat_path),
            "ATTRIBUTION_API_KEYS_PATH": str(keys_path),
            "ATTRIBUTION_REDIS_URL": server.url,
            "ATTRIBUTION_API_ROAS_MAX_COST": "20000",
            "ATTRIBUTION_API_RATE_ANONYMOUS_PER_S": "1000",
            "ATTRIBUTION_API_RATE_ANONYMOUS_BURST": "1000",
            **UNTHROTTLED,
        }
        api = subprocess.Popen(
            [str(Path(sys.executable).with_name("attribution")), "api", "--port", str(port)], env=env
        )
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(300):
                try:
                    if httpx.get(f"{base}/health", headers={"X-API-Key": admin}).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            end = START + timedelta(days=days - 1)
            params = {"start": START.isoformat(), "end": end.isoformat(), "model": "markov"}
            query = "&".join(f"{k}={v}" for k, v in params.items())
            for who, key, n_campaigns in (("admin", admin, len(catalog)), ("advertiser", adv_key, None)):
                client = _signed_in(base, key)
                client.get("/console/csv/overview.csv", params=params)  # warm: the store's first scan
                n_campaigns = n_campaigns or len(catalog.advertiser_campaigns(advertiser))
                label = f"{who}, {n_campaigns} campaigns x {days} days"
                rows.append(Row(f"overview data, {label}", _data_s(client, params, n), 0.300))
                page = _page_s(base, key, query, max(2, n - 2))
                if page is not None:
                    rows.append(Row(f"page arrived, {label}", page[0], float("nan"), note="responseEnd"))
                    rows.append(Row(f"page usable, {label}", page[1], 1.5, note="loadEventEnd"))
                client.close()
        finally:
            api.terminate()
            api.wait(10)
    print_table("console: overview at volume (DuckDB over the lake)", rows, baseline="target")
    return rows
