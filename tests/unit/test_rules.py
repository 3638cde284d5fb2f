import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared_logic import AttributionPolicy, Lever, TouchKind, Windows, attribute_order, touch_from_event
from shared_logic.events import Click, Impression, Order, PromoView
from shared_logic.rules import touch_retention_ms
from tests.factories import DAY, HOUR, MIN, T0, campaign, catalog, order, promo, touch

pytestmark = pytest.mark.unit
POLICY = AttributionPolicy()


def test_organic_order_has_no_decision() -> None:
    cat = catalog(campaign("ad1", merchant_ids=["m9"]))
    assert attribute_order(order(), [touch("i1", "ad1", TouchKind.VIEW, T0 - MIN)], cat, POLICY) is None


def test_click_beats_later_view_and_view_beats_nothing() -> None:
    cat = catalog(campaign("ad1"), campaign("ad2"))
    touches = [
        touch("c1", "ad1", TouchKind.CLICK, T0 - 2 * HOUR),
        touch("i1", "ad2", TouchKind.VIEW, T0 - MIN),
    ]
    decision = attribute_order(order(), touches, cat, POLICY)
    assert decision is not None
    assert (decision.campaign_id, decision.touch_kind, decision.touch_event_id) == (
        "ad1",
        TouchKind.CLICK,
        "c1",
    )
    assert decision.price_minor == 100


def test_later_touch_of_same_kind_wins_then_greater_event_id() -> None:
    cat = catalog(campaign("ad1"), campaign("ad2"))
    later = [touch("c1", "ad1", TouchKind.CLICK, T0 - HOUR), touch("c2", "ad2", TouchKind.CLICK, T0 - MIN)]
    assert attribute_order(order(), later, cat, POLICY).campaign_id == "ad2"  # type: ignore[union-attr]
    tie = [touch("c9", "ad1", TouchKind.CLICK, T0 - MIN), touch("c2", "ad2", TouchKind.CLICK, T0 - MIN)]
    assert attribute_order(order(), tie, cat, POLICY).touch_event_id == "c9"  # type: ignore[union-attr]


def test_redemption_beats_any_click_and_credits_once() -> None:
    cat = catalog(campaign("ad1"), promo("pr1", codes=("SAVE",), merchant_ids=["m1"]))
    touches = [touch("c1", "ad1", TouchKind.CLICK, T0 - MIN)]
    decision = attribute_order(order(promo_codes=["SAVE"]), touches, cat, POLICY)
    assert decision is not None
    assert decision.campaign_id == "pr1"
    assert decision.lever is Lever.PROMO
    assert decision.touch_kind is TouchKind.REDEMPTION
    assert decision.touch_event_id == "eo1#SAVE"
    assert decision.touch_time_ms == T0


def test_promo_code_makes_a_campaign_eligible_at_any_merchant() -> None:
    cat = catalog(promo("pr1", codes=("SAVE",), merchant_ids=[]))
    decision = attribute_order(order(merchant="m7", promo_codes=["SAVE"]), [], cat, POLICY)
    assert decision is not None
    assert decision.campaign_id == "pr1"


def test_unknown_promo_code_is_ignored() -> None:
    cat = catalog(campaign("ad1"))
    decision = attribute_order(
        order(promo_codes=["NOPE"]), [touch("i", "ad1", TouchKind.VIEW, T0)], cat, POLICY
    )
    assert decision is not None
    assert decision.campaign_id == "ad1"


def test_currency_must_match() -> None:
    cat = catalog(campaign("ad1", currency="EUR"))
    assert attribute_order(order(), [touch("c1", "ad1", TouchKind.CLICK, T0 - MIN)], cat, POLICY) is None


def test_campaign_must_be_active_at_the_touch() -> None:
    cat = catalog(campaign("ad1", start_ms=T0 - HOUR, end_ms=T0))
    before = [touch("c1", "ad1", TouchKind.CLICK, T0 - 2 * HOUR)]
    inside = [touch("c2", "ad1", TouchKind.CLICK, T0 - MIN)]
    assert attribute_order(order(), before, cat, POLICY) is None
    # Active at the touch is what counts, even though the campaign has ended by the order.
    assert attribute_order(order(), inside, cat, POLICY) is not None


def test_touch_after_order_and_other_users_touches_never_count() -> None:
    cat = catalog(campaign("ad1"))
    assert attribute_order(order(), [touch("c1", "ad1", TouchKind.CLICK, T0 + 1)], cat, POLICY) is None
    other = [touch("c1", "ad1", TouchKind.CLICK, T0 - MIN, user="u2")]
    assert attribute_order(order(), other, cat, POLICY) is None


@pytest.mark.parametrize(("kind", "window"), [(TouchKind.CLICK, 7 * DAY), (TouchKind.VIEW, DAY)])
def test_window_boundary_is_inclusive(kind: TouchKind, window: int) -> None:
    cat = catalog(campaign("ad1"))
    on_edge = [touch("t", "ad1", kind, T0 - window)]
    past_edge = [touch("t", "ad1", kind, T0 - window - 1)]
    assert attribute_order(order(), on_edge, cat, POLICY) is not None
    assert attribute_order(order(), past_edge, cat, POLICY) is None


def test_window_precedence_override_then_campaign_then_default() -> None:
    own = campaign("ad1", windows={"click_ms": HOUR, "view_ms": MIN})
    plain = campaign("ad2")
    policy = AttributionPolicy(overrides={"ad2": Windows(click_ms=2 * HOUR, view_ms=MIN)})
    assert policy.windows_for(own).click_ms == HOUR
    assert policy.windows_for(plain).click_ms == 2 * HOUR
    assert AttributionPolicy().windows_for(plain).click_ms == 7 * DAY
    assert policy.longest_window_ms([own, plain]) == 7 * DAY
    cat = catalog(own)
    assert attribute_order(order(), [touch("c", "ad1", TouchKind.CLICK, T0 - 2 * HOUR)], cat, policy) is None


def test_negative_lateness_is_refused() -> None:
    with pytest.raises(ValueError, match="allowed_lateness_ms"):
        AttributionPolicy(allowed_lateness_ms=-1)


def test_touch_from_event() -> None:
    imp = Impression("i", T0, "u", "ad1")
    click = Click("c", T0, "u", "ad1")
    pv = PromoView("p", T0, "u", "pr1")
    assert touch_from_event(imp).kind is TouchKind.VIEW  # type: ignore[union-attr]
    assert touch_from_event(click).kind is TouchKind.CLICK  # type: ignore[union-attr]
    assert touch_from_event(pv).kind is TouchKind.VIEW  # type: ignore[union-attr]
    assert touch_from_event(Order("o", T0, "u", "o", "m", 1, "USD")) is None


def test_bps_pricing_on_the_decision() -> None:
    cat = catalog(campaign("ad1", pricing={"model": "bps", "bps": 250}))
    decision = attribute_order(order(amount=99), [touch("c", "ad1", TouchKind.CLICK, T0)], cat, POLICY)
    assert decision is not None
    assert decision.price_minor == 2  # 99 * 2.5% = 2.475, rounded down


CAMPAIGNS = ["ad1", "ad2", "ad3", "pr1"]
touch_strategy = st.builds(
    touch,
    st.text("abcdef", min_size=1, max_size=3),
    st.sampled_from(CAMPAIGNS),
    st.sampled_from([TouchKind.VIEW, TouchKind.CLICK]),
    st.integers(T0 - 9 * DAY, T0 + HOUR),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(touch_strategy, max_size=25), st.randoms(use_true_random=False), st.booleans())
def test_shuffling_touches_never_changes_the_decision(touches, rnd: random.Random, with_code: bool) -> None:
    cat = catalog(
        campaign("ad1"),
        campaign("ad2", windows={"click_ms": HOUR, "view_ms": MIN}),
        campaign("ad3"),
        promo("pr1", codes=("SAVE",)),
    )
    o = order(promo_codes=["SAVE"] if with_code else [])
    expected = attribute_order(o, touches, cat, POLICY)
    shuffled = list(touches)
    rnd.shuffle(shuffled)
    assert attribute_order(o, shuffled, cat, POLICY) == expected
    assert attribute_order(o, reversed(touches), cat, POLICY) == expected
    if with_code:
        # An order with a redemption is credited to the promo, once, whatever ad touches came before.
        assert expected is not None
        assert expected.campaign_id == "pr1"


def test_touch_retention_is_the_longest_window_of_each_kind_plus_lateness() -> None:
    """Each kind's own longest window among the catalog's campaigns (defaults and overrides
    included), not the longest of any kind; ``per_kind=False`` is the earlier single bound."""
    policy = AttributionPolicy(
        default_windows=Windows(click_ms=2 * DAY, view_ms=HOUR), allowed_lateness_ms=MIN
    )
    campaigns = [
        campaign("ad1", windows={"click_ms": HOUR, "view_ms": 3 * DAY}),
        campaign("ad2", windows={"click_ms": 5 * DAY, "view_ms": MIN}),
    ]
    assert touch_retention_ms(policy, campaigns) == {
        TouchKind.VIEW: 3 * DAY + MIN,
        TouchKind.CLICK: 5 * DAY + MIN,
    }
    assert touch_retention_ms(policy) == {TouchKind.VIEW: HOUR + MIN, TouchKind.CLICK: 2 * DAY + MIN}
    longest = touch_retention_ms(policy, campaigns, per_kind=False)
    assert longest == {TouchKind.VIEW: 5 * DAY + MIN, TouchKind.CLICK: 5 * DAY + MIN}
    with pytest.raises(ValueError, match="kind = 'promo'"):
        policy.longest_window_of_ms("promo")
