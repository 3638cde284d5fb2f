"""Settlement checkpoints: nights run one by one from checkpoints write exactly what the
from-scratch job writes, before and after a rerun that changes a day in the middle; the
batch layer drops events dated in the future of their landing with the shared rule."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from batch.checkpoints import read_checkpoint
from batch.errors import StaleCheckpoints
from batch.job import run_day, run_range
from shared_logic.contract import ATTRIBUTION, BATCH_LEDGER, METRICS, SETTLEMENT_STATE
from shared_logic.timeutil import utc_day_bounds_ms, utc_hour
from storage import Lake, open_lake, partition
from storage.raw import land_events
from tests import checkpoint_traffic as traffic

pytestmark = [pytest.mark.integration, pytest.mark.slow]
DAYS = 6  # the look-back is 2 days: nights 3 to 5 read only part of the lake
LATE = 3  # the day (index) a late cancel lands for, then rerun


def _rows(lake: Lake, ref: Any, key: tuple[str, ...]) -> list[dict[str, Any]]:
    # Credit sums are floats that Spark adds in no fixed order: 12 significant digits are the same.
    rows = [
        {k: float(f"{v:.12g}") if isinstance(v, float) else v for k, v in r.items()}
        for r in lake.read([ref]).to_pylist()
    ]
    return sorted(rows, key=lambda r: tuple(str(r[k]) for k in key))


def _outputs(lake: Lake, day: date, models: list[str]) -> dict[str, Any]:
    """Everything the job wrote for ``day``, comparable with ``==``."""
    dt = day.isoformat()
    out = {
        "ledger": _rows(lake, partition(BATCH_LEDGER, dt=dt), ("order_id", "kind")),
        "metrics": _rows(lake, partition(METRICS, dt=dt), ("campaign_id", "model")),
        "checkpoint": _rows(
            lake, partition(SETTLEMENT_STATE, dt=dt), ("record", "campaign_id", "budget_day", "order_id")
        ),
    }
    for model in models:
        out[f"facts {model}"] = _rows(
            lake, partition(ATTRIBUTION, model=model, dt=dt), ("order_id", "channel")
        )
    return out


def test_nights_from_checkpoints_equal_the_from_scratch_job_before_and_after_a_rerun(
    tmp_path: Path, spark: Any
) -> None:
    lake = open_lake(f"file://{tmp_path}/lake")
    deliveries = traffic.deliveries(DAYS)
    land_events(lake, deliveries)
    config = traffic.settings()
    catalog = traffic.CATALOG
    days = [traffic.START + timedelta(days=i) for i in range(DAYS)]
    lookback = config.rules.policy().lookback_days(catalog)
    models = ["billing", *config.batch.models]

    scratch = {}
    for d in days:
        result = run_day(spark, lake, catalog, d, config, from_scratch=True)
        assert result.started_from is None
        scratch[d] = _outputs(lake, d, models)

    nightly = {}
    for d in days:
        result = run_day(spark, lake, catalog, d, config)
        assert result.started_from == (None if d == days[0] else (d - timedelta(days=1)).isoformat())
        # A night reads its day and the look-back, however old the lake.
        assert date.fromisoformat(result.read_days[0]) >= d - timedelta(days=lookback)
        nightly[d] = _outputs(lake, d, models)
        assert nightly[d] == scratch[d], d
    assert date.fromisoformat(result.read_days[0]) > days[0], "the last night reads part of the lake only"

    # The data is what the test claims: caps bind, cancels refund, some came before their order.
    entries = [e for d in days for e in nightly[d]["ledger"]]
    assert sum(e["capped"] for e in entries) > 20
    assert {e["kind"] for e in entries} == {"charge", "refund", "cancelled"}
    assert any(r["record"] == "charge" and r["refunded"] for d in days for r in nightly[d]["checkpoint"])

    # A cancel lands late for an order of a campaign whose lifetime cap binds later: the refund
    # frees budget that later nights spend.
    late_day = days[LATE]
    capped_later = {e["campaign_id"] for d in days[LATE + 1 :] for e in nightly[d]["ledger"] if e["capped"]}
    cancelled_ids = {p["order_id"] for p, _ in deliveries if p["event_type"] == "order_cancel"}
    _, day_end = utc_day_bounds_ms(late_day)
    late_ledger = nightly[late_day]["ledger"]

    def capped_after(e: dict[str, Any]) -> bool:  # the freed budget would be spent the same night
        return any(
            x["capped"] and x["campaign_id"] == e["campaign_id"] and x["order_time_ms"] > e["order_time_ms"]
            for x in late_ledger
        )

    order = next(
        e
        for e in late_ledger
        if e["kind"] == "charge"
        and e["charge_minor"] > 0
        and e["campaign_id"] in capped_later
        and e["order_id"] not in cancelled_ids
        and e["order_time_ms"] < day_end - 3_600_000
        and not capped_after(e)
    )
    at = order["order_time_ms"] + 60_000
    cancel = {
        "event_id": "x-late",
        "event_type": "order_cancel",
        "event_time": at,
        "user_id": order["user_id"],
        "order_id": order["order_id"],
    }
    # Landing replaces a partition whole: land the cancel's hour again with it.
    hour = utc_hour(at)
    land_events(
        lake,
        [
            *(
                (p, t)
                for p, t in deliveries
                if p["event_type"] == "order_cancel" and utc_hour(p["event_time"]) == hour
            ),
            (cancel, at + 5 * 3_600_000),
        ],
    )

    with pytest.raises(StaleCheckpoints, match=f"checkpoints of {days[LATE + 1]}..{days[-1]} stale"):
        run_range(spark, lake, catalog, late_day, late_day, config, follow=False)
    rerun = run_range(spark, lake, catalog, late_day, late_day, config)
    recomputed = [date.fromisoformat(r.day) for r in rerun]
    assert recomputed[0] == late_day
    assert len(recomputed) > 1, "the refund changed the checkpoint: later nights follow"
    assert recomputed == days[LATE : LATE + len(recomputed)]
    after = {d: _outputs(lake, d, models) for d in days}
    for d in days[:LATE]:
        assert after[d] == nightly[d], d
    assert any(after[d]["ledger"] != nightly[d]["ledger"] for d in days[LATE + 1 :])
    for d in days[LATE:]:
        run_day(spark, lake, catalog, d, config, from_scratch=True)
        assert after[d] == _outputs(lake, d, models), d

    # A rerun that changes nothing follows nothing (the nights after it stay as they are).
    again = run_range(spark, lake, catalog, days[1], days[1], config)
    assert [r.day for r in again] == [days[1].isoformat()]
    assert not again[0].state_changed
    checkpoint = read_checkpoint(lake, days[2])
    assert checkpoint is not None
    assert checkpoint.parent_digest == again[0].checkpoint.digest  # type: ignore[union-attr]


def test_the_spark_forms_of_the_rules_answer_as_the_shared_functions(spark: Any) -> None:
    from batch import rules
    from shared_logic.policy import in_future
    from shared_logic.settlement import cancel_counts

    t0 = utc_day_bounds_ms(traffic.START)[0]
    max_future = 300_000
    landed = [t0 - 1, t0, t0 + 123_456, t0 + 86_399_999]
    pairs = [
        (i, at + d, at)
        for i, (at, d) in enumerate(
            (a, d) for a in landed for d in (-5, 0, max_future, max_future + 1, 10**9)
        )
    ]
    df = spark.createDataFrame(pairs, "i long, event_time long, ingested_at_ms long")
    got = {r["i"]: r["f"] for r in df.select("i", rules.in_future(max_future).alias("f")).collect()}
    assert got == {i: in_future(e, at, max_future) for i, e, at in pairs}

    day = 86_400_000
    orders = [t0, t0 + 1, t0 + day - 1, t0 + 5 * 3_600_000]
    offsets = (
        -3 * day - 1,
        -3 * day,
        -2 * day - 1,
        -2 * day,
        -1,
        0,
        1,
        2 * day,
        3 * day - 1,
        3 * day,
        4 * day,
    )
    rows = [(i, o, (o - o % day) + k) for i, (o, k) in enumerate((o, k) for o in orders for k in offsets)]
    df = spark.createDataFrame(rows, "i long, order_time_ms long, cancel_time_ms long")
    counted = rules.cancel_counts("order_time_ms", "cancel_time_ms", 2, 2).alias("c")
    got = {r["i"]: r["c"] for r in df.select("i", counted).collect()}
    assert got == {i: cancel_counts(o, c, 2, 2) for i, o, c in rows}
    assert set(got.values()) == {True, False}


def test_a_night_drops_events_dated_in_the_future_of_their_landing(tmp_path: Path, spark: Any) -> None:
    from shared_logic import Catalog
    from shared_logic.contract import RAW, RAW_ROW
    from storage.arrow import table_of
    from tests.factories import HOUR, MIN, T0, campaign

    catalog = Catalog([campaign("ad1"), campaign("ad2")])
    lake = open_lake(f"file://{tmp_path}/lake")
    base = {"user_id": "u1", "event_type": "click"}
    click = {**base, "event_id": "c1", "campaign_id": "ad1", "event_time": T0}
    order = {
        "event_id": "o1",
        "event_type": "order",
        "user_id": "u1",
        "order_id": "o1",
        "merchant_id": "m1",
        "amount_minor": 5_000,
        "currency": "USD",
        "event_time": T0 + HOUR + MIN,
    }
    land_events(lake, [(click, T0), (order, T0 + HOUR + MIN)])
    # A later click on ad2 that would win the order, dated an hour after it landed (a producer's
    # clock ahead): written straight to the lake, as a sink that does not check would.
    future = {
        **dict.fromkeys(RAW_ROW.names),
        **base,
        "event_id": "c2",
        "campaign_id": "ad2",
        "event_time": T0 + HOUR,
        "ingested_at_ms": T0,
    }
    dt, hour = utc_hour(T0 + HOUR)
    lake.put_file(
        partition(RAW, event_type="click", dt=dt, hour=hour), "future.parquet", table_of(RAW_ROW, [future])
    )
    config = traffic.settings()

    run_day(spark, lake, catalog, date.fromisoformat(dt), config)
    ledger = lake.read([partition(BATCH_LEDGER, dt=dt)]).to_pylist()
    assert [(e["order_id"], e["campaign_id"], e["touch_event_id"]) for e in ledger] == [("o1", "ad1", "c1")]
    clicks = {m["campaign_id"]: m["clicks"] for m in lake.read([partition(METRICS, dt=dt)]).to_pylist()}
    assert clicks.get("ad2", 0) == 0
    assert clicks["ad1"] == 1
    # Within the bound it counts (the same event landed an hour later wins the order).
    lake.put_file(
        partition(RAW, event_type="click", dt=dt, hour=hour),
        "future.parquet",
        table_of(RAW_ROW, [{**future, "ingested_at_ms": T0 + HOUR}]),
    )
    run_day(spark, lake, catalog, date.fromisoformat(dt), config)
    ledger = lake.read([partition(BATCH_LEDGER, dt=dt)]).to_pylist()
    assert [(e["order_id"], e["campaign_id"], e["touch_event_id"]) for e in ledger] == [("o1", "ad2", "c2")]
