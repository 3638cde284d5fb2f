"""The reconciliation on hand-built ledgers and raw events: every cause, the amounts, the policy's window.

Each order of the day is one case: its realtime and batch ledger rows are written as the layers
write them (``realtime_ledger/dt=D``, ``batch_ledger/dt=D``), the raw events that can explain it are
landed, and the reconciliation must give it its cause. Every test names the mutant of
``batch/reconcile.py`` it kills.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from batch.reconcile import Reconciliation, raw_window, reconcile_day
from shared_logic import Catalog
from shared_logic.contract import BATCH_LEDGER, LEDGER_ROW, REALTIME_LEDGER, REALTIME_LEDGER_ROW
from shared_logic.policy import DEFAULT_CANCEL_HORIZON_DAYS
from shared_logic.settings import Settings
from shared_logic.timeutil import MS_PER_DAY, utc_day_bounds_ms
from storage import Lake, open_lake, partition
from storage.arrow import table_of
from storage.raw import land_events
from tests.factories import HOUR, campaign

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DAY = date(2026, 11, 20)
DT = DAY.isoformat()
START, END = utc_day_bounds_ms(DAY)
#: Every campaign's click and view window: the look-back is 11 days at the default lateness
#: (one minute), 12 at two days' lateness; the nightly job's old fixed window was 8.
WINDOW_MS = 10 * MS_PER_DAY
LOOKBACK_DAYS = 11
HORIZON_DAYS = DEFAULT_CANCEL_HORIZON_DAYS
#: How late a late event arrives: more than every allowed lateness used here.
LATE_MS = 3 * MS_PER_DAY
WINDOWS = {"click_ms": WINDOW_MS, "view_ms": WINDOW_MS}
CATALOG = Catalog(
    [
        campaign("ad1", windows=WINDOWS),
        campaign("ad2", windows=WINDOWS, pricing={"model": "fixed", "fee_minor": 300}),
        campaign("capd", windows=WINDOWS, budget={"daily_minor": 300}),
        campaign("capbig", windows=WINDOWS, budget={"daily_minor": 10_000}),
        campaign("capflag", windows=WINDOWS, budget={"lifetime_minor": 1_000}),
    ]
)


def _entry(
    order_id: str,
    campaign_id: str = "ad1",
    *,
    kind: str = "charge",
    charge: int = 100,
    amount: int = 5_000,
    currency: str = "USD",
    capped: bool = False,
    user: str = "u1",
    touch: str = "t1",
) -> dict[str, Any]:
    """One ledger row of an order of DAY (a UTC campaign: its budget day is DAY)."""
    return {
        "kind": kind,
        "order_id": order_id,
        "campaign_id": campaign_id,
        "advertiser_id": "adv1",
        "lever": "ad",
        "user_id": user,
        "order_time_ms": START + HOUR,
        "due_ms": START + HOUR + 60_000,
        "amount_minor": amount,
        "currency": currency,
        "price_minor": max(charge, 0),
        "charge_minor": charge,
        "capped": capped,
        "budget_day": DT,
        "touch_event_id": touch,
        "touch_kind": 2,
        "touch_time_ms": START,
    }


def _click(event_id: str, user: str, campaign_id: str, t: int) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "event_type": "click",
        "user_id": user,
        "campaign_id": campaign_id,
        "event_time": t,
    }


def _cancel(order_id: str, t: int) -> dict[str, Any]:
    return {
        "event_id": f"x-{order_id}",
        "event_type": "order_cancel",
        "user_id": "u1",
        "order_id": order_id,
        "event_time": t,
    }


def _order(order_id: str, t: int) -> dict[str, Any]:
    return {
        "event_id": f"e-{order_id}",
        "event_type": "order",
        "user_id": "u1",
        "order_id": order_id,
        "merchant_id": "m1",
        "amount_minor": 5_000,
        "currency": "USD",
        "event_time": t,
    }


#: The first and last instants the policy's window reads, and the instants just outside it.
TOUCH_IN = START - LOOKBACK_DAYS * MS_PER_DAY  # 00:00 of D - 11
TOUCH_OUT = TOUCH_IN - 1  # 23:59:59.999 of D - 12
CANCEL_IN = END + HORIZON_DAYS * MS_PER_DAY - 1  # 23:59:59.999 of D + 7: still counts for its order
CANCEL_OUT = CANCEL_IN + 1  # 00:00 of D + 8: counts for nothing

#: order id -> (realtime rows, batch rows)
CASES: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {
    "o_match": ([_entry("o_match")], [_entry("o_match")]),
    "o_amount": ([_entry("o_amount", amount=5_000)], [_entry("o_amount", amount=7_000)]),
    "o_currency": ([_entry("o_currency", currency="USD")], [_entry("o_currency", currency="EUR")]),
    "o_dup_rt": ([_entry("o_dup_rt"), _entry("o_dup_rt")], [_entry("o_dup_rt")]),
    "o_dup_bt": ([_entry("o_dup_bt")], [_entry("o_dup_bt"), _entry("o_dup_bt")]),
    # capflag: its lifetime cap (spent on earlier days) cut the batch's charge; the day's spend is far below
    "o_cap_flag": (
        [_entry("o_cap_flag", "capflag")],
        [_entry("o_cap_flag", "capflag", charge=40, capped=True)],
    ),
    # capd: the realtime spend reaches its daily cap (300) with no row capped; capbig never does
    "q1": ([_entry("q1", "capd", charge=200)], [_entry("q1", "capd", charge=200)]),
    "q2": ([_entry("q2", "capd", charge=100)], [_entry("q2", "capd", charge=50)]),
    "r1": ([_entry("r1", "capbig", charge=200)], [_entry("r1", "capbig", charge=200)]),
    "r2": ([_entry("r2", "capbig", charge=100)], [_entry("r2", "capbig", charge=50)]),
    "o_charge": (
        [_entry("o_charge"), _entry("o_charge", kind="refund", charge=-100)],
        [_entry("o_charge")],
    ),
    "o_missing_bt": ([], [_entry("o_missing_bt")]),
    "o_missing_rt": ([_entry("o_missing_rt")], []),
    "o_campaign": ([_entry("o_campaign")], [_entry("o_campaign", "ad2", charge=300)]),
    "o_touch_in": (
        [_entry("o_touch_in", user="u_in")],
        [_entry("o_touch_in", "ad2", charge=300, user="u_in", touch="t_in")],
    ),
    "o_touch_out": (
        [_entry("o_touch_out", user="u_out")],
        [_entry("o_touch_out", "ad2", charge=300, user="u_out", touch="t_out")],
    ),
    "o_shared": (
        [_entry("o_shared", user="u_x")],
        [_entry("o_shared", "ad2", charge=300, user="u_x", touch="t_shared")],
    ),
    "o_late_order": ([_entry("o_late_order")], [_entry("o_late_order", charge=60)]),
    "o_cancel_in": (
        [_entry("o_cancel_in")],
        [_entry("o_cancel_in"), _entry("o_cancel_in", kind="refund", charge=-100)],
    ),
    "o_cancel_out": (
        [_entry("o_cancel_out")],
        [_entry("o_cancel_out"), _entry("o_cancel_out", kind="refund", charge=-100)],
    ),
}

#: (payload, arrival): the raw events that can explain a difference. ``t_shared`` of user u_y is
#: landed on its own (a touch is named by user and event id; one landing call keeps one copy of an id).
ON_TIME = [
    (_click("t_shared", "u_x", "ad2", START - HOUR), START - HOUR),
    (_order("o_match", START + HOUR), START + HOUR),
]
LATE = [
    (_click("t_in", "u_in", "ad2", TOUCH_IN), TOUCH_IN + LATE_MS),
    (_click("t_out", "u_out", "ad2", TOUCH_OUT), TOUCH_OUT + LATE_MS),
    (_order("o_late_order", START + HOUR), START + HOUR + LATE_MS),
    (_cancel("o_cancel_in", CANCEL_IN), CANCEL_IN + LATE_MS),
    (_cancel("o_cancel_out", CANCEL_OUT), CANCEL_OUT + LATE_MS),
]
OTHER_USER = [(_click("t_shared", "u_y", "ad2", START - HOUR), START - HOUR + LATE_MS)]


@dataclass
class Run:
    lake: Lake
    result: Reconciliation
    rows: dict[str, dict[str, Any]]
    row_count: int
    manifest: dict[str, Any]


def _reconcile(spark: Any, lake: Lake, config: Settings | None) -> Run:
    result = reconcile_day(spark, lake, CATALOG, DAY, config)
    table = lake.read([partition("reconciliation", dt=DT)]).to_pylist()
    manifest = lake.manifest(partition("reconciliation", dt=DT))
    assert manifest is not None
    return Run(lake, result, {r["order_id"]: r for r in table}, len(table), manifest)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    lake = open_lake(f"file://{Path(tmp_path_factory.mktemp('reconcile')) / 'lake'}")
    rt = [
        {**row, "stream_id": f"{i}-0"} for i, row in enumerate(r for rows, _ in CASES.values() for r in rows)
    ]
    bt = [r for _, rows in CASES.values() for r in rows]
    lake.put_file(partition(REALTIME_LEDGER, dt=DT), "part-0.parquet", table_of(REALTIME_LEDGER_ROW, rt))
    lake.put_file(partition(BATCH_LEDGER, dt=DT), "part-0.parquet", table_of(LEDGER_ROW, bt))
    land_events(lake, ON_TIME + LATE)
    land_events(lake, OTHER_USER, append_as="other-user")
    return lake


@pytest.fixture(scope="module")
def run(built: Lake, spark: Any) -> Run:
    return _reconcile(spark, built, None)


def _status(run: Run, order_id: str) -> str:
    return str(run.rows[order_id]["status"])


def test_every_order_of_either_ledger_is_one_row(run: Run) -> None:
    """Kills: joining the touch flags on the event id alone (``t_shared`` of two users repeats the row),
    or an inner join of the ledgers (orders of one side only vanish)."""
    assert run.row_count == len(CASES) == run.result.orders
    assert set(run.rows) == set(CASES)


def test_an_order_billed_on_another_amount_or_currency_is_an_amount_difference(run: Run) -> None:
    """Kills: amounts (or currencies) not compared, the old rule (both rows were ``match``)."""
    assert _status(run, "o_match") == "match"
    assert _status(run, "o_amount") == "amount"
    assert (run.rows["o_amount"]["rt_amount"], run.rows["o_amount"]["bt_amount"]) == (5_000, 7_000)
    assert _status(run, "o_currency") == "amount"
    assert (run.rows["o_currency"]["rt_currency"], run.rows["o_currency"]["bt_currency"]) == ("USD", "EUR")


def test_an_order_decided_twice_is_a_duplicate_of_the_side_that_did(run: Run) -> None:
    """Kills: duplicates looked for in the realtime ledger only, the old rule (the batch's twice-decided
    order was labelled by its charge), and a side named wrong."""
    assert (_status(run, "o_dup_rt"), run.rows["o_dup_rt"]["duplicate_in"]) == ("duplicate", "realtime")
    assert (_status(run, "o_dup_bt"), run.rows["o_dup_bt"]["duplicate_in"]) == ("duplicate", "batch")
    assert run.rows["o_match"]["duplicate_in"] is None
    assert run.result.duplicates == {"realtime": 1, "batch": 1}


def test_a_different_charge_is_a_cap_only_when_a_cap_was_involved(run: Run) -> None:
    """Kills: every same-campaign difference called a cap, the old rule (``o_charge`` and ``r2`` would be
    one); a cap seen only in the day's spend (``o_cap_flag``: a lifetime cap, only its row says so); a
    cap seen only in the ``capped`` flag (``q2``: the realtime spend reached capd's daily cap,
    no row capped); a cap assumed whenever the campaign has one (``r2``: capbig's cap is never reached)."""
    assert _status(run, "o_cap_flag") == "cap"
    assert (_status(run, "q1"), _status(run, "q2")) == ("match", "cap")
    assert (_status(run, "r1"), _status(run, "r2")) == ("match", "charge")
    assert _status(run, "o_charge") == "charge"
    assert (run.rows["o_charge"]["rt_charge"], run.rows["o_charge"]["bt_charge"]) == (0, 100)


def test_one_sided_orders_are_missing_and_other_winners_a_campaign_difference(run: Run) -> None:
    """Kills: an order decided by both layers for different campaigns called ``missing``, the old rule;
    one-sided orders called anything else."""
    assert _status(run, "o_missing_bt") == "missing"
    assert _status(run, "o_missing_rt") == "missing"
    assert _status(run, "o_campaign") == "campaign"


def test_a_late_touch_is_late_for_its_user_only(run: Run) -> None:
    """Kills: the touch flags joined on the event id alone: ``t_shared`` arrived late for u_y, on time for
    u_x, whose order it won in batch, so nothing late explains ``o_shared``."""
    assert _status(run, "o_shared") == "campaign"
    assert run.rows["o_shared"]["touch_late"] == 0


def test_the_raw_window_is_the_policy_lookback_and_cancel_horizon(run: Run) -> None:
    """Kills: a fixed 8-day window, the old rule (``t_in``, 11 days back, was not read: ``o_touch_in``
    would be ``campaign``; the cancel on D + 8 was read: ``o_cancel_out`` would be ``late order``); a
    look-back one day short (``t_in`` missed) or one day long (``t_out`` read); cancels read over the
    touches' window only (``o_cancel_in`` missed) or a day past the horizon (``o_cancel_out`` read)."""
    assert Settings().rules.policy().lookback_days(CATALOG) == LOOKBACK_DAYS
    assert _status(run, "o_touch_in") == "late touch"
    assert _status(run, "o_touch_out") == "campaign"
    assert _status(run, "o_late_order") == "late order"
    assert _status(run, "o_cancel_in") == "late order"
    assert _status(run, "o_cancel_out") == "charge"
    first = DAY - timedelta(days=LOOKBACK_DAYS)
    assert run.manifest["read"] == {
        "events": [first.isoformat(), DT],
        "cancels": [first.isoformat(), (DAY + timedelta(days=HORIZON_DAYS)).isoformat()],
    }


def test_the_window_follows_the_lateness_and_the_horizon_of_the_settings(built: Lake, spark: Any) -> None:
    """Kills: a look-back from the windows alone, without the allowed lateness (two days' lateness makes
    it 12 days: ``t_out`` is read), and a horizon not taken from the settings (8 days: the cancel on
    D + 8 counts, so it explains ``o_cancel_out``)."""
    config = Settings().replace(rules_allowed_lateness_ms=2 * MS_PER_DAY, rules_cancel_horizon_days=8)
    window = raw_window(CATALOG, DAY, config)
    assert window == {
        "events": (DAY - timedelta(days=12), DAY),
        "cancels": (DAY - timedelta(days=12), DAY + timedelta(days=8)),
    }
    wider = _reconcile(spark, built, config)
    assert _status(wider, "o_touch_out") == "late touch"
    assert _status(wider, "o_cancel_out") == "late order"
    assert _status(wider, "o_touch_in") == "late touch"
    assert _status(wider, "o_campaign") == "campaign"


def test_the_summary_counts_every_cause_and_each_layers_spend(run: Run) -> None:
    """Kills: a summary that drops a cause, counts a match as a difference, or credits a layer's charge
    to the other layer's campaign (``o_campaign`` and the late touches move spend from ad1 to ad2)."""
    counts: dict[str, int] = defaultdict(int)
    for row in run.rows.values():
        counts[row["status"]] += 1
    causes = {k: v for k, v in counts.items() if k != "match"}
    assert run.result.causes == causes
    assert set(causes) == {
        "amount",
        "duplicate",
        "cap",
        "charge",
        "missing",
        "campaign",
        "late touch",
        "late order",
    }
    assert run.result.matched == counts["match"] == 3
    assert run.result.differing == len(CASES) - 3
    spend: dict[str, int] = defaultdict(int)
    for rt_rows, bt_rows in CASES.values():
        for r in rt_rows:
            spend[r["campaign_id"]] += r["charge_minor"]
        for r in bt_rows:
            spend[r["campaign_id"]] -= r["charge_minor"]
    assert run.result.spend_diff_minor == {k: v for k, v in spend.items() if v}
    for side, rows_of in (("realtime", 0), ("batch", 1)):
        per_currency: dict[str, int] = defaultdict(int)
        for case in CASES.values():
            for r in case[rows_of]:
                per_currency[r["currency"]] += r["charge_minor"]
        expected = {c: v for c, v in per_currency.items() if v}
        assert getattr(run.result, f"{side}_spend_minor") == expected, side  # per currency, never summed
    summary = run.result.summary()
    assert {k: run.manifest[k] for k in summary} == summary
    assert run.manifest["discrepancy_pct"] == round(100.0 * (len(CASES) - 3) / len(CASES), 4)
