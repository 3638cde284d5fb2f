"""The pacing controller (``shared_logic.pacing``): hard limits, bounded steps, monotone in spend,
the target curve, in-flight liability, and a closed loop that spends a cap out late in the day."""

from __future__ import annotations

import math
import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared_logic import Campaign, InvalidCampaign
from shared_logic.pacing import (
    HOUR_MS,
    DeliveryMode,
    PacingConfig,
    PacingInput,
    PacingState,
    TrafficShape,
    aim,
    conversion_rate,
    decode_state,
    delay_cdf,
    due_touches,
    encode_state,
    in_flight_liability,
    step,
    target_share,
)

pytestmark = pytest.mark.unit

DAY_MS = 24 * HOUR_MS
MIN_MS = 60_000
CONFIG = PacingConfig()


def _inp(now_ms: int = 6 * HOUR_MS, spend: int = 0, cap: int | None = 10_000, **kw: object) -> PacingInput:
    base = PacingInput(
        now_ms=now_ms,
        day="2026-12-06",
        day_start_ms=0,
        day_end_ms=DAY_MS,
        daily_cap_minor=cap,
        lifetime_cap_minor=None,
        spend_day_minor=spend,
        spend_lifetime_minor=spend,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def test_a_campaign_without_a_cap_is_served_always() -> None:
    prev = PacingState("2026-12-06", 0, 0.2, 0.0, 0.0)
    assert step(prev, _inp(cap=None, spend=10**9)).probability == 1.0
    assert step(None, _inp(cap=None)).probability == 1.0


def test_a_spent_cap_stops_serving_at_once_whatever_the_step_bound() -> None:
    prev = PacingState("2026-12-06", 0, 0.9, 0.0, 0.0)
    assert step(prev, _inp(spend=10_000)).probability == 0.0
    life = _inp(spend=10, cap=None, lifetime_cap_minor=500, spend_lifetime_minor=500)
    assert step(prev, life).probability == 0.0


def test_the_start_is_cautious_and_a_new_day_starts_again_cautiously() -> None:
    first = step(None, _inp())
    assert first.probability <= CONFIG.start_probability * (1 + CONFIG.max_step) + 1e-12
    late = PacingState("2026-12-05", 0, 0.95, 100.0, 0.5, num=10.0, den=1.0)
    assert step(late, _inp()).probability <= CONFIG.start_probability * (1 + CONFIG.max_step) + 1e-12


def test_asap_aims_at_full_serving_until_the_liability_fills_what_is_left() -> None:
    prev = PacingState("2026-12-06", 6 * HOUR_MS - MIN_MS, 0.5, 0.0, 0.25, num=1e9, den=1.0)
    asap = _inp(mode=DeliveryMode.ASAP, spend=100)
    even = _inp(spend=100)
    assert step(prev, asap).probability == pytest.approx(0.55)
    assert step(prev, even).probability == pytest.approx(0.45)  # the huge estimate says slow down
    full = replace(asap, liability_minor=9_900.0)
    assert step(prev, full).probability == pytest.approx(0.45)


def test_liability_is_counted_as_spent() -> None:
    """Kills the mutant ``remaining = left + inp.liability_minor`` (liability as extra budget)."""
    prev = PacingState("2026-12-06", 6 * HOUR_MS - MIN_MS, 0.5, 2500.0, 0.2, num=20_000.0, den=1.0)
    assert aim(prev, _inp(spend=2500, liability_minor=3000.0)) < aim(prev, _inp(spend=2500)) < 1.0
    without = step(prev, _inp(spend=2500)).probability
    with_liability = step(prev, _inp(spend=2500, liability_minor=3000.0)).probability
    assert with_liability < without


_floats = st.floats(0.0, 1.0)
_steps = st.lists(
    st.tuples(
        st.integers(0, 30 * MIN_MS),  # time since the previous step
        st.integers(0, 2_000),  # new spend
        st.floats(0.0, 5_000.0),  # liability
    ),
    min_size=1,
    max_size=40,
)


def _run(
    seq: list[tuple[int, int, float]], cap: int, mode: DeliveryMode, shape: TrafficShape | None
) -> list[tuple[PacingInput, PacingState]]:
    state: PacingState | None = None
    now, spend, out = 0, 0, []
    for dt, more, liability in seq:
        now = min(now + dt, DAY_MS - 1)
        spend = min(spend + more, cap)
        inp = _inp(now, spend, cap, liability_minor=liability, mode=mode, shape=shape)
        state = step(state, inp)
        out.append((inp, state))
    return out


_shapes = st.one_of(
    st.none(),
    st.lists(st.integers(0, 50), min_size=24, max_size=24).map(lambda c: TrafficShape.from_counts(c)),
)


@settings(max_examples=300, deadline=None)
@given(_steps, st.integers(1, 50_000), st.sampled_from(list(DeliveryMode)), _shapes)
def test_probability_stays_in_0_1_and_moves_by_bounded_steps(
    seq: list[tuple[int, int, float]], cap: int, mode: DeliveryMode, shape: TrafficShape | None
) -> None:
    """Kills the mutant where ``_bounded`` returns ``target`` unclamped (steps of any size)."""
    run = _run(seq, cap, mode, shape)
    prev_p: float | None = None
    for inp, state in run:
        assert 0.0 <= state.probability <= 1.0
        assert math.isfinite(state.probability)
        if inp.left_minor == 0:
            assert state.probability == 0.0
        elif prev_p is None:
            assert state.probability <= CONFIG.start_probability * (1 + CONFIG.max_step) + 1e-12
        else:
            floor = max(prev_p, CONFIG.min_probability)
            assert state.probability <= floor * (1 + CONFIG.max_step) + 1e-12
            assert state.probability >= min(prev_p * (1 - CONFIG.max_step), 1.0) - 1e-12
            assert state.probability >= CONFIG.min_probability - 1e-12
        prev_p = state.probability


_states = st.builds(
    PacingState,
    day=st.sampled_from(["2026-12-05", "2026-12-06"]),
    at_ms=st.integers(0, 6 * HOUR_MS),
    probability=st.floats(0.0, 1.0),
    committed_minor=st.floats(0.0, 20_000.0),
    target=st.floats(0.0, 0.25),
    num=st.floats(0.0, 1e6),
    den=st.floats(0.0, 10.0),
)


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(st.none(), _states),
    st.integers(1, 50_000),
    st.integers(0, 50_000),
    st.integers(0, 5_000),
    st.floats(0.0, 20_000.0),
    st.sampled_from(list(DeliveryMode)),
    _shapes,
)
def test_probability_never_rises_with_spend(
    prev: PacingState | None,
    cap: int,
    spend: int,
    extra: int,
    liability: float,
    mode: DeliveryMode,
    shape: TrafficShape | None,
) -> None:
    """Any previous state, then one step with ``extra`` more spend (day and lifetime): the
    probability it aims at (``aim``), hence the stepped one, is no higher. Kills the mutant
    ``min(num / den / (remaining * rest), 1.0)`` in ``_aim`` (the full-serving estimate used
    upside down, so more spend reads as room to serve)."""
    spend = min(spend, cap)
    last = _inp(6 * HOUR_MS, spend, cap, liability_minor=liability, mode=mode, shape=shape)
    more = replace(
        last,
        spend_day_minor=min(spend + extra, cap),
        spend_lifetime_minor=min(spend + extra, cap),
    )
    assert aim(prev, more) <= aim(prev, last) + 1e-12
    assert step(prev, more).probability <= step(prev, last).probability + 1e-12


@pytest.mark.parametrize("num", [5e-324, 1e-300, 1e-20])
def test_a_vanishing_spend_estimate_serves_fully_and_never_divides_by_zero(num: float) -> None:
    """A learned ``F`` so small that ``F`` times a share underflows to 0 (Hypothesis found num
    5e-324 over den 1.0, a 1-minor cap: ZeroDivisionError in ``_aim``) means serving costs nothing
    yet: aim at 1 while budget is left, 0 once it is spent, and the step stays in [0, 1]."""
    prev = PacingState("2026-12-06", 6 * HOUR_MS, 0.5, 0.0, 0.25, num, 1.0)
    assert aim(prev, _inp(6 * HOUR_MS, spend=0, cap=1)) == 1.0
    assert aim(prev, _inp(6 * HOUR_MS, spend=1, cap=1)) == 0.0
    assert 0.0 <= step(prev, _inp(6 * HOUR_MS, spend=0, cap=1)).probability <= 1.0


def test_the_target_curve_is_flat_without_history_and_reaches_1_at_the_spend_out_point() -> None:
    inp = _inp()
    assert target_share(inp, CONFIG, 0) == 0.0
    assert target_share(inp, CONFIG, 23 * HOUR_MS) == pytest.approx(1.0)
    assert target_share(inp, CONFIG, 23 * HOUR_MS // 2) == pytest.approx(0.5)
    assert target_share(inp, CONFIG, DAY_MS) == 1.0


def test_the_target_curve_follows_the_traffic_shape_and_a_25_hour_day() -> None:
    evening = TrafficShape.from_counts([0] * 18 + [100] * 6, prior=0.0)
    inp = _inp(shape=evening)
    assert target_share(inp, CONFIG, 12 * HOUR_MS) == 0.0
    assert target_share(inp, CONFIG, 20 * HOUR_MS) == pytest.approx(2 / 5)
    assert TrafficShape.from_counts([0] * 24) == TrafficShape.flat()
    long_day = replace(_inp(), day_end_ms=25 * HOUR_MS)
    assert target_share(long_day, CONFIG, 12 * HOUR_MS) == pytest.approx(12 / 24)
    with pytest.raises(ValueError, match="need 24"):
        TrafficShape.from_counts([1] * 23)


def test_liability_decays_with_age_and_ends_with_the_window() -> None:
    window, mean = 7 * DAY_MS, 40 * MIN_MS
    fresh = in_flight_liability([(0, 100)], 0.02, 500, window, mean, 12 * HOUR_MS)
    aged = in_flight_liability([(2 * HOUR_MS, 100)], 0.02, 500, window, mean, 12 * HOUR_MS)
    assert fresh == pytest.approx(100 * 0.02 * 500 * delay_cdf(12 * HOUR_MS, window, mean))
    assert 0 < aged < fresh
    assert in_flight_liability([(window, 100)], 0.02, 500, window, mean, HOUR_MS) == 0.0
    # A short horizon (the budget day's end is near) counts only what can land before it.
    assert in_flight_liability([(0, 100)], 0.02, 500, window, mean, 10 * MIN_MS) < fresh / 3
    assert delay_cdf(window, window, mean) == 1.0


def test_conversion_rate_moves_from_the_prior_to_the_campaigns_own() -> None:
    assert conversion_rate(0, 0, 0.01, 500) == 0.01
    assert conversion_rate(100_000, 5_000, 0.01, 500) == pytest.approx(0.05, rel=0.01)
    with pytest.raises(ValueError, match="touches"):
        conversion_rate(-1, 0, 0.01, 1)


def test_delivery_mode_and_frequency_caps_in_the_catalog() -> None:
    base = {
        "campaign_id": "c1",
        "advertiser_id": "a1",
        "lever": "ad",
        "merchant_ids": ["m1"],
        "currency": "USD",
        "pricing": {"model": "fixed", "fee_minor": 100},
    }
    assert Campaign.parse({**base, "budget": {"daily_minor": 10}}).budget.delivery_mode is DeliveryMode.EVEN
    assert (
        Campaign.parse({**base, "budget": {"lifetime_minor": 10}}).budget.delivery_mode is DeliveryMode.ASAP
    )
    fc = Campaign.parse({**base, "frequency_cap": {"impressions": 3, "window_ms": HOUR_MS}}).frequency_cap
    assert fc is not None
    assert (fc.impressions, fc.window_ms) == (3, HOUR_MS)
    with pytest.raises(InvalidCampaign, match="delivery 'even'") as bad:
        Campaign.parse({**base, "budget": {"lifetime_minor": 10, "delivery": "even"}})
    assert bad.value.field == "c1.budget"
    with pytest.raises(InvalidCampaign) as mode:
        Campaign.parse({**base, "budget": {"daily_minor": 10, "delivery": "fast"}})
    assert (mode.value.field, mode.value.value) == ("c1.budget.delivery", "fast")
    with pytest.raises(InvalidCampaign) as zero:
        Campaign.parse({**base, "frequency_cap": {"impressions": 0, "window_ms": HOUR_MS}})
    assert (zero.value.field, zero.value.value) == ("c1.frequency_cap.impressions", 0)


def _cap(cap_share: float) -> int:
    weights = [0.3] * 6 + [1.0] * 6 + [1.5] * 6 + [2.0] * 4 + [0.8] * 2
    return int(sum(40 * weights[m // 60] / 1.1 for m in range(1440)) * 0.02 * 500 * cap_share)


def _closed_loop(
    cap_share: float, mode: DeliveryMode, seed: int = 7
) -> tuple[float, float | None, int, list[float]]:
    """One day of a campaign served by the controller: requests per minute shaped by hour,
    each served one converts with 2% at an exponential delay (mean 40 min) and is charged 500
    cut to the cap. Returns utilisation, spend-out hour, overspend, committed-vs-target errors."""
    rng = random.Random(seed)
    weights = [0.3] * 6 + [1.0] * 6 + [1.5] * 6 + [2.0] * 4 + [0.8] * 2
    shape = TrafficShape(tuple(weights))
    window, mean, fee, rate = 7 * DAY_MS, 40 * MIN_MS, 500, 0.02
    per_min = [40 * weights[m // 60] / 1.1 for m in range(1440)]
    cap = int(sum(per_min) * rate * fee * cap_share)
    state: PacingState | None = None
    spend, pending, opened, out_at, errors = 0, [], {}, None, []
    for m in range(1440):
        now = m * MIN_MS
        due = [t for t in pending if t <= now]
        pending = [t for t in pending if t > now]
        for _ in due:
            spend += min(fee, cap - spend)
        if spend >= cap and out_at is None:
            out_at = now / HOUR_MS
        groups = [(now - start, n) for start, n in opened.items()]
        liability = in_flight_liability(groups, rate, fee, window, mean, DAY_MS - now)
        inp = _inp(now, spend, cap, liability_minor=liability, mode=mode, shape=shape)
        state = step(state, inp)
        served = sum(rng.random() < state.probability for _ in range(int(per_min[m] + rng.random())))
        bucket = (m // 10) * 10 * MIN_MS  # touches grouped by 10 minutes, as the speed layer keeps them
        opened[bucket] = opened.get(bucket, 0) + served
        pending += [now + rng.expovariate(1 / mean) for _ in range(served) if rng.random() < rate]
        if m % 5 == 0:
            errors.append(spend / cap - state.target)
    return spend / cap, out_at, max(spend - cap, 0), errors


@pytest.mark.parametrize("cap_share", [0.1, 0.4, 0.8])
def test_in_a_closed_loop_even_delivery_spends_the_cap_out_in_the_last_two_hours(cap_share: float) -> None:
    utilisation, out_at, over, errors = _closed_loop(cap_share, DeliveryMode.EVEN)
    assert over == 0
    assert utilisation >= 0.98
    # Spent out late, or short of the cap by less than one charge: the controller commits the
    # expected charge, and the last order may not come (a cap of a few dozen orders).
    assert (out_at is not None and 22 <= out_at <= 24) or (1 - utilisation) * _cap(cap_share) < 500
    rmse = math.sqrt(sum(e * e for e in errors) / len(errors))
    assert rmse < 0.05  # the spend itself follows the target curve within 5% of the cap


def test_in_a_closed_loop_asap_spends_a_tight_cap_out_early() -> None:
    _, out_at, over, _ = _closed_loop(0.1, DeliveryMode.ASAP)
    assert over == 0
    assert out_at is not None
    assert out_at < 12


def test_a_long_delay_share_keeps_old_touches_in_flight() -> None:
    """Orders that come days later (``long_share`` spread over ``long_delay_ms``) keep a day-old
    click liable; without them it is spent out within hours."""
    window, mean, long = 7 * DAY_MS, 40 * MIN_MS, 2 * DAY_MS
    assert delay_cdf(DAY_MS, window, mean, 0.3, long) == pytest.approx(0.7 + 0.3 * 0.5)
    assert delay_cdf(3 * DAY_MS, window, mean, 0.3, long) == pytest.approx(1.0)
    day_old = [(DAY_MS, 100)]
    assert in_flight_liability(day_old, 0.02, 500, window, mean, 12 * HOUR_MS) < 1e-6
    with_tail = in_flight_liability(day_old, 0.02, 500, window, mean, 12 * HOUR_MS, 0.3, long)
    assert with_tail == pytest.approx(100 * 0.02 * 500 * 0.3 * 0.25 / (1 - 0.02 * 0.85))


def test_a_gap_of_k_intervals_moves_p_by_up_to_k_bounded_steps_but_a_new_day_by_one() -> None:
    """Kills the mutants that bound a gap by one step (0.5 x 1.1), that apply ``intervals`` to a
    new day's cautious start, and that accept ``intervals = 0``."""
    prev = PacingState("2026-12-06", 6 * HOUR_MS - 5 * 60_000, 0.5, 0.0, 0.2)
    up = step(prev, _inp(), intervals=5)  # no estimate yet: p rises as far as 5 steps go
    assert up.probability == pytest.approx(0.5 * (1 + CONFIG.max_step) ** 5)
    assert up.probability > step(prev, _inp()).probability
    spent = _inp(spend=9_990)  # almost all spent: p* near 0, p falls by at most 5 steps
    estimated = replace(prev, num=10_000.0, den=0.2, committed_minor=9_000.0)
    assert step(estimated, spent, intervals=5).probability == pytest.approx(0.5 * (1 - CONFIG.max_step) ** 5)
    yesterday = replace(prev, day="2026-12-05")
    new_day = step(yesterday, _inp(), intervals=500)
    assert new_day.probability == pytest.approx(CONFIG.start_probability * (1 + CONFIG.max_step))
    with pytest.raises(ValueError, match="intervals = 0"):
        step(prev, _inp(), intervals=0)


def test_the_rate_counts_only_the_conversions_due_so_touches_too_recent_do_not_read_as_a_low_rate() -> None:
    """A day of touches at a true rate of 0.4%, their orders counted so far: orders over the
    touches' due conversions recovers the rate; orders over plain touches reads it low."""
    window, mean = 7 * DAY_MS, 40 * MIN_MS
    groups = [(age, 100) for age in range(10 * MIN_MS, DAY_MS, 10 * MIN_MS)]  # one per 10 min
    args = (window, mean, 0.3, 2 * DAY_MS)
    due = due_touches(groups, 3 * DAY_MS, *args)
    expected_orders = 0.004 * sum(n * delay_cdf(a, window, mean, 0.3, 2 * DAY_MS) for a, n in groups)
    assert conversion_rate(due, round(expected_orders), 0.01, 0) == pytest.approx(0.004, rel=0.01)
    assert conversion_rate(sum(n for _, n in groups), round(expected_orders), 0.01, 0) < 0.0035
    # Orders counted only over the last hour: only what fell due in it is compared with them.
    assert due_touches([(5 * HOUR_MS, 100)], HOUR_MS, *args) == pytest.approx(
        100 * (delay_cdf(5 * HOUR_MS, *args) - delay_cdf(4 * HOUR_MS, *args))
    )
    with pytest.raises(ValueError, match="since_ms"):
        due_touches(groups, -1, *args)


def test_the_traffic_shape_divides_out_the_throttle_that_served_it() -> None:
    """Requests peak in the evening; yesterday the controller served the evening at p = 0.1 and
    the morning at 1, so touches alone read the evening as quiet, touches over exposure do not;
    an hour never served (a spent cap) keeps the day's mean."""
    requests = [10.0] * 18 + [40.0] * 6
    exposure = [1.0] * 18 + [0.1] * 5 + [0.0]
    touches = [r * e for r, e in zip(requests, exposure, strict=True)]
    shape = TrafficShape.from_exposure(touches, exposure)
    assert shape.weights[20] / shape.weights[3] == pytest.approx(4.0, rel=0.2)
    assert TrafficShape.from_counts(touches).weights[20] < TrafficShape.from_counts(touches).weights[3]
    mean = sum(touches) / sum(exposure)
    assert shape.weights[23] == pytest.approx(mean)
    assert TrafficShape.from_exposure([0.0] * 24, [0.0] * 24) == TrafficShape.flat()


def test_the_estimate_learns_from_touches_served_not_from_when_orders_happen_to_land() -> None:
    """With a touch value the full-serving estimate reads the touches served (their expected
    charge), so a burst of orders landing does not move it; without one, it does."""
    prev = PacingState(
        "2026-12-06", 6 * HOUR_MS - MIN_MS, 0.5, 1000.0, 0.25, num=8_000.0, den=1.0, touches=400
    )
    quiet = _inp(spend=1000, served_touches=420, touch_value_minor=2.0)
    burst = replace(quiet, spend_day_minor=3000, spend_lifetime_minor=3000)
    assert step(prev, burst).full_day_estimate == pytest.approx(step(prev, quiet).full_day_estimate)
    realised = replace(burst, touch_value_minor=0.0)
    assert step(prev, realised).full_day_estimate > step(prev, quiet).full_day_estimate  # type: ignore[operator]


def test_a_state_round_trips_and_one_written_before_touches_were_kept_reads_0() -> None:
    state = PacingState("2026-12-06", 5, 0.25, 12.5, 0.1, 3.0, 0.5, 7.25, touches=42)
    fields = encode_state(state)
    assert decode_state(list(fields.values())) == state
    old = [*list(fields.values())[:-1], None]
    assert decode_state(old) == replace(state, touches=0)
