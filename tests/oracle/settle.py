"""Settlement, clause by clause: which actions, in which order, and what each writes.

README, "How the two layers agree":

    Both layers decide an order, and apply a cancel, once its event time plus the allowed
    lateness (60 s by default) has passed, and settle in one total order.

    Charges are integer minor units with the campaign's currency [...] ``apply_caps`` cuts a
    charge to what is left of the daily cap (the campaign's local day, DST-safe) and the
    lifetime cap. [...] every counter (a campaign's spend of a budget day, its lifetime spend,
    its revenue of a UTC day) and every cap is at most 2^53 - 1 [...] A settlement that would
    pass it is refused before anything is written.

README, "The cancel horizon":

    A cancel counts when dated from its order's UTC day minus the look-back (the longest window
    plus L, in days) to that day plus ``ATTRIBUTION_RULES_CANCEL_HORIZON_DAYS``; the earliest of
    those (then the least event id) is the order's cancel, whichever lands first [...]. A cancel
    after the horizon refunds nothing.

and the settlement module's documentation: actions run "in ``action_key`` order (due time,
then decisions before cancels, then order id)"; a ledger line is "a charge (possibly capped to
0), a stopped charge, or a refund"; a cancel that comes before its order's decision stops it
("cancels that came before their order [...] the decision, when it comes, charges nothing").

Spend is never kept in a counter here: each time it is needed it is summed from the ledger
written so far, so the caps are stated as what they are, a bound on a sum of lines.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Final
from zoneinfo import ZoneInfo

from shared_logic.campaigns import Catalog
from shared_logic.events import Event, Order, OrderCancel
from shared_logic.policy import AttributionPolicy
from tests.oracle.rule import OracleDecision, campaign_named, decide

MS_PER_DAY: Final = 24 * 60 * 60 * 1000
#: "every counter [...] and every cap is at most 2^53 - 1".
MAX_COUNTER: Final = 2**53 - 1
#: "decisions before cancels" at the same due time.
DECIDE_FIRST: Final = {"decide": 0, "cancel": 1}
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class LedgerLine:
    """One line of the ledger, with the product's ledger fields, in the same order."""

    kind: str  # "charge", "cancelled" (stopped: a cancel came first) or "refund"
    order_id: str
    campaign_id: str
    advertiser_id: str
    lever: str
    user_id: str
    order_time_ms: int
    due_ms: int
    amount_minor: int
    currency: str
    price_minor: int
    charge_minor: int
    capped: bool
    budget_day: str
    touch_event_id: str
    touch_kind: int
    touch_time_ms: int


@dataclass(frozen=True, slots=True)
class Action:
    """Decide an order, or apply its cancel, at its due time."""

    due_ms: int
    kind: str
    order_id: str

    def key(self) -> tuple[int, int, str]:
        """ "due time, then decisions before cancels, then order id"."""
        return (self.due_ms, DECIDE_FIRST[self.kind], self.order_id)


@dataclass(slots=True)
class Settlement:
    """What settling a set of events gives: every order's decision, the ledger in settlement
    order, the orders refused by the counter bound, and (for the tests' coverage) which cancel
    counted for each order and which cancels counted for nothing."""

    decisions: dict[str, OracleDecision | None] = field(default_factory=dict)
    ledger: list[LedgerLine] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    cancel_of: dict[str, OrderCancel] = field(default_factory=dict)
    outside_horizon: list[OrderCancel] = field(default_factory=list)


# time ---------------------------------------------------------------------------------------


def utc_day_start(time_ms: int) -> int:
    """Midnight UTC of the instant's day, in epoch ms."""
    return (time_ms // MS_PER_DAY) * MS_PER_DAY


def utc_day(time_ms: int) -> str:
    """The UTC calendar day of an instant (the day of "its revenue of a UTC day")."""
    return (date(1970, 1, 1) + timedelta(days=time_ms // MS_PER_DAY)).isoformat()


def local_day(time_ms: int, timezone: str) -> str:
    """ "the campaign's local day, DST-safe": the calendar date on a clock in the campaign's time
    zone (``Budget.timezone``) at that instant."""
    instant = _EPOCH + timedelta(milliseconds=time_ms)
    return instant.astimezone(ZoneInfo(timezone)).date().isoformat()


# the cancel horizon ---------------------------------------------------------------------------


def longest_window_ms(catalog: Catalog, policy: AttributionPolicy) -> int:
    """ "the longest window": over the default windows, every override of the policy and the
    windows each campaign of the catalog is decided with (its override, else its record, else the
    defaults)."""
    windows = [policy.default_windows, *policy.overrides.values()]
    windows.extend(
        policy.overrides.get(c.campaign_id) or c.windows or policy.default_windows for c in catalog
    )
    return max(max(w.click_ms, w.view_ms) for w in windows)


def lookback_days(catalog: Catalog, policy: AttributionPolicy) -> int:
    """ "the look-back (the longest window plus L, in days)": whole days, rounded up."""
    span = longest_window_ms(catalog, policy) + policy.allowed_lateness_ms
    whole, rest = divmod(span, MS_PER_DAY)
    return whole + (1 if rest else 0)


def cancel_counts(order_ms: int, cancel_ms: int, catalog: Catalog, policy: AttributionPolicy) -> bool:
    """ "dated from its order's UTC day minus the look-back [...] to that day plus [the horizon]":
    from midnight UTC of the order's day minus the look-back's days (inclusive) to the end of
    the horizon's last day (the whole day counts, the next midnight does not)."""
    day = utc_day_start(order_ms)
    first = day - lookback_days(catalog, policy) * MS_PER_DAY
    after_last = day + (policy.cancel_horizon_days + 1) * MS_PER_DAY
    return first <= cancel_ms < after_last


def counting_cancel(
    order: Order, events: Sequence[Event], catalog: Catalog, policy: AttributionPolicy
) -> tuple[OrderCancel | None, list[OrderCancel]]:
    """ "the earliest of those (then the least event id) is the order's cancel", among the cancels
    of its order id that count; returns it and the cancels of the order that count for nothing."""
    named = [e for e in events if isinstance(e, OrderCancel) and e.order_id == order.order_id]
    counting = [c for c in named if cancel_counts(order.event_time, c.event_time, catalog, policy)]
    outside = [c for c in named if c not in counting]
    first = sorted(counting, key=lambda c: (c.event_time, c.event_id))[:1]
    return (first[0] if first else None), outside


# the schedule -------------------------------------------------------------------------------


def schedule(
    orders: Sequence[Order], cancel_of: dict[str, OrderCancel], policy: AttributionPolicy
) -> list[Action]:
    """ "decide an order, and apply a cancel, once its event time plus the allowed lateness has
    passed, and settle in one total order": every order has a decision due at its time + L, every
    counted cancel is due at its own time + L; sorted by their keys."""
    lateness = policy.allowed_lateness_ms
    actions = [Action(o.event_time + lateness, "decide", o.order_id) for o in orders]
    actions += [Action(c.event_time + lateness, "cancel", oid) for oid, c in cancel_of.items()]
    return sorted(actions, key=Action.key)


# spend, summed from the ledger ------------------------------------------------------------------


def spent_on_day(ledger: Sequence[LedgerLine], campaign_id: str, budget_day: str) -> int:
    """A campaign's spend of one budget day: its charges of orders of that day, less refunds."""
    return sum(x.charge_minor for x in ledger if x.campaign_id == campaign_id and x.budget_day == budget_day)


def spent_ever(ledger: Sequence[LedgerLine], campaign_id: str) -> int:
    """A campaign's lifetime spend: every charge, less every refund."""
    return sum(x.charge_minor for x in ledger if x.campaign_id == campaign_id)


def revenue_of_utc_day(ledger: Sequence[LedgerLine], campaign_id: str, day: str) -> int:
    """A campaign's revenue of a UTC day: the value of its charged orders of that day, less the
    value of the refunded ones (a stopped order brings none)."""
    sign = {"charge": 1, "refund": -1, "cancelled": 0}
    return sum(
        sign[x.kind] * x.amount_minor
        for x in ledger
        if x.campaign_id == campaign_id and utc_day(x.order_time_ms) == day
    )


def cut_to_caps(price: int, daily_cap: int | None, daily_spent: int, lifetime_cap: int | None,
                lifetime_spent: int) -> int:  # fmt: skip
    """ "cuts a charge to what is left of the daily cap [...] and the lifetime cap": the price, or
    less when a cap has less left; nothing is left of a cap already reached (never negative)."""
    left = [price]
    if daily_cap is not None:
        left.append(max(daily_cap - daily_spent, 0))
    if lifetime_cap is not None:
        left.append(max(lifetime_cap - lifetime_spent, 0))
    return min(left)


# settling -------------------------------------------------------------------------------------


def _line(kind: str, d: OracleDecision, due_ms: int, charge: int, capped: bool, day: str) -> LedgerLine:
    return LedgerLine(
        kind, d.order_id, d.campaign_id, d.advertiser_id, d.lever, d.user_id, d.order_time_ms, due_ms,
        d.amount_minor, d.currency, d.price_minor, charge, capped, day, d.touch_event_id, d.touch_kind,
        d.touch_time_ms,
    )  # fmt: skip


def settle(events: Sequence[Event], catalog: Catalog, policy: AttributionPolicy) -> Settlement:
    """Decide every order over every event, then settle decisions and cancels in order.

    ``events`` are in the order they landed; every order id and event id is unique.

    - A decision of an organic order writes nothing.
    - A decision whose order's cancel came first (an earlier action) writes a stopped line:
      ``cancelled``, charging 0, on the order's budget day.
    - Otherwise it writes a ``charge`` of the price cut to the caps (``capped`` when cut), on the
      campaign's local day of the order; unless a counter would pass 2^53 - 1, when it writes
      nothing and the order is refused.
    - A cancel of a charged order not yet refunded writes a ``refund`` of minus what was charged
      (0 for a charge capped to 0), on the charge's budget day, due at the cancel's due time.
      A cancel of an organic, refused or already stopped order writes nothing.
    """
    out = Settlement()
    orders = [e for e in events if isinstance(e, Order)]
    for order in orders:
        out.decisions[order.order_id] = decide(order, events, catalog, policy)
        chosen, outside = counting_cancel(order, events, catalog, policy)
        if chosen is not None:
            out.cancel_of[order.order_id] = chosen
        out.outside_horizon += outside
    actions = schedule(orders, out.cancel_of, policy)
    done: list[Action] = []
    for action in actions:
        d = out.decisions[action.order_id]
        if d is not None:
            if action.kind == "decide":
                _decide(out, d, action, done, catalog)
            else:
                _cancel(out, d, action)
        done.append(action)
    return out


def _decide(out: Settlement, d: OracleDecision, action: Action, done: list[Action], catalog: Catalog) -> None:
    campaign = campaign_named(catalog, d.campaign_id)
    assert campaign is not None
    budget = campaign.budget
    day = local_day(d.order_time_ms, budget.timezone)
    if any(a.kind == "cancel" and a.order_id == d.order_id for a in done):
        out.ledger.append(_line("cancelled", d, action.due_ms, 0, False, day))
        return
    daily, lifetime = spent_on_day(out.ledger, d.campaign_id, day), spent_ever(out.ledger, d.campaign_id)
    charge = cut_to_caps(d.price_minor, budget.daily_minor, daily, budget.lifetime_minor, lifetime)
    revenue = revenue_of_utc_day(out.ledger, d.campaign_id, utc_day(d.order_time_ms))
    if (
        daily + charge > MAX_COUNTER
        or lifetime + charge > MAX_COUNTER
        or revenue + d.amount_minor > MAX_COUNTER
    ):
        out.refused.append(d.order_id)
        return
    out.ledger.append(_line("charge", d, action.due_ms, charge, charge < d.price_minor, day))


def _cancel(out: Settlement, d: OracleDecision, action: Action) -> None:
    charges = [x for x in out.ledger if x.order_id == d.order_id and x.kind == "charge"]
    settled_back = [x for x in out.ledger if x.order_id == d.order_id and x.kind in ("refund", "cancelled")]
    if charges and not settled_back:
        charged = charges[0]
        out.ledger.append(_line("refund", d, action.due_ms, -charged.charge_minor, False, charged.budget_day))
