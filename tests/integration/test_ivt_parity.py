"""Both layers give the same invalid-traffic verdicts and the same decisions on the fraud scenes
(``devtools.fraud``: a flooding publisher, injected clicks, bots, data-centre traffic) mixed into
ordinary traffic, with every rule enforced.

The traffic is landed and replayed through the speed layer; the nightly job runs over the lake.
Then, for every day:

- the reconciliation finds 0 differences (every order: winner, charge, amount);
- the speed layer's verdicts (its day hashes in Redis) equal the nightly job's ``ivt/`` rows,
  field for field, and every scene's reason is among them;
- every touch a verdict names is one the scenes labelled fraudulent (the truth beside the
  traffic): no ordinary touch was judged invalid;
- the billing row of every campaign is the same from the speed view (Redis), the lake view and
  the nightly job's metrics: a touch the list rules refuse is counted by none of them; the
  invalid-traffic columns (``ivt_touches``, ``ivt_orders_changed``, ``ivt_orders_unattributed``,
  ``ivt_avoided_minor``) too, the lake view's from the nightly job's verdicts and from Redis's.

Mutant tried: the nightly job deciding without the per-order rules (``judge_order`` given a
policy whose injection, flooding and engagement rules are off) fails the reconciliation, the
verdicts, the billing rows and the report. Not run as mutants (a run takes minutes): the speed
layer checking the list rules after storing the touch (it stays a candidate: the reconciliation
differs); ``lake_view`` counting touches the list rules refuse (the billing rows differ).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis as redis_sync

from batch.job import run_day
from batch.reconcile import reconcile_day
from devtools.fraud import DATACENTER_RANGES
from devtools.synthetic import SyntheticConfig, Traffic, generate
from realtime.keys import Keys
from realtime.views import lake_view, speed_ivt, speed_view
from shared_logic.contract import BILLING_MODEL, IVT, IVT_MEASURES, METRICS, IvtRow, IvtSummary
from shared_logic.ivt import Reason
from storage import Lake, partition
from storage.ivt_lists import load_givt_lists
from tests.helpers import land_and_replay, product_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONFIG = SyntheticConfig(users=300, days=3, seed=29, cancel_rate=0.1, duplicate_rate=0.02, fraud_rate=0.04)
MEASURES = ("impressions", "clicks", "promo_views", "orders", "revenue_minor", "spend_minor", *IVT_MEASURES)
ENFORCE = {
    "rules_ivt_click_injection": "enforce",
    "rules_ivt_click_flooding": "enforce",
    "rules_ivt_hyper_engagement": "enforce",
}


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory, redis_server: Any, spark: Any) -> dict[str, Any]:
    redis_sync.Redis.from_url(redis_server.url).flushall()
    folder = tmp_path_factory.mktemp("ivt")
    ranges = folder / "datacenter.txt"
    ranges.write_text("# the scenes' data-centre ranges\n" + "\n".join(DATACENTER_RANGES) + "\n")
    traffic = generate(CONFIG)
    lake, settings, _ = land_and_replay(
        folder,
        traffic,
        redis_server.url,
        keys_user_buckets=32,
        rules_ivt_datacenter_ranges=str(ranges),
        **ENFORCE,
    )
    days = [(CONFIG.start + timedelta(days=i)).isoformat() for i in range(CONFIG.days)]
    results = {}
    for i, d in enumerate(days):
        day = CONFIG.start + timedelta(days=i)
        results[d] = (
            run_day(spark, lake, traffic.catalog, day, settings),
            reconcile_day(spark, lake, traffic.catalog, day, settings),
        )
    return {"lake": lake, "settings": settings, "traffic": traffic, "days": days, "results": results}


def _speed_verdicts(url: str, settings: Any, day: str) -> set[tuple[Any, ...]]:
    raw = redis_sync.Redis.from_url(url).hgetall(Keys.of(settings.keys).ivt(day))
    return {_row(json.loads(v)) for v in raw.values()}


def _row(record: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(asdict(IvtRow(**{k: record[k] for k in IvtRow.__dataclass_fields__})).values())


def test_the_reconciliation_finds_no_difference_on_fraud_traffic(loop: dict[str, Any]) -> None:
    for day, (job, rec) in loop["results"].items():
        assert job.orders > 10, day
        assert rec.differing == 0, (day, rec.summary())
        assert rec.batch_spend_minor, day
        assert rec.realtime_spend_minor == rec.batch_spend_minor, day


def test_both_layers_give_the_same_verdicts_on_fraudulent_touches_only(
    loop: dict[str, Any], redis_server: Any
) -> None:
    lake: Lake = loop["lake"]
    truth = loop["traffic"].fraud
    reasons = set()
    for day in loop["days"]:
        batch = {_row(r) for r in lake.read([partition(IVT, dt=day)]).to_pylist()}
        speed = _speed_verdicts(redis_server.url, loop["settings"], day)
        assert speed == batch, day
        for row in batch:
            verdict = IvtRow(*row)
            assert verdict.event_id in truth, verdict  # an ordinary touch judged invalid
            reasons.add(verdict.reason)
    assert reasons >= {r.value for r in Reason if r is not Reason.HYPER_ENGAGEMENT}


def test_every_billing_row_is_the_same_from_redis_the_lake_and_the_nightly_job(
    loop: dict[str, Any], redis_server: Any
) -> None:
    from redis.asyncio import Redis

    lake: Lake = loop["lake"]
    traffic: Traffic = loop["traffic"]
    settings = loop["settings"]
    cids = [c.campaign_id for c in traffic.catalog]

    async def speed() -> tuple[list[dict[str, Any]], list[IvtSummary]]:
        client = Redis.from_url(redis_server.url)
        try:
            keys = Keys.of(settings.keys)
            view = await speed_view(client, keys, traffic.catalog, loop["days"], cids)
            return view, await speed_ivt(client, keys, loop["days"])
        finally:
            await client.aclose()

    def key(rows: list[dict[str, Any]]) -> dict[tuple[str, str], tuple[float, ...]]:
        return {(r["dt"], r["campaign_id"]): tuple(float(r[m]) for m in MEASURES) for r in rows}

    speed_rows, redis_verdicts = asyncio.run(speed())
    from_redis = key(speed_rows)
    givt = load_givt_lists(settings.rules)
    policy = settings.rules.ivt_policy()
    from_lake = key(lake_view(lake, traffic.catalog, loop["days"], cids, policy, givt))
    # A closed day the nightly job has not judged yet: the lake view takes Redis's verdicts.
    by_day: dict[str, list[IvtSummary]] = {d: [] for d in loop["days"]}
    for s in redis_verdicts:
        by_day[s.dt].append(s)
    from_lake_unjudged = key(lake_view(lake, traffic.catalog, loop["days"], cids, policy, givt, by_day))
    nightly_rows = [r for day in loop["days"] for r in lake.read([partition(METRICS, dt=day)]).to_pylist()]
    nightly = key([r for r in nightly_rows if r["model"] == BILLING_MODEL])
    assert from_redis
    assert from_redis == from_lake
    assert from_lake == from_lake_unjudged
    assert from_lake == nightly
    # The fraud scenes moved every invalid-traffic column somewhere, on some day.
    for i, name in enumerate(IVT_MEASURES, start=MEASURES.index(IVT_MEASURES[0])):
        assert any(v[i] for v in nightly.values()), name
    # Every model's row of a campaign and day carries the same invalid-traffic figures as spend.
    for r in nightly_rows:
        assert tuple(float(r[m]) for m in IVT_MEASURES) == nightly[(r["dt"], r["campaign_id"])][-4:], r
    # ... and they are the verdicts summed per campaign over every reason (as /v1/ivt shows them).
    summed: dict[tuple[str, str], list[int]] = {}
    for s in redis_verdicts:
        slot = summed.setdefault((s.dt, s.campaign_id), [0, 0, 0, 0])
        for j, n in enumerate((s.touches, s.orders_changed, s.orders_unattributed, s.avoided_minor)):
            slot[j] += n
    assert {k: tuple(float(n) for n in v) for k, v in summed.items()} == {
        k: v[-4:] for k, v in nightly.items() if any(v[-4:])
    }


def test_the_report_is_the_same_from_redis_and_from_the_cli_over_the_lake(
    loop: dict[str, Any], redis_server: Any
) -> None:
    """``attribution ivt report`` over the nightly job's ``ivt/`` prints, per day, campaign and
    reason, what the speed layer's verdicts in Redis sum to (``speed_ivt``)."""
    from redis.asyncio import Redis

    settings = loop["settings"]

    async def speed() -> list[Any]:
        client = Redis.from_url(redis_server.url)
        try:
            return await speed_ivt(client, Keys.of(settings.keys), loop["days"])
        finally:
            await client.aclose()

    summaries = asyncio.run(speed())
    assert any(s.orders_changed + s.orders_unattributed for s in summaries)
    assert any(s.touches_refused for s in summaries)
    env = product_env()
    out = subprocess.run(
        [
            str(Path(sys.executable).with_name("attribution")),
            "ivt",
            "report",
            "--start",
            loop["days"][0],
            "--end",
            loop["days"][-1],
            "--lake-url",
            settings.lake.url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**env, "COLUMNS": "200"},
        check=True,
    ).stdout
    printed = set()
    for line in out.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) == 9 and cells[0][:2] == "20":
            printed.add(tuple(cells[:8]))
    expected = {
        (
            s.dt,
            s.campaign_id,
            s.reason,
            str(s.touches),
            str(s.touches_refused),
            str(s.orders_changed),
            str(s.orders_unattributed),
            str(s.orders_flagged),
        )
        for s in summaries
    }
    assert printed == expected


def test_the_scenes_ranges_file_is_what_the_layers_read(loop: dict[str, Any]) -> None:
    path = Path(loop["settings"].rules.ivt_datacenter_ranges)
    assert load_givt_lists(loop["settings"].rules).datacenter_ranges == DATACENTER_RANGES
    assert path.exists()


def test_the_delay_report_counts_the_click_won_orders_the_speed_layer_charged(loop: dict[str, Any]) -> None:
    """``ivt_shape/`` (the nightly job's whole-day report) holds, per campaign and day, the orders
    won by a click per click-to-order delay bucket: the same orders and delays as the speed layer's
    ledger (its charges and stopped charges, written without the nightly job), bucketed by an
    oracle of the README's bounds (10 s, 1 h, 2 h, 24 h), and the flag the rule gives them."""
    from shared_logic.contract import IVT_SHAPE, REALTIME_LEDGER
    from shared_logic.ivt import SHAPE_BUCKETS, ShapeRules, shape_flag
    from shared_logic.rules import TouchKind
    from shared_logic.timeutil import utc_day

    lake: Lake = loop["lake"]
    bounds = (10_000, 3_600_000, 7_200_000, 86_400_000)
    seen: dict[str, tuple[str, str, int]] = {}
    for p in lake.partitions(REALTIME_LEDGER.path):
        for r in lake.read([partition(REALTIME_LEDGER, **p)]).to_pylist():
            if r["kind"] in ("charge", "stopped") and r["touch_kind"] == int(TouchKind.CLICK):
                delay = r["order_time_ms"] - r["touch_time_ms"]
                seen[r["order_id"]] = (utc_day(r["order_time_ms"]), r["campaign_id"], delay)
    expected: dict[tuple[str, str], list[int]] = {}
    for day, cid, delay in seen.values():
        slot = expected.setdefault((day, cid), [0] * 5)
        slot[sum(delay >= b for b in bounds)] += 1
    got: dict[tuple[str, str], list[int]] = {}
    for day in loop["days"]:
        ref = partition(IVT_SHAPE, dt=day)
        assert lake.is_complete(ref), day
        for r in lake.read([ref]).to_pylist():
            counts = [r[b] for b in SHAPE_BUCKETS]
            assert r["orders"] == sum(counts)
            flag = shape_flag(counts, ShapeRules())
            assert r["flag"] == (flag.value if flag else None)
            got[(day, r["campaign_id"])] = counts
    assert got
    assert got == {k: v for k, v in expected.items() if k[0] in loop["days"]}
