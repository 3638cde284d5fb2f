"""The nightly job's delay report (``shared_logic.ivt.shape_flag``), held to an oracle written from
the README ("Invalid traffic"): buckets end at 10 s, 1 h, 2 h and 24 h; with at least
``min_orders`` click-won orders, 5% (``spike_share``) or more under 10 s is an injection spike,
else under 25% within an hour and 60% or more in 2-24 h is a flat spread; fewer orders: no flag.
And the measures every metric view puts on a row: ``ivt_measures`` sums a day's summaries per
campaign over every reason."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared_logic.contract import IVT_MEASURES, IvtSummary, ivt_columns, ivt_measures, ivt_shape_rows
from shared_logic.ivt import SHAPE_BUCKETS, Shape, ShapeRules, delay_bucket, shape_flag
from shared_logic.settings import Settings

pytestmark = pytest.mark.unit

S, H = 1_000, 3_600_000


def _oracle_bucket(d: int) -> str:
    if d < 10 * S:
        return "under_10s"
    if d < H:
        return "s10_to_1h"
    if d < 2 * H:
        return "h1_to_2h"
    if d < 24 * H:
        return "h2_to_24h"
    return "over_24h"


def _oracle_flag(delays: list[int], rules: ShapeRules) -> str | None:
    n = len(delays)
    if n < rules.min_orders:
        return None
    if sum(d < 10 * S for d in delays) / n >= rules.spike_share:
        return "injection_spike"
    if sum(d < H for d in delays) / n < rules.flat_hour_share and (
        sum(2 * H <= d < 24 * H for d in delays) / n >= rules.flat_share
    ):
        return "flat_spread"
    return None


delays = st.lists(
    st.one_of(
        st.integers(0, 12 * S),
        st.integers(50 * 60 * S, 3 * H),
        st.integers(2 * H, 30 * H),
        st.sampled_from([10 * S - 1, 10 * S, H - 1, H, 2 * H, 24 * H - 1, 24 * H]),
    ),
    max_size=80,
)


@given(delays, st.integers(1, 40), st.floats(0, 1), st.floats(0, 1), st.floats(0, 1))
def test_the_flag_and_buckets_equal_the_oracle(
    ds: list[int], min_orders: int, spike: float, flat: float, hour: float
) -> None:
    rules = ShapeRules(min_orders, spike, flat, hour)
    counts = [0] * len(SHAPE_BUCKETS)
    for d in ds:
        assert SHAPE_BUCKETS[delay_bucket(d)] == _oracle_bucket(d)
        counts[delay_bucket(d)] += 1
    flag = shape_flag(counts, rules)
    assert (flag.value if flag else None) == _oracle_flag(ds, rules)
    (row,) = ivt_shape_rows({"c1": counts}, rules) if ds else [None]  # type: ignore[list-item]
    if row is not None:
        assert row.orders == len(ds)
        assert [getattr(row, b) for b in SHAPE_BUCKETS] == counts
        assert row.flag == (flag.value if flag else None)


def test_a_spike_wins_over_a_flat_spread_and_few_orders_flag_nothing() -> None:
    rules = ShapeRules(min_orders=20)
    spike_and_flat = [2] + [0] * 2 + [18, 0]  # 10% under 10 s, 90% in 2-24 h
    assert shape_flag(spike_and_flat, rules) is Shape.INJECTION_SPIKE
    assert shape_flag([0, 0, 0, 20, 0], rules) is Shape.FLAT_SPREAD
    assert shape_flag([0, 15, 0, 5, 0], rules) is None  # mostly within the hour: legitimate
    assert shape_flag([19, 0, 0, 0, 0], rules) is None  # 19 orders: below min_orders


def test_bad_thresholds_and_counts_are_named() -> None:
    with pytest.raises(ValueError, match=r"spike_share = 1\.5"):
        ShapeRules(spike_share=1.5)
    with pytest.raises(ValueError, match="min_orders = 0"):
        ShapeRules(min_orders=0)
    with pytest.raises(ValueError, match="counts = \\[1, 2\\]"):
        shape_flag([1, 2], ShapeRules())
    assert Settings().replace(rules_ivt_shape="off").rules.shape_rules() is None
    assert Settings().rules.shape_rules() == ShapeRules()


summaries = st.lists(
    st.builds(
        IvtSummary,
        dt=st.just("2026-11-01"),
        campaign_id=st.sampled_from(["a", "b", "c"]),
        reason=st.sampled_from(["bot_user_agent", "click_injection", "click_flooding"]),
        touches=st.integers(0, 9),
        touches_refused=st.integers(0, 9),
        orders_changed=st.integers(0, 9),
        orders_unattributed=st.integers(0, 9),
        orders_flagged=st.integers(0, 9),
        avoided_minor=st.integers(0, 10_000),
        currency=st.just("EUR"),
    ),
    max_size=12,
)


@given(summaries)
def test_ivt_measures_sum_every_reason_per_campaign(rows: list[IvtSummary]) -> None:
    got = ivt_measures(rows)
    for cid in ("a", "b", "c"):
        mine = [r for r in rows if r.campaign_id == cid]
        assert (cid in got) == bool(mine)
        assert ivt_columns(got, cid) == {
            "ivt_touches": sum(r.touches for r in mine),
            "ivt_orders_changed": sum(r.orders_changed for r in mine),
            "ivt_orders_unattributed": sum(r.orders_unattributed for r in mine),
            "ivt_avoided_minor": sum(r.avoided_minor for r in mine),
        }
    assert set(ivt_columns({}, "z")) == set(IVT_MEASURES)
