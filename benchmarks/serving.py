"""Serving: budget-state reads and one ad request's answer for 50 candidates (direct from Redis,
cached in the ad server's memory with pushed changes, over HTTP), the cache's staleness, ROAS
query latency.

Direct and cached reads are timed one at a time from this process, alone (the issue's condition:
p99 < 1 ms on this machine), then while a second process keeps the same Redis busy (8 clients in
a closed loop). HTTP reads are sent by a second process at 1,000 requests a second, open loop
(each request at its scheduled time, timed from it, so a server that falls behind shows as late
answers), with an ad-server key, against the issue's p99 < 5 ms. ROAS queries ask an
advertiser's 30 days, all models, over 90 days x 100 campaigns x 8 models of metrics, on DuckDB
(over the lake) and PostgreSQL. /health is timed idle, then while three clients each loop over
the costliest ROAS request the API allows and five wrong keys. Ratios are against the issue's
targets, between the two stores, and against /health idle.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import date, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pyarrow as pa
import yaml

from benchmarks._harness import Row, console, print_table, quick
from devtools.servers import LocalRedis, free_port
from devtools.synthetic import SyntheticConfig, make_catalog
from reporting.auth import add_key
from reporting.stores import RoasQuery, open_store
from shared_logic.contract import IVT_MEASURES, METRIC_ROW, METRICS, REPORT_MODELS
from storage import Lake, open_lake, partition

LOAD_SCRIPT = """
import asyncio, sys, time, httpx, redis.asyncio as r
mode, target, key, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
async def http_worker(client, stop):
    while time.monotonic() < stop:
        await client.get(target, headers={"X-API-Key": key})
async def redis_worker(conn, stop):
    while time.monotonic() < stop:
        await conn.mget([key + str(i) for i in range(4)])
async def main():
    stop = time.monotonic() + seconds
    if mode == "http":
        async with httpx.AsyncClient() as client:
            await asyncio.gather(*(http_worker(client, stop) for _ in range(8)))
    else:
        conn = r.Redis.from_url(target)
        await asyncio.gather(*(redis_worker(conn, stop) for _ in range(8)))
asyncio.run(main())
"""


HAMMER_SCRIPT = """
import sys, time, httpx
base, key, start, end, seconds = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5])
stop = time.monotonic() + seconds
with httpx.Client(timeout=60) as c:
    while time.monotonic() < stop:
        c.get(base + "/v1/roas", params={"start": start, "end": end}, headers={"X-API-Key": key})
        for i in range(5):
            c.get(base + "/v1/budget", params={"campaign_id": "x"}, headers={"X-API-Key": f"ak_wrong{i}"})
"""
UNTHROTTLED = {
    f"ATTRIBUTION_API_RATE_{role}_{knob}": "1000000"
    for role in ("ADMIN", "ADVERTISER", "AD_SERVER")
    for knob in ("PER_S", "BURST")
}


#: The request rate the HTTP reads are measured at (the issue's: p99 < 5 ms at 1,000 requests/s).
HTTP_RATE = 1_000


def _open_loop(url: str, key: str, rate: int, seconds: float) -> dict[str, Any]:
    """``rate`` requests a second to ``url`` for ``seconds`` from a second process
    (``benchmarks._load``): each request's latency from its scheduled send time."""
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks._load", url, key, str(rate), str(seconds)],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    if result["error_count"]:
        console.print(f"[yellow]{result['error_count']} requests failed, e.g. {result['errors']}[/yellow]")
    return result


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def _metrics_lake(root: str, catalog: Any, days: int) -> Lake:
    lake = open_lake(f"file://{root}")
    rng = random.Random(1)
    models = REPORT_MODELS
    start = date(2026, 8, 1)
    for d in range(days):
        rows = []
        for c in catalog:
            spend = rng.randint(0, 50_000)
            for m in models:
                revenue = rng.uniform(0, 500_000)
                rows.append(
                    {
                        "campaign_id": c.campaign_id,
                        "advertiser_id": c.advertiser_id,
                        "lever": str(c.lever),
                        "currency": c.currency,
                        "model": m,
                        "impressions": rng.randint(0, 10_000),
                        "clicks": rng.randint(0, 500),
                        "promo_views": 0,
                        "orders": rng.uniform(0, 50),
                        "revenue_minor": revenue,
                        "spend_minor": spend,
                        "capped_orders": 0,
                        "roas": revenue / spend if spend else None,
                        **dict.fromkeys(IVT_MEASURES, 0),
                    }
                )
        table = pa.Table.from_pylist(rows).select(list(METRIC_ROW.names[1:]))
        lake.write_partition(partition(METRICS, dt=(start + timedelta(days=d)).isoformat()), table)
    return lake


async def _direct_reads(url: str, catalog: Any, n: int) -> list[float]:
    from realtime.budget import BudgetReader
    from realtime.client import connect
    from realtime.keys import Keys
    from shared_logic.settings import KeySettings, RedisSettings

    redis = connect(RedisSettings(url=url))  # the client the API and the ad server use
    reader = BudgetReader(redis, catalog, Keys.of(KeySettings()))
    ids = [c.campaign_id for c in catalog]
    out = []
    now = int(time.time() * 1000)
    for i in range(n):
        t0 = time.perf_counter()
        await reader.states([ids[i % len(ids)]], now)
        out.append(time.perf_counter() - t0)
    await redis.aclose()
    return out


N_CANDIDATES = 50
N_FREQ_CAPPED = 10


def _answer_catalog(catalog: Any) -> tuple[Any, Any, list[str]]:
    """The synthetic catalog with a daily cap on every ad campaign and a frequency cap on
    ``N_FREQ_CAPPED`` of the ``N_CANDIDATES`` candidates; the same catalog without frequency caps;
    the candidates."""
    from shared_logic import Campaign, Catalog

    records = catalog.to_records()
    ads = [r for r in records if r.get("lever") == "ad"][:N_CANDIDATES]
    ids = [r["campaign_id"] for r in ads]
    plain, capped = [], []
    for r in records:
        r = {**r, "budget": {**(r.get("budget") or {}), "daily_minor": 1_000_000, "lifetime_minor": None}}
        r.pop("frequency_cap", None)
        plain.append(Campaign.parse(r))
        if r["campaign_id"] in ids[:N_FREQ_CAPPED]:
            r["frequency_cap"] = {"impressions": 5, "window_ms": 3_600_000}
        capped.append(Campaign.parse(r))
    return Catalog(plain), Catalog(capped), ids


def _fill_answer_state(url: str, catalog: Any, ids: list[str], now: int) -> None:
    """Spend, a pacing state and a few impressions of user u1 for every candidate."""
    import redis as sync_redis

    from realtime.keys import Keys
    from realtime.pacing import queue_state_write
    from shared_logic import budget_day
    from shared_logic.pacing import PacingState
    from shared_logic.settings import KeySettings

    keys = Keys.of(KeySettings())
    client = sync_redis.Redis.from_url(url)
    rng = random.Random(5)
    for cid in ids:
        c = catalog.get(cid)
        day = budget_day(now, c.budget.timezone).isoformat()
        client.set(keys.spend_day(cid, day), rng.randint(0, 900_000))
        client.set(keys.spend_lifetime(cid), 5_000_000)
        state = PacingState(
            day, now - 30_000, round(rng.uniform(0.2, 1.0), 3), 0.0, 0.5, liability_minor=12.0
        )
        with client.pipeline(transaction=False) as pipe:  # as a pacing step writes it
            queue_state_write(pipe, keys, cid, state)
            pipe.execute()
        client.zadd(
            keys.frequency(keys.bucket("u1"), "u1", cid), {f"e{k}": now - k * 60_000 for k in range(3)}
        )
    client.close()


async def _answers(url: str, plain: Any, capped: Any, ids: list[str], n: int, changes: int) -> dict[str, Any]:
    """Per-request latency of 50-candidate answers: direct (one round trip), cached with no
    frequency-capped candidate (no round trip), cached with 10 (one round trip for the user's
    part); then the staleness: from a spend change written to Redis to the cached client holding
    it, ``changes`` times, one change at a time."""
    from redis.asyncio import Redis

    from realtime.client import connect
    from realtime.keys import Keys
    from serving import AnswerReader, CachedAnswerReader
    from shared_logic import budget_day
    from shared_logic.settings import KeySettings, RedisSettings

    keys = Keys.of(KeySettings())
    redis = connect(RedisSettings(url=url))  # the client the API and the ad server use
    writer = Redis.from_url(url)
    seen: dict[str, tuple[bytes, asyncio.Event, list[float]]] = {}

    def on_change(cid: str, values: Any) -> None:
        want = seen.get(cid)
        if want is not None and values[0] == want[0] and not want[1].is_set():
            want[2].append(time.perf_counter())
            want[1].set()

    direct = AnswerReader(redis, capped, keys)
    await direct.load()
    cached_plain = CachedAnswerReader(AnswerReader(redis, plain, keys), max_age_ms=500, heartbeat_ms=50)
    cached_capped = CachedAnswerReader(
        AnswerReader(redis, capped, keys), max_age_ms=500, heartbeat_ms=50, on_change=on_change
    )
    await cached_plain.start()
    await cached_capped.start()
    out: dict[str, Any] = {}
    for name, reader in (("direct", direct), ("cached", cached_plain), ("cached_freq", cached_capped)):
        times = []
        for _ in range(100):  # untimed: the first requests make connections and fill memos
            await reader.answer("u1", ids, int(time.time() * 1000))
        for _ in range(n):
            now = int(time.time() * 1000)
            t0 = time.perf_counter()
            await reader.answer("u1", ids, now)
            times.append(time.perf_counter() - t0)
        out[name] = times
    now = int(time.time() * 1000)
    assert await cached_capped.answer("u1", ids, now) == await direct.answer("u1", ids, now)
    staleness = []
    rng = random.Random(9)
    for k in range(changes):
        cid = ids[k % len(ids)]
        value = str(10_000_000 + k).encode()
        day = budget_day(int(time.time() * 1000), capped.get(cid).budget.timezone).isoformat()
        done = asyncio.Event()
        stamps: list[float] = []
        seen[cid] = (value, done, stamps)
        t0 = time.perf_counter()
        await writer.set(keys.spend_day(cid, day), value)
        await asyncio.wait_for(done.wait(), 5)
        staleness.append(stamps[0] - t0)
        del seen[cid]
        await asyncio.sleep(rng.uniform(0.001, 0.01))
    out["staleness"] = staleness
    out["stats"] = cached_capped.stats
    await cached_plain.close()
    await cached_capped.close()
    await redis.aclose()
    await writer.aclose()
    return out


def run() -> list[Row]:
    seconds = 4 if quick() else 15
    n_reads = 500 if quick() else 3_000
    n_changes = 100 if quick() else 1_000
    days = 20 if quick() else 90
    catalog = make_catalog(SyntheticConfig(ad_campaigns=92, promo_campaigns=8, advertisers=10))
    rows: list[Row] = []
    folder = tempfile.mkdtemp(prefix="attribution-bench-serving-")
    with LocalRedis() as server:
        # Budget state: some spend on every campaign.
        import redis as sync_redis

        from realtime.keys import Keys
        from shared_logic import budget_day
        from shared_logic.settings import KeySettings

        keys = Keys.of(KeySettings())
        client = sync_redis.Redis.from_url(server.url)
        now = int(time.time() * 1000)
        for c in catalog:
            client.set(keys.spend_day(c.campaign_id, budget_day(now, c.budget.timezone).isoformat()), 1234)
            client.set(keys.spend_lifetime(c.campaign_id), 5678)
        client.close()
        # Direct reads, alone (the target's condition), then while a second process keeps the
        # same Redis busy (8 clients in a closed loop).
        direct = asyncio.run(_direct_reads(server.url, catalog, n_reads))
        load = subprocess.Popen(
            [sys.executable, "-c", LOAD_SCRIPT, "redis", server.url, "attr:x", str(seconds)]
        )
        time.sleep(0.5)
        direct_busy = asyncio.run(_direct_reads(server.url, catalog, n_reads))
        load.wait()
        # One ad request's answer for 50 candidates: direct and cached, alone, then direct while
        # a second process reads the same Redis.
        plain, capped, candidates = _answer_catalog(catalog)
        _fill_answer_state(server.url, capped, candidates, int(time.time() * 1000))
        answers = asyncio.run(_answers(server.url, plain, capped, candidates, n_reads, n_changes))
        load = subprocess.Popen(
            [sys.executable, "-c", LOAD_SCRIPT, "redis", server.url, "attr:x", str(seconds)]
        )
        time.sleep(0.5)
        answers_busy = asyncio.run(_answers(server.url, plain, capped, candidates, n_reads, 0))
        load.wait()
        # HTTP reads while a second process sends requests to the same API.
        lake = _metrics_lake(folder + "/lake", catalog, days)
        cat_path = Path(folder, "catalog.yaml")
        cat_path.write_text(yaml.safe_dump({"campaigns": capped.to_records()}))
        key = add_key(Path(folder, "keys.yaml"), "bench", "admin")
        hammer_key = add_key(Path(folder, "keys.yaml"), "hammer", "admin")
        ad_key = add_key(Path(folder, "keys.yaml"), "ad-server", "ad_server")
        port = free_port()
        env = {
            **os.environ,
            "ATTRIBUTION_LAKE_URL": lake.url,
            "ATTRIBUTION_CATALOG_URL": str(cat_path),
            "ATTRIBUTION_API_KEYS_PATH": str(Path(folder, "keys.yaml")),
            "ATTRIBUTION_REDIS_URL": server.url,
            # The budget figures measure the API, not its refusals: every bucket holds plenty.
            **UNTHROTTLED,
        }
        # One worker per core (2 here): at 1,000 answers a second one process is past its CPU.
        workers = os.environ.get("BENCH_API_WORKERS", "2")
        api = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("attribution")),
                "api",
                "--port",
                str(port),
                "--workers",
                workers,
            ],
            env=env,
        )
        base = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                if httpx.get(f"{base}/health", headers={"X-API-Key": key}).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        # Over HTTP: an ad-server key's requests at the rate, sent open-loop by a second
        # process (each at its scheduled time, timed from it).
        budget_url = f"{base}/v1/budget?campaign_id={catalog.to_records()[0]['campaign_id']}"
        http = _open_loop(budget_url, ad_key, HTTP_RATE, seconds)
        answer_url = f"{base}/v1/answer?" + urlencode(
            {"user_id": "u1", "campaign_id": candidates}, doseq=True
        )
        with httpx.Client(headers={"X-API-Key": ad_key}) as c:
            resp = c.get(answer_url)
            assert resp.status_code == 200, resp.text
            assert len(resp.json()) == N_CANDIDATES
        http_answer = _open_loop(answer_url, ad_key, HTTP_RATE, seconds)
        # The costliest ROAS request the API allows: every campaign, as many days as the bound lets.
        n_days = max(1, min(days, 5_000 // len(catalog)))
        idle_health, busy_health = _health_under_hammer(base, key, hammer_key, n_days, seconds)
        api.terminate()
        api.wait(10)
    rows.append(
        Row(
            "/health p50 while 3 clients hammer ROAS",
            _pct(busy_health, 0.5) * 1e3,
            _pct(idle_health, 0.5) * 1e3,
            "ms",
            "vs idle; each asks the costliest ROAS allowed, then 5 wrong keys",
        )
    )
    rows.append(
        Row(
            "/health p99 while 3 clients hammer ROAS",
            _pct(busy_health, 0.99) * 1e3,
            _pct(idle_health, 0.99) * 1e3,
            "ms",
            "vs idle",
        )
    )
    busy = "while a second process keeps Redis busy (8 clients, closed loop)"
    rows.append(Row("budget read p50, direct Redis", _pct(direct, 0.5) * 1e3, 1.0, "ms", "vs 1 ms target"))
    rows.append(Row("budget read p99, direct Redis", _pct(direct, 0.99) * 1e3, 1.0, "ms", "vs 1 ms target"))
    rows.append(Row("budget read p99, direct Redis, busy", _pct(direct_busy, 0.99) * 1e3, 1.0, "ms", busy))
    at_rate = f"{HTTP_RATE:,} req/s open loop from a second process to {workers} API workers"
    for name, run_ in (("budget read", http), ("answer", http_answer)):
        rows.append(
            Row(
                f"{name} p50, HTTP",
                _pct(run_["latencies_s"], 0.5) * 1e3,
                5.0,
                "ms",
                f"{at_rate} ({run_['sent'] / run_['seconds']:,.0f} answered/s over the run, "
                f"{run_['error_count']} errors)"
                + (
                    f"; {N_CANDIDATES} candidates, {N_FREQ_CAPPED} with a frequency cap"
                    if name == "answer"
                    else ""
                ),
            )
        )
        rows.append(
            Row(f"{name} p99, HTTP", _pct(run_["latencies_s"], 0.99) * 1e3, 5.0, "ms", "vs 5 ms target")
        )

    f = f"{N_CANDIDATES} candidates"
    for label, times, note in (
        ("direct Redis", answers["direct"], f"one round trip; {N_FREQ_CAPPED} with a frequency cap"),
        ("cached, no frequency cap", answers["cached"], "budget part from memory: no round trip"),
        ("cached", answers["cached_freq"], f"{N_FREQ_CAPPED} with a frequency cap: one round trip for those"),
    ):
        rows.append(Row(f"answer p50, {label}", _pct(times, 0.5) * 1e3, 1.0, "ms", f"{f}; {note}"))
        rows.append(Row(f"answer p99, {label}", _pct(times, 0.99) * 1e3, 1.0, "ms", "vs 1 ms target"))
    rows.append(
        Row("answer p99, direct Redis, busy", _pct(answers_busy["direct"], 0.99) * 1e3, 1.0, "ms", busy)
    )
    stale = answers["staleness"]
    stats = answers["stats"]
    for q, name in ((0.5, "p50"), (0.99, "p99"), (1.0, "max")):
        rows.append(
            Row(
                f"cache staleness {name}: spend SET to cache holding it",
                _pct(stale, q) * 1e3,
                500.0,
                "ms",
                f"vs max_age_ms bound; {len(stale)} changes, {stats.fallbacks} fallbacks"
                if q == 0.5
                else "vs max_age_ms bound",
            )
        )

    # ROAS queries: DuckDB over the lake vs PostgreSQL.
    q = RoasQuery(date(2026, 9, 1), date(2026, 9, 30), ("adv03",), None, None)
    duck = open_store("duckdb://", lake)
    duck_t = _time_queries(duck, q, 200)
    pg_t: list[float] = []
    try:
        import psycopg

        name = f"attribution_bench_{uuid.uuid4().hex[:8]}"
        admin = psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True)
        admin.execute(f'CREATE DATABASE "{name}"')
        pg = open_store(f"postgresql://postgres@127.0.0.1:5432/{name}", lake)
        for d in range(days):
            pg.load_day(lake, (date(2026, 8, 1) + timedelta(days=d)).isoformat())
        assert len(pg.roas(q)) == len(duck.roas(q))
        pg_t = _time_queries(pg, q, 200)
        pg.close()
        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.close()
    except Exception as exc:
        console.print(f"[yellow]PostgreSQL not measured: {exc}[/yellow]")
    duck.close()
    n_rows = days * len(catalog) * 8
    if pg_t:
        rows.append(
            Row(
                "ROAS query p50, DuckDB vs PostgreSQL",
                _pct(duck_t, 0.5) * 1e3,
                _pct(pg_t, 0.5) * 1e3,
                "ms",
                f"{n_rows:,} metric rows, 30 days of one advertiser",
            )
        )
        rows.append(
            Row(
                "ROAS query p99, DuckDB vs PostgreSQL", _pct(duck_t, 0.99) * 1e3, _pct(pg_t, 0.99) * 1e3, "ms"
            )
        )
    print_table(
        "Serving latency (baseline column: the target, or PostgreSQL for ROAS)",
        rows,
        ours="measured",
        baseline="target / PostgreSQL",
    )
    return rows


def _probe_health(base: str, key: str, seconds: float, per_s: float = 15.0) -> list[float]:
    """/health timed at a steady pace (under the admin key's rate: never throttled)."""
    out = []
    with httpx.Client(headers={"X-API-Key": key}) as c:
        t0 = time.monotonic()
        i = 0
        while time.monotonic() - t0 < seconds:
            time.sleep(max(0.0, t0 + i / per_s - time.monotonic()))
            s = time.perf_counter()
            assert c.get(f"{base}/health").status_code == 200
            out.append(time.perf_counter() - s)
            i += 1
    return out


def _health_under_hammer(
    base: str, probe_key: str, hammer_key: str, n_days: int, seconds: float
) -> tuple[list[float], list[float]]:
    """/health latency idle, then while three clients each loop over a ROAS request of every
    campaign over ``n_days`` (the costliest the default bound allows) and five wrong keys."""
    start = date(2026, 8, 1)
    end = start + timedelta(days=n_days - 1)
    idle = _probe_health(base, probe_key, seconds / 2)
    argv = [sys.executable, "-c", HAMMER_SCRIPT, base, hammer_key, start.isoformat(), end.isoformat()]
    hammers = [subprocess.Popen([*argv, str(seconds)]) for _ in range(3)]
    time.sleep(0.5)
    busy = _probe_health(base, probe_key, seconds - 1)
    for h in hammers:
        h.wait()
    return idle, busy


def _time_queries(store: Any, q: RoasQuery, n: int) -> list[float]:
    out = []
    store.roas(q)
    for _ in range(n):
        t0 = time.perf_counter()
        store.roas(q)
        out.append(time.perf_counter() - t0)
    return out


if __name__ == "__main__":
    run()
