"""The billing rule, clause by clause.

README, "How the two layers agree":

    For an order at time t, the candidates are the user's touches on eligible campaigns
    (merchant or promo code, same currency, active at the touch) within the click or view
    window; a promo code on the order is a redemption touch at t. The greatest by
    (redemption > click > view, then time, event id, campaign id) wins: exactly one campaign
    per order.

and "Money": "Charges are integer minor units with the campaign's currency [...] A share of
order value is rounded down."

Each function below states one clause; ``decide`` puts them together by enumerating every
event and every campaign.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from shared_logic.campaigns import Campaign, Catalog, Pricing
from shared_logic.events import Click, Event, Impression, Order, PromoView
from shared_logic.policy import AttributionPolicy

#: Strengths, as numbered in the ledger's ``touch_kind`` column: "redemption > click > view".
VIEW: Final = 1
CLICK: Final = 2
REDEMPTION: Final = 3
#: What each touch event records (design, "Campaigns"; ``promo_view`` is a view of a promo).
STRENGTH_OF_EVENT: Final = {"impression": VIEW, "promo_view": VIEW, "click": CLICK}
#: Basis points: ten thousand to the whole.
BPS_PER_WHOLE: Final = 10_000


@dataclass(frozen=True, slots=True)
class Candidate:
    """A touch that may earn the order: a touch event, or a redemption of a code on the order."""

    event_id: str
    campaign_id: str
    strength: int
    time_ms: int

    def rank(self) -> tuple[int, int, str, str]:
        """ "The greatest by (redemption > click > view, then time, event id, campaign id) wins"."""
        return (self.strength, self.time_ms, self.event_id, self.campaign_id)


#: Names of the ranking's parts, in order: what separated a winner from the runner-up.
RANK_PARTS: Final = ("strength", "time", "event_id", "campaign_id")


@dataclass(frozen=True, slots=True)
class OracleDecision:
    """The campaign an order is attributed to, with the same fields as the product's decision,
    and how it was decided (for the tests' coverage, not for comparison)."""

    order_id: str
    user_id: str
    order_event_id: str
    order_time_ms: int
    merchant_id: str
    amount_minor: int
    currency: str
    campaign_id: str
    advertiser_id: str
    lever: str
    touch_event_id: str
    touch_kind: int
    touch_time_ms: int
    price_minor: int
    #: How many candidates the order had, and which part of the ranking separated the winner
    #: from the best other candidate ("alone": there was none; "equal": a copy of the winner).
    candidates: int
    decided_by: str

    def fields(self) -> dict[str, object]:
        """The decision's contract fields (what both layers record), without the explanation."""
        return {
            name: getattr(self, name)
            for name in self.__dataclass_fields__
            if name not in ("candidates", "decided_by")
        }


def campaign_named(catalog: Catalog, campaign_id: str) -> Campaign | None:
    """The catalog's campaign of that id, found by looking at every campaign."""
    found = [c for c in catalog if c.campaign_id == campaign_id]
    return found[0] if found else None


def is_active(campaign: Campaign, time_ms: int) -> bool:
    """ "campaign active at the touch": its period holds the instant, start inclusive, end
    exclusive (``Campaign.active_at``'s documentation); a missing bound is open."""
    after_start = campaign.start_ms is None or campaign.start_ms <= time_ms
    before_end = campaign.end_ms is None or time_ms < campaign.end_ms
    return after_start and before_end


def matches(campaign: Campaign, order: Order) -> bool:
    """ "merchant or promo code": the order is at one of the campaign's merchants, or carries one
    of its promo codes."""
    at_merchant = order.merchant_id in campaign.merchant_ids
    with_code = any(code in campaign.promo_codes for code in order.promo_codes)
    return at_merchant or with_code


def is_eligible(campaign: Campaign, order: Order) -> bool:
    """ "eligible campaigns (merchant or promo code, same currency [...])": a campaign never earns
    an order in another currency, whatever matches."""
    return matches(campaign, order) and campaign.currency == order.currency


def window_ms(campaign: Campaign, strength: int, policy: AttributionPolicy) -> int:
    """ "within the click or view window": the click window for a click, the view window for a
    view. Windows come "from, in order, a per-campaign override [in the policy], the campaign
    record, then ``default_windows``" (``AttributionPolicy``'s documentation)."""
    windows = policy.overrides.get(campaign.campaign_id)
    if windows is None:
        windows = campaign.windows
    if windows is None:
        windows = policy.default_windows
    return windows.click_ms if strength == CLICK else windows.view_ms


def within_window(touch_ms: int, order_ms: int, window: int) -> bool:
    """``t - window(kind) <= touch time <= t``, "both ends inclusive" (``touch_counts``'s
    documentation): a touch after the order never counts, one exactly a window before does."""
    return order_ms - window <= touch_ms <= order_ms


def touch_candidates(
    order: Order, events: Iterable[Event], catalog: Catalog, policy: AttributionPolicy
) -> list[Candidate]:
    """ "the candidates are the user's touches on eligible campaigns [...] active at the touch
    [...] within the click or view window": every touch event is looked at."""
    out = []
    for event in events:
        if not isinstance(event, (Impression, Click, PromoView)):
            continue  # orders and cancels are not touches
        if event.user_id != order.user_id:
            continue  # "the user's touches"
        campaign = campaign_named(catalog, event.campaign_id)
        if campaign is None or not is_eligible(campaign, order):
            continue
        if not is_active(campaign, event.event_time):
            continue  # "active at the touch", not at the order
        strength = STRENGTH_OF_EVENT[event.event_type]
        if within_window(event.event_time, order.event_time, window_ms(campaign, strength, policy)):
            out.append(Candidate(event.event_id, campaign.campaign_id, strength, event.event_time))
    return out


def redemption_candidates(order: Order, catalog: Catalog) -> list[Candidate]:
    """ "a promo code on the order is a redemption touch at t": for each code, the campaign that
    owns it, when eligible (same currency) and active at t. No window applies: the touch is the
    order itself. Its event id is the order's event id, '#', the code (``attribute_order``: "the
    order's own event id, suffixed by the code [...] stable across replays and unique per
    code")."""
    out = []
    for code in order.promo_codes:
        for campaign in catalog:
            owns = code in campaign.promo_codes
            if owns and is_eligible(campaign, order) and is_active(campaign, order.event_time):
                redemption_id = f"{order.event_id}#{code}"
                out.append(Candidate(redemption_id, campaign.campaign_id, REDEMPTION, order.event_time))
    return out


def price(pricing: Pricing, amount_minor: int) -> int:
    """ "Cost per attributed order: a fixed fee, or basis points of order value"; "A share of order
    value is rounded down" (to a whole minor unit: 99 cents at 250 bps cost 2 cents, not 3)."""
    if pricing.model == "fixed":
        assert pricing.fee_minor is not None
        return pricing.fee_minor
    assert pricing.bps is not None
    whole_units, _fraction = divmod(amount_minor * pricing.bps, BPS_PER_WHOLE)
    return whole_units


def _decided_by(ranked: list[Candidate]) -> str:
    if len(ranked) == 1:
        return "alone"
    best, runner_up = ranked[0].rank(), ranked[1].rank()
    for part, mine, theirs in zip(RANK_PARTS, best, runner_up, strict=True):
        if mine != theirs:
            return part
    return "equal"


def decide(
    order: Order, events: Iterable[Event], catalog: Catalog, policy: AttributionPolicy
) -> OracleDecision | None:
    """The billing rule for one order: every candidate, the greatest wins ("exactly one campaign
    per order"); None when there is no candidate (an organic order, charged nothing).

    ``events`` may hold anything (other users' touches, orders, cancels): the clauses pick.
    """
    everything = list(touch_candidates(order, events, catalog, policy))
    everything += redemption_candidates(order, catalog)
    if not everything:
        return None
    ranked = sorted(everything, key=Candidate.rank, reverse=True)
    winner = ranked[0]
    campaign = campaign_named(catalog, winner.campaign_id)
    assert campaign is not None
    return OracleDecision(
        order_id=order.order_id,
        user_id=order.user_id,
        order_event_id=order.event_id,
        order_time_ms=order.event_time,
        merchant_id=order.merchant_id,
        amount_minor=order.amount_minor,
        currency=order.currency,
        campaign_id=campaign.campaign_id,
        advertiser_id=campaign.advertiser_id,
        lever=campaign.lever.value,
        touch_event_id=winner.event_id,
        touch_kind=winner.strength,
        touch_time_ms=winner.time_ms,
        price_minor=price(campaign.pricing, order.amount_minor),
        candidates=len(everything),
        decided_by=_decided_by(ranked),
    )
