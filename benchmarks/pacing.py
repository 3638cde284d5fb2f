"""Pacing: a closed loop of a simulated ad server and the real speed layer, three ways of serving.

A simulated ad server steps through two days minute by minute (day 1 warms up: its late orders
land on day 2, the controller learns); requests follow a day-parted curve. Before serving it asks
the engine: once a minute it reads every campaign's answer (``serving.AnswerReader``, one round
trip: the cached mode of the budget part) and, per request and candidate campaign, serves by

- ``no pacing``: serve while the answer says servable (capping only);
- ``ratio``: the existing ``pacing`` ratio (share of the cap spent / share of the day elapsed,
  ``realtime.budget.BudgetReader``) as a throttle, ``p = min(1, 1 / ratio)``;
- ``controller``: the answer's serve probability (``shared_logic.pacing``, stepped by the
  speed layer).

Each campaign is a candidate in its own share of the requests, sized so that its daily cap pays
for ``cap_orders()`` orders (200; 40 with ``BENCH_QUICK``) whatever its tightness: the cap is
10% to 150% of what serving every request it is a candidate in would charge. What it served
(impressions, clicks at the generator's 5% CTR, orders at its 8% click
conversion, 70% of them after an exponential delay of mean 40 min and 30% uniformly within two
days) goes through the real speed layer (``SpeedLayer``: Redis, Lua, the production code) on a
private redis-server. Reported for day 2 per mode: utilisation (% of the daily cap charged),
the local time each campaign spent out, pacing error (RMSE of cumulative spend against the
target curve every 5 min, % of the cap, median and p95 over campaigns), free conversions
(orders the cap cut, % of charged orders), overspend, and for scale the pacing error the
timing of the orders alone gives an open-loop plan (a campaign of ``n`` charged orders whose
expected spend is on the curve still counts ``binomial(n, W(t))`` orders by ``t``: RMSE
``sqrt(mean W(1 − W) / n)``); then a text
chart of cumulative spend against the target for three campaigns per mode, and the direct read
latency of one answer for 50 candidates against the existing budget read of the same 50.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import os
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from rich.table import Table

from benchmarks._harness import Row, console, print_table, quick
from devtools.servers import LocalRedis
from realtime.budget import BudgetReader
from realtime.client import connect
from realtime.deadletters import MemoryDeadLetters
from realtime.engine import SpeedLayer
from realtime.keys import Keys
from serving import AnswerReader
from shared_logic import Catalog, budget_day, day_bounds_ms
from shared_logic.pacing import HOUR_MS, PacingConfig, PacingInput, TrafficShape, target_share
from shared_logic.settings import RedisSettings, Settings

MIN_MS = 60_000
DAY_MS = 24 * HOUR_MS
DAY0 = 1_796_601_600_000  # 2026-12-07T00:00:00Z
CTR, CVR, FEE = 0.05, 0.08, 500
MEAN_DELAY = 40 * MIN_MS
LATE_SHARE = 0.3  # of orders, uniformly within two days (the generator's delays); the rest exponential
# Requests per minute by hour of the day (night, morning, afternoon, evening peak).
SHAPE = [0.25] * 6 + [0.9] * 3 + [1.2] * 6 + [1.1] * 3 + [1.8] * 4 + [0.7] * 2
MODES = ("no pacing", "ratio", "controller")


@dataclass
class CampaignSpec:
    cid: str
    cap_share: float  # the daily cap as a share of what serving every request would charge
    bps: int | None = None


SPECS = [
    CampaignSpec("loose", 1.5),
    CampaignSpec("mid", 0.6),
    CampaignSpec("mid-bps", 0.5, bps=1_000),
    CampaignSpec("tight", 0.3),
    CampaignSpec("tight-bps", 0.25, bps=1_000),
    CampaignSpec("very-tight", 0.1),
]


def cap_orders() -> int:
    """Orders a day each campaign's daily cap pays for (its cap is that many mean charges).

    Each campaign is a candidate in its own share of the requests, sized so that its cap pays for
    this many orders whatever its tightness (``cap_share``): a tight campaign is one whose
    audience is large against its budget, not one with fewer orders. Pacing is measured on
    spend, which moves one order at a time: a campaign of ``n`` orders a day cannot track a curve
    closer than the order timing allows (about ``sqrt(mean W(1 − W) / n)``, printed beside the
    error), so ``n`` is sized like a real CPO campaign's day, not a handful."""
    return 40 if quick() else 200


def requests_per_min(spec: CampaignSpec) -> float:
    """Requests a minute, at a shape weight of 1, in which ``spec`` is a candidate."""
    return cap_orders() / spec.cap_share / (sum(SHAPE) * 60 * CTR * CVR)


@dataclass
class Result:
    utilisation: dict[str, float] = field(default_factory=dict)
    spent_out: dict[str, float | None] = field(default_factory=dict)
    rmse: dict[str, float] = field(default_factory=dict)
    free: dict[str, tuple[int, int]] = field(default_factory=dict)
    overspend: int = 0
    curves: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # (spend share, target)


def _catalog() -> Catalog:
    records = []
    for i, s in enumerate(SPECS):
        price = FEE if s.bps is None else 5_000 * s.bps // 10_000
        pricing = {"model": "fixed", "fee_minor": FEE} if s.bps is None else {"model": "bps", "bps": s.bps}
        records.append(
            {
                "campaign_id": s.cid,
                "advertiser_id": "adv",
                "lever": "ad",
                "merchant_ids": [f"m{i}"],
                "currency": "USD",
                "pricing": pricing,
                "budget": {"daily_minor": cap_orders() * price},
            }
        )
    return Catalog.from_records(records)


def _serve_p(mode: str, answer: Any, ratio: float | None, elapsed: float) -> float:
    if not answer.servable:
        return 0.0
    if mode == "no pacing":
        return 1.0
    if mode == "ratio":
        if ratio is None or elapsed <= 0 or ratio <= 1:
            return 1.0
        return min(1.0, 1.0 / ratio)
    return float(answer.serve_probability)


async def _simulate(mode: str, url: str, seed: int = 11) -> Result:
    rng = random.Random(seed)
    catalog = _catalog()
    rates = {s.cid: requests_per_min(s) for s in SPECS}
    # The controller is told the delay mixture the simulation draws from (learning it is open).
    settings = Settings().replace(
        redis_url=url,
        keys_budget_shards=2,
        pacing_mean_delay_ms=MEAN_DELAY,
        pacing_long_delay_share=LATE_SHARE,
        pacing_long_delay_ms=2 * DAY_MS,
    )
    redis = connect(RedisSettings(url=url))
    await redis.flushdb()
    now = {"ms": DAY0}
    engine = SpeedLayer(redis, catalog, settings, MemoryDeadLetters(), clock=lambda: now["ms"] + 1_000)
    await engine.start()
    keys = Keys.of(settings.keys)
    answers = AnswerReader(redis, catalog, keys, settings.pacing)
    await answers.load()
    budgets = BudgetReader(redis, catalog, keys)
    cids = [s.cid for s in SPECS]
    merchants = {s.cid: f"m{i}" for i, s in enumerate(SPECS)}
    orders: list[tuple[int, int, dict[str, Any]]] = []  # (time, serial, event) due later, a heap
    serial = 0
    result = Result()
    day2 = DAY0 + DAY_MS
    shape = TrafficShape(tuple(SHAPE))
    config = PacingConfig()
    sq: dict[str, list[float]] = {c: [] for c in cids}
    for minute in range(2 * 24 * 60):
        t0 = DAY0 + minute * MIN_MS
        now["ms"] = t0
        got = {a.campaign_id: a for a in await answers.answer("sim", cids, t0)}
        states = {s.campaign_id: s for s in await budgets.states(cids, t0)} if mode == "ratio" else {}
        if t0 >= day2 and minute % 5 == 0:
            start, end = day_bounds_ms(budget_day(t0, "UTC"), "UTC")
            for c in catalog:
                cap = c.budget.daily_minor or 1
                spent = cap - (got[c.campaign_id].remaining_minor or 0)
                inp = PacingInput(t0, "", start, end, cap, None, spent, spent, shape=shape)
                target = target_share(inp, config)
                sq[c.campaign_id].append((spent / cap - target) ** 2)
                result.curves.setdefault(c.campaign_id, []).append((spent / cap, target))
        if t0 >= day2:
            for cid in cids:
                if got[cid].reason is not None and result.spent_out.get(cid) is None:
                    result.spent_out[cid] = (t0 - day2) / HOUR_MS
        events: list[dict[str, Any]] = []
        for cid in cids:
            st = states.get(cid)
            p = _serve_p(mode, got[cid], st.pacing if st else None, st.day_elapsed if st else 0.0)
            requests = int(rng.random() + rates[cid] * SHAPE[(minute // 60) % 24])
            for _ in range(requests):
                if rng.random() >= p:
                    continue
                t = t0 + rng.randrange(MIN_MS)
                serial += 1
                user = f"u{rng.randrange(2_000_000)}"
                base = {"user_id": user, "campaign_id": cid}
                events.append({**base, "event_id": f"i{serial}", "event_type": "impression", "event_time": t})
                if rng.random() < CTR:
                    ct = t + rng.randrange(1_000, 30_000)
                    events.append({**base, "event_id": f"c{serial}", "event_type": "click", "event_time": ct})
                    if rng.random() < CVR:
                        late = rng.random() < LATE_SHARE
                        delay = rng.uniform(MIN_MS, 2 * DAY_MS) if late else rng.expovariate(1 / MEAN_DELAY)
                        ot = ct + int(delay)
                        order = {
                            "event_id": f"o{serial}",
                            "event_type": "order",
                            "event_time": ot,
                            "user_id": user,
                            "order_id": f"o{serial}",
                            "merchant_id": merchants[cid],
                            "amount_minor": rng.randint(2_000, 8_000),
                            "currency": "USD",
                        }
                        heapq.heappush(orders, (ot, serial, order))
        while orders and orders[0][0] < t0 + MIN_MS:
            events.append(heapq.heappop(orders)[2])
        events.sort(key=lambda e: e["event_time"])
        now["ms"] = t0 + MIN_MS
        await engine.process(events)
    # The orders of day 2 still waiting for their allowed lateness are decided.
    now["ms"] = DAY0 + 2 * DAY_MS + 5 * MIN_MS
    await engine.tick()
    final = {s.campaign_id: s for s in await budgets.states(cids, day2 + DAY_MS - 1)}
    for c in catalog:
        cap = c.budget.daily_minor or 1
        spent = final[c.campaign_id].spend_day_minor
        result.utilisation[c.campaign_id] = spent / cap
        result.overspend += max(spent - cap, 0)
        result.rmse[c.campaign_id] = math.sqrt(statistics.fmean(sq[c.campaign_id])) * 100
        st = await redis.hmget(
            keys.stats(c.campaign_id, budget_day(day2, "UTC").isoformat()), ["orders", "capped_orders"]
        )
        result.free[c.campaign_id] = (int(st[1] or 0), int(st[0] or 0))
        result.spent_out.setdefault(c.campaign_id, None)
    await redis.aclose()
    return result


def _chart(curves: list[tuple[float, float]], width: int = 48, height: int = 8) -> list[str]:
    """Cumulative spend ('*') and target ('.') through the day, in share of the cap."""
    step = max(len(curves) // width, 1)
    cols = curves[::step][:width]
    rows = []
    for level in range(height, 0, -1):
        lo, hi = (level - 1) / height, level / height
        line = ""
        for spend, target in cols:
            s_in = lo < spend <= hi or (level == 1 and spend <= lo)
            t_in = lo < target <= hi or (level == 1 and target <= lo)
            line += "*" if s_in else "." if t_in else " "
        rows.append(f"{hi * 100:4.0f}% |{line}")
    rows.append("      +" + "-" * len(cols) + " 24 h")
    return rows


def _latency_catalog() -> Catalog:
    records = [
        {
            "campaign_id": f"c{i}",
            "advertiser_id": "a",
            "lever": "ad",
            "merchant_ids": [f"m{i}"],
            "currency": "USD",
            "pricing": {"model": "fixed", "fee_minor": 100},
            "budget": {"daily_minor": 10_000},
            **({"frequency_cap": {"impressions": 3, "window_ms": HOUR_MS}} if i % 2 else {}),
        }
        for i in range(50)
    ]
    return Catalog.from_records(records)


async def _latency(url: str, n: int) -> tuple[float, float, float, float]:
    """p99 and p50 (ms) of one answer for 50 candidates, and of the existing budget read of the
    same 50."""
    catalog = _latency_catalog()
    settings = Settings().replace(redis_url=url)
    redis = connect(RedisSettings(url=url))
    keys = Keys.of(settings.keys)
    answers = AnswerReader(redis, catalog, keys, settings.pacing)
    await answers.load()
    budgets = BudgetReader(redis, catalog, keys)
    ids = [c.campaign_id for c in catalog]
    ours, base = [], []
    for k in range(100):  # untimed: the first requests make connections and fill memos
        await answers.answer(f"u{k % 100}", ids, DAY0 + k)
        await budgets.states(ids, DAY0 + k)
    for k in range(n):
        t = DAY0 + k
        s = time.perf_counter()
        await answers.answer(f"u{k % 100}", ids, t)
        ours.append(time.perf_counter() - s)
        s = time.perf_counter()
        await budgets.states(ids, t)
        base.append(time.perf_counter() - s)
    await redis.aclose()
    a, b = statistics.quantiles(ours, n=100), statistics.quantiles(base, n=100)
    return a[98] * 1000, b[98] * 1000, a[49] * 1000, b[49] * 1000


PACED_LOAD = """
import asyncio, math, sys, time, httpx
target, key, rate, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
WORKERS = 16
async def worker(client, start, gap, done):
    k = 0
    while True:
        due = start + k * gap
        now = time.monotonic()
        if due - start >= seconds:
            return
        if due > now:
            await asyncio.sleep(due - now)
        try:
            await client.get(target)
            done.append(1)
        except httpx.HTTPError:
            pass
        # Behind schedule (the server is slower than the rate): skip the slots missed, never queue.
        k = max(k + 1, math.ceil((time.monotonic() - start) / gap))
async def main():
    done = []
    limits = httpx.Limits(max_connections=WORKERS)
    async with httpx.AsyncClient(headers={"X-API-Key": key}, timeout=2, limits=limits) as client:
        start = time.monotonic()
        gap = WORKERS / rate
        await asyncio.gather(*(worker(client, start + i / rate, gap, done) for i in range(WORKERS)))
    print(len(done) / (time.monotonic() - start))
asyncio.run(main())
"""


def _http_latency(url: str, n: int, rate: float, seconds: float) -> tuple[float, float, float]:
    """p99 and p50 (ms) of ``/v1/answer`` for 50 candidates from this process, while a second
    process sends the same request at ``rate`` per second; and the rate it reached."""
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    import httpx
    import yaml

    from devtools.servers import free_port
    from reporting.auth import add_key

    folder = Path(tempfile.mkdtemp(prefix="attribution-bench-pacing-"))
    catalog = _latency_catalog()
    (folder / "catalog.yaml").write_text(yaml.safe_dump({"campaigns": catalog.to_records()}))
    key = add_key(folder / "keys.yaml", "ads", "ad_server")
    load_key = add_key(folder / "keys.yaml", "ads-load", "ad_server")
    port = free_port()
    rates = {
        f"ATTRIBUTION_API_RATE_{role}_{knob}": "1000000"
        for role in ("ADMIN", "ADVERTISER", "AD_SERVER", "ANONYMOUS")
        for knob in ("PER_S", "BURST")
    }
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ATTRIBUTION_")},
        "ATTRIBUTION_LAKE_URL": f"file://{folder}/lake",
        "ATTRIBUTION_CATALOG_URL": str(folder / "catalog.yaml"),
        "ATTRIBUTION_API_KEYS_PATH": str(folder / "keys.yaml"),
        "ATTRIBUTION_REDIS_URL": url,
        **rates,
    }
    exe = str(Path(sys.executable).with_name("attribution"))
    workers = os.environ.get("BENCH_API_WORKERS", "1")
    api = subprocess.Popen(
        [exe, "api", "--port", str(port), "--workers", workers], env=env, stdout=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    ids = "&".join(f"campaign_id=c{i}" for i in range(50))
    target = f"{base}/v1/answer?user_id=u1&{ids}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{base}/health", headers={"X-API-Key": key}).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        load = subprocess.Popen(
            [sys.executable, "-c", PACED_LOAD, target, load_key, str(rate), str(seconds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(0.5)
        times = []
        with httpx.Client(headers={"X-API-Key": key}) as c:
            for i in range(n):
                t0 = time.perf_counter()
                resp = c.get(f"{base}/v1/answer?user_id=u{i % 100}&{ids}")
                times.append(time.perf_counter() - t0)
                assert resp.status_code == 200, resp.text
        out, _ = load.communicate(timeout=seconds + 60)
        reached = float(out.strip() or 0)
    finally:
        api.terminate()
        api.wait(10)
    q = statistics.quantiles(times, n=100)
    return q[98] * 1000, q[49] * 1000, reached


def run() -> None:
    part = os.environ.get("BENCH_PACING", "all")
    if part not in ("all", "loop", "latency"):
        raise SystemExit(f"BENCH_PACING = {part!r}: must be all, loop or latency")
    if part in ("all", "loop"):
        _loop()
    if part in ("all", "latency"):
        with LocalRedis() as server:
            ours_p99, base_p99, ours_p50, base_p50 = asyncio.run(
                _latency(server.url, 300 if quick() else 3_000)
            )
            http_p99, http_p50, reached = _http_latency(
                server.url, 300 if quick() else 1_000, 1_000.0, 8.0 if quick() else 25.0
            )
        rows = [
            Row(
                "answer p99, 50 candidates, direct",
                ours_p99,
                base_p99,
                unit="ms",
                note=f"baseline: the existing BudgetReader read of the same 50 (no frequency, no pacing); "
                f"p50 {ours_p50:.2f} ms vs {base_p50:.2f} ms",
            ),
            Row(
                "answer p99, 50 candidates, HTTP",
                http_p99,
                5.0,
                unit="ms",
                note=f"baseline: the 5 ms target; p50 {http_p50:.2f} ms; a second process sent "
                f"{reached:.0f} requests/s of the same",
            ),
        ]
        print_table("The ad server's answer: read latency", rows, "answer", "baseline")
        console.print(
            f"[dim]load average while it ran: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores[/dim]"
        )


def _loop() -> None:
    with LocalRedis() as server:
        results: dict[str, Result] = {}
        for mode in MODES:
            started = time.perf_counter()
            results[mode] = asyncio.run(_simulate(mode, server.url))
            console.print(f"[dim]{mode}: two simulated days in {time.perf_counter() - started:.0f} s[/dim]")

    console.print()
    # One row per campaign and mode (not three modes side by side): it stays a table at 80 columns.
    table = Table(title="Pacing, day 2 of a closed loop through the real speed layer", title_justify="left")
    for name, justify in (
        ("campaign", "left"),
        ("mode", "left"),
        ("utilisation", "right"),
        ("spent out", "right"),
        ("pacing error", "right"),
        ("free / charged", "right"),
    ):
        table.add_column(name, justify=justify)
    for s in SPECS:
        for i, m in enumerate(MODES):
            r = results[m]
            out = r.spent_out[s.cid]
            free, orders = r.free[s.cid]
            table.add_row(
                s.cid if i == 0 else "",
                m,
                f"{r.utilisation[s.cid] * 100:.0f}%",
                "-" if out is None else f"{int(out):02d}:{int(out % 1 * 60):02d}",
                f"{r.rmse[s.cid]:.1f}%",
                f"{free}/{orders}",
                end_section=i == len(MODES) - 1,
            )
    console.print(table)
    rows: list[Row] = []
    for m in MODES:
        r = results[m]
        capped = [s.cid for s in SPECS if s.cap_share < 1]  # a cap above supply cannot pace
        errs = sorted(r.rmse[c] for c in capped)
        p95 = errs[min(len(errs) - 1, math.ceil(0.95 * len(errs)) - 1)]
        free = sum(r.free[c][0] for c in capped)
        charged = sum(r.free[c][1] for c in capped)
        util = statistics.fmean(r.utilisation[c] for c in capped) * 100
        # The error order timing alone gives a campaign of n charged orders whose expected spend
        # is on the curve: its count at t is binomial(n, W(t)), so the RMSE is sqrt(mean W(1-W) / n).
        # A reference for the scale, not a bound: feedback on the spend seen does better.
        floor = statistics.median(
            math.sqrt(statistics.fmean(w * (1 - w) for _, w in r.curves[c]) / max(r.free[c][1], 1)) * 100
            for c in capped
        )
        console.print(
            f"{m:>10}: utilisation (capped campaigns) {util:.1f}%, pacing error median "
            f"{statistics.median(errs):.1f}% p95 {p95:.1f}%, free conversions {free}/{charged} "
            f"({free / max(charged, 1) * 100:.1f}%), overspend {r.overspend}; open-loop order-timing "
            f"error (median) {floor:.1f}%"
        )
    for m in ("no pacing", "ratio"):
        base, ours = results[m], results["controller"]
        rows.append(
            Row(
                f"pacing error median vs {m}",
                statistics.median(ours.rmse[s.cid] for s in SPECS if s.cap_share < 1),
                statistics.median(base.rmse[s.cid] for s in SPECS if s.cap_share < 1),
                unit="%",
            )
        )
        f_ours = sum(ours.free[c][0] for c in ours.free)
        f_base = sum(base.free[c][0] for c in base.free)
        rows.append(Row(f"free conversions vs {m}", f_ours, f_base, unit="orders"))
    print_table("Pacing: the controller against no pacing and the ratio", rows, "controller", "other")
    console.print(f"[dim]load average while it ran: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores[/dim]")
    for m in MODES:
        console.print(f"\n[bold]{m}[/bold]: cumulative spend (*) vs target (.) on day 2")
        for cid in ("mid", "tight", "very-tight"):
            console.print(f"  {cid}")
            for line in _chart(results[m].curves[cid]):
                console.print("  " + line)
