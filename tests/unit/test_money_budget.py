from datetime import date

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared_logic import (
    Budget,
    Pricing,
    apply_caps,
    budget_day,
    currency_exponent,
    day_bounds_ms,
    price_order,
)
from shared_logic.money import caps_left, format_minor

pytestmark = pytest.mark.unit


def test_currency_exponents_from_iso4217() -> None:
    assert (currency_exponent("USD"), currency_exponent("JPY"), currency_exponent("BHD")) == (2, 0, 3)
    with pytest.raises(ValueError, match="not an ISO 4217"):
        currency_exponent("ABC")


def test_format_minor() -> None:
    assert format_minor(123456, "USD") == "1,234.56 USD"
    assert format_minor(-5, "EUR") == "-0.05 EUR"
    assert format_minor(1500, "JPY") == "1,500 JPY"
    assert format_minor(1, "BHD") == "0.001 BHD"


def test_pricing_rounds_bps_down_and_fixed_is_flat() -> None:
    assert price_order(Pricing(model="bps", bps=250), 99) == 2
    assert price_order(Pricing(model="bps", bps=250), 400) == 10
    assert price_order(Pricing(model="bps", bps=10_000), 777) == 777
    assert price_order(Pricing(model="fixed", fee_minor=150), 0) == 150
    with pytest.raises(ValueError, match="amount_minor"):
        price_order(Pricing(model="fixed", fee_minor=1), -1)


@given(st.integers(1, 10_000), st.integers(0, 10**12))
def test_bps_price_never_exceeds_exact_share(bps: int, amount: int) -> None:
    price = price_order(Pricing(model="bps", bps=bps), amount)
    assert price * 10_000 <= amount * bps < (price + 1) * 10_000


def test_apply_caps_cuts_to_the_tighter_cap() -> None:
    b = Budget(daily_minor=500, lifetime_minor=1_000)
    assert apply_caps(100, b, 0, 0).charge_minor == 100
    r = apply_caps(100, b, 450, 450)
    assert (r.charge_minor, r.capped, r.daily_exhausted, r.lifetime_exhausted) == (50, True, True, False)
    r = apply_caps(100, b, 0, 980)
    assert (r.charge_minor, r.capped, r.lifetime_exhausted) == (20, True, True)
    r = apply_caps(100, b, 500, 500)
    assert (r.charge_minor, r.capped, r.exhausted) == (0, True, True)
    assert apply_caps(10**9, Budget(), 10**12, 10**12).charge_minor == 10**9


budgets = st.builds(
    Budget,
    daily_minor=st.none() | st.integers(1, 5_000),
    lifetime_minor=st.none() | st.integers(5_000, 20_000),
)


@settings(max_examples=300, deadline=None)
@given(budgets, st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2_000)), max_size=60))
def test_no_sequence_of_charges_passes_a_cap(budget: Budget, charges: list[tuple[int, int]]) -> None:
    """Charges over four budget days: daily spend and lifetime spend stay within the caps."""
    per_day = [0, 0, 0, 0]
    lifetime = 0
    for day, price in charges:
        result = apply_caps(price, budget, per_day[day], lifetime)
        assert 0 <= result.charge_minor <= price
        assert result.capped == (result.charge_minor < price)
        per_day[day] += result.charge_minor
        lifetime += result.charge_minor
        if budget.daily_minor is not None:
            assert per_day[day] <= budget.daily_minor
            assert result.daily_exhausted == (per_day[day] >= budget.daily_minor)
        if budget.lifetime_minor is not None:
            assert lifetime <= budget.lifetime_minor


def test_budget_day_uses_campaign_time_zone() -> None:
    t = 1_793_491_200_000 + 3_600_000  # 2026-11-01T01:00Z
    assert budget_day(t, "UTC") == date(2026, 11, 1)
    assert budget_day(t, "America/New_York") == date(2026, 10, 31)
    assert budget_day(t, "Asia/Tokyo") == date(2026, 11, 1)


def test_day_bounds_are_dst_safe() -> None:
    # 2026-11-01 is the fall-back day in New York (25 hours), 2026-03-08 spring-forward (23).
    start, end = day_bounds_ms(date(2026, 11, 1), "America/New_York")
    assert end - start == 25 * 3_600_000
    start, end = day_bounds_ms(date(2026, 3, 8), "America/New_York")
    assert end - start == 23 * 3_600_000
    assert budget_day(start, "America/New_York") == date(2026, 3, 8)
    assert budget_day(end - 1, "America/New_York") == date(2026, 3, 8)
    assert budget_day(end, "America/New_York") == date(2026, 3, 9)


_CAP = st.none() | st.integers(min_value=0, max_value=10**12)
_SPENT = st.integers(min_value=0, max_value=2 * 10**12)


@given(_CAP, _CAP, _SPENT, _SPENT)
@settings(max_examples=300)
def test_caps_left_is_the_least_each_cap_leaves_never_negative(
    daily: int | None, lifetime: int | None, spent_day: int, spent_life: int
) -> None:
    """The budget state, the answer and the controller read this one rule; here against its
    statement: the least of what each present cap leaves, floored at 0, None without a cap."""
    left = [cap - spent for cap, spent in ((daily, spent_day), (lifetime, spent_life)) if cap is not None]
    expected = max(min(left), 0) if left else None
    assert caps_left(daily, lifetime, spent_day, spent_life) == expected
