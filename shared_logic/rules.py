"""The billing rule: which campaign, if any, earned an order.

This one function decides for both layers. It is deterministic and does not
depend on the order in which touches are given.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from shared_logic.campaigns import Campaign, Catalog, Lever
from shared_logic.events import Click, Event, Impression, Order, PromoView
from shared_logic.ivt import ClickEvidence, Flag, Mode, Outcome, Reason
from shared_logic.policy import AttributionPolicy
from shared_logic.pricing import price_order


class TouchKind(IntEnum):
    """Strength of a touch; the greater wins."""

    VIEW = 1
    CLICK = 2
    REDEMPTION = 3


@dataclass(frozen=True, slots=True)
class Touch:
    """A user's contact with a campaign that may earn a later order."""

    event_id: str
    user_id: str
    campaign_id: str
    kind: TouchKind
    time_ms: int


@dataclass(frozen=True, slots=True)
class Decision:
    """The campaign an order is attributed to, and its price before caps."""

    order_id: str
    user_id: str
    order_event_id: str
    order_time_ms: int
    merchant_id: str
    amount_minor: int
    currency: str
    campaign_id: str
    advertiser_id: str
    lever: Lever
    touch_event_id: str
    touch_kind: TouchKind
    touch_time_ms: int
    price_minor: int


#: The touch each event type records (impression and promo view: a view; click: a click).
TOUCH_KINDS: Final = {"impression": TouchKind.VIEW, "click": TouchKind.CLICK, "promo_view": TouchKind.VIEW}


def touch_retention_ms(
    policy: AttributionPolicy, campaigns: Iterable[Campaign] = (), per_kind: bool = True
) -> dict[TouchKind, int]:
    """How long after it a touch of each kind can still earn an order decided at its release: the
    longest window of that kind among ``campaigns`` (the defaults and overrides included) plus the
    allowed lateness; with ``per_kind`` False, the longest window of any kind for every kind."""
    campaigns = list(campaigns)
    longest = policy.longest_window_ms(campaigns)
    lateness = policy.allowed_lateness_ms
    return {
        kind: (policy.longest_window_of_ms(name, campaigns) if per_kind else longest) + lateness
        for kind, name in ((TouchKind.VIEW, "view"), (TouchKind.CLICK, "click"))
    }


def touch_from_event(event: Event) -> Touch | None:
    """The touch an event records, or None for an order or a cancel."""
    kind = TOUCH_KINDS.get(event.event_type)
    if kind is None:
        return None
    touching: Impression | Click | PromoView = event  # type: ignore[assignment]  # a touch type, by its tag
    return Touch(touching.event_id, touching.user_id, touching.campaign_id, kind, touching.event_time)


def eligible_campaigns(order: Order, catalog: Catalog) -> dict[str, Campaign]:
    """Campaigns that may be credited for the order: merchant or promo code match, same currency."""
    found: dict[str, Campaign] = {}
    for campaign in catalog.by_merchant(order.merchant_id):
        if campaign.currency == order.currency:
            found[campaign.campaign_id] = campaign
    for code in order.promo_codes:
        owner = catalog.by_promo_code(code)
        if owner is not None and owner.currency == order.currency:
            found[owner.campaign_id] = owner
    return found


def touch_counts(touch: Touch, eligible: dict[str, Campaign], policy: AttributionPolicy, t: int) -> bool:
    """Whether a touch may earn an order at ``t``: an eligible campaign, active at the touch,
    and ``t - window(kind) <= touch time <= t`` (both ends inclusive)."""
    if touch.time_ms > t:
        return False
    campaign = eligible.get(touch.campaign_id)
    if campaign is None or not campaign.active_at(touch.time_ms):
        return False
    if touch.kind is TouchKind.REDEMPTION:
        return True
    windows = policy.windows_for(campaign)
    window = windows.click_ms if touch.kind is TouchKind.CLICK else windows.view_ms
    return t - window <= touch.time_ms


def _rank(touch: Touch) -> tuple[int, int, str, str]:
    # Campaign id last: event ids should be unique, but if a producer reuses one the
    # decision must still not depend on the order touches were given in.
    return (int(touch.kind), touch.time_ms, touch.event_id, touch.campaign_id)


@dataclass(frozen=True, slots=True)
class OrderVerdict:
    """An invalid-traffic verdict on the touch that would have won an order without the rules:
    its reason and mode, what it did to the order, and the charge it kept from the touch's
    campaign (the price before caps; 0 in report mode)."""

    order_id: str
    order_time_ms: int
    touch_event_id: str
    campaign_id: str
    reason: Reason
    mode: Mode
    outcome: Outcome
    avoided_minor: int
    currency: str


@dataclass(frozen=True, slots=True)
class Judgement:
    """The billing rule's decision for an order, and the verdict that shaped it (None: the
    touch that wins without the rules is clean, or the order is organic)."""

    decision: Decision | None
    verdict: OrderVerdict | None = None


def attribute_order(
    order: Order, touches: Iterable[Touch], catalog: Catalog, policy: AttributionPolicy
) -> Decision | None:
    """Apply the billing rule of the design to one order (``judge_order``'s decision)."""
    return judge_order(order, touches, catalog, policy).decision


def judge_order(
    order: Order, touches: Iterable[Touch], catalog: Catalog, policy: AttributionPolicy
) -> Judgement:
    """Apply the billing rule of the design to one order, with the invalid-traffic rules.

    Candidates are the user's touches on campaigns eligible for the order that
    were active at the touch, with ``order time - window(kind) <= touch time <=
    order time``; a promo code on the order belonging to an eligible promo
    campaign is a redemption touch at the order time. The winner is the
    greatest by (kind, time, event id, campaign id), so exactly one campaign,
    ad or promo, is credited. A click the per-order rules of ``shared_logic.ivt``
    enforce on (injection, flooding, hyper engagement, judged over the user's
    clicks given) is no candidate; the verdict on the touch that would have won
    without the rules is returned beside the decision. The decision is ``None``
    when nothing is eligible (an organic order).
    """
    eligible = eligible_campaigns(order, catalog)
    if not eligible:
        return Judgement(None)
    t = order.event_time
    candidates: list[Touch] = []
    for code in order.promo_codes:
        owner = catalog.by_promo_code(code)
        if owner is not None and owner.campaign_id in eligible and owner.active_at(t):
            # The order's own event id, suffixed by the code, is the redemption's id:
            # stable across replays and unique per code.
            candidates.append(
                Touch(f"{order.event_id}#{code}", order.user_id, owner.campaign_id, TouchKind.REDEMPTION, t)
            )
    mine = [x for x in touches if x.user_id == order.user_id]
    candidates.extend(x for x in mine if touch_counts(x, eligible, policy, t))
    if not candidates:
        return Judgement(None)
    ivt = policy.ivt
    if not ivt.per_order:
        return Judgement(_decision(order, max(candidates, key=_rank), eligible))
    candidates.sort(key=_rank, reverse=True)
    evidence: ClickEvidence | None = None
    first: tuple[Touch, Flag] | None = None
    winner: Touch | None = None
    for touch in candidates:
        if touch.kind is not TouchKind.CLICK:
            winner = touch
            break
        if evidence is None:
            clicks = ((x.time_ms, x.event_id, x.campaign_id) for x in mine if x.kind is TouchKind.CLICK)
            evidence = ClickEvidence.of(t, clicks, ivt)
        span = policy.windows_for(eligible[touch.campaign_id]).click_ms
        flag = evidence.flag(touch.time_ms, touch.event_id, touch.campaign_id, span)
        if flag is not None and first is None:
            first = (touch, flag)
        if flag is None or not flag.enforced:
            winner = touch
            break
    decision = _decision(order, winner, eligible) if winner is not None else None
    if first is None or first[0] is not candidates[0]:
        return Judgement(decision)
    touch, flag = first
    if not flag.enforced:
        outcome, avoided = Outcome.FLAGGED, 0
    else:
        outcome = Outcome.CHANGED if decision is not None else Outcome.UNATTRIBUTED
        avoided = price_order(eligible[touch.campaign_id].pricing, order.amount_minor)
    verdict = OrderVerdict(
        order.order_id,
        t,
        touch.event_id,
        touch.campaign_id,
        flag.reason,
        flag.mode,
        outcome,
        avoided,
        order.currency,
    )
    return Judgement(decision, verdict)


def _decision(order: Order, best: Touch, eligible: dict[str, Campaign]) -> Decision:
    winner = eligible[best.campaign_id]
    return Decision(
        order_id=order.order_id,
        user_id=order.user_id,
        order_event_id=order.event_id,
        order_time_ms=order.event_time,
        merchant_id=order.merchant_id,
        amount_minor=order.amount_minor,
        currency=order.currency,
        campaign_id=winner.campaign_id,
        advertiser_id=winner.advertiser_id,
        lever=winner.lever,
        touch_event_id=best.event_id,
        touch_kind=best.kind,
        touch_time_ms=best.time_ms,
        price_minor=price_order(winner.pricing, order.amount_minor),
    )
