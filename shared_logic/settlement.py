"""Settlement: charging decided orders and refunding cancelled ones, in order.

Both layers settle the same sequence of actions. An order is decided, and a
cancel takes effect, once the allowed lateness has passed after its event
time; actions run in ``action_key`` order (due time, then decisions before
cancels, then order id). Given the same actions, the result is the same however
they were batched, replayed or interrupted.

``ChargeBook`` is the specification. The speed layer runs the same steps in
Redis Lua scripts (they must be atomic there); a property test feeds random
action sequences through both and demands identical ledgers and spend.

A book can stop at a boundary and go on later: ``snapshot`` keeps what actions
after the boundary can still read (lifetime spend, the spend of budget days a
later order can fall on, the charges a later cancel may still refund, cancels
that came before their order) and ``restore`` builds a book from it. Settling a
sequence in one go, or its actions before a boundary, then a snapshot, a
restore and the rest, gives the same ledger (a property test holds it). The
nightly job carries its settlement between nights this way.

``cancel_counts`` is the cancel horizon of both layers: a cancel refunds only
when dated within the order's UTC day minus ``lookback_days`` and plus
``horizon_days``, so a day's ledger is final once its horizon has passed and a
checkpoint never carries a charge older than the horizon.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from shared_logic.budget import apply_caps, budget_day
from shared_logic.campaigns import Catalog
from shared_logic.events import Event, Order, OrderCancel
from shared_logic.money import MAX_COUNTER_MINOR
from shared_logic.policy import AttributionPolicy
from shared_logic.rules import Decision, Touch, attribute_order, touch_from_event
from shared_logic.timeutil import MS_PER_DAY, utc_day

ActionKind = Literal["decide", "cancel"]
LedgerKind = Literal["charge", "cancelled", "refund"]
KIND_RANK = {"decide": 0, "cancel": 1}


def action_key(due_ms: int, kind: ActionKind, order_id: str) -> tuple[int, int, str]:
    """Total order of settlement actions, shared by both layers."""
    return (due_ms, KIND_RANK[kind], order_id)


@dataclass(frozen=True, slots=True)
class SettlementAction:
    """Decide an order (``decision`` set, or ``None`` for an organic order) or cancel one."""

    due_ms: int
    kind: ActionKind
    order_id: str
    decision: Decision | None = None

    @property
    def key(self) -> tuple[int, int, str]:
        return action_key(self.due_ms, self.kind, self.order_id)


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One line of the ledger: a charge (possibly capped to 0), a stopped charge, or a refund."""

    kind: LedgerKind
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

    @classmethod
    def of(
        cls, kind: LedgerKind, d: Decision, due_ms: int, charge_minor: int, capped: bool, day: str
    ) -> LedgerEntry:
        """The ledger line of a settlement of decision ``d`` (the one way both layers build it)."""
        return cls(
            kind,
            d.order_id,
            d.campaign_id,
            d.advertiser_id,
            str(d.lever),
            d.user_id,
            d.order_time_ms,
            due_ms,
            d.amount_minor,
            d.currency,
            d.price_minor,
            charge_minor,
            capped,
            day,
            d.touch_event_id,
            int(d.touch_kind),
            d.touch_time_ms,
        )


def cancel_window(order_time_ms: int, lookback_days: int, horizon_days: int) -> tuple[int, int]:
    """The cancel times ``[lo, hi)`` that may settle an order at ``order_time_ms``: from
    ``lookback_days`` before the order's UTC day to the end of the ``horizon_days``-th day after
    it (``cancel_counts``)."""
    day_start = order_time_ms - order_time_ms % MS_PER_DAY
    return day_start - lookback_days * MS_PER_DAY, day_start + (horizon_days + 1) * MS_PER_DAY


def cancel_counts(order_time_ms: int, cancel_time_ms: int, lookback_days: int, horizon_days: int) -> bool:
    """Whether a cancel at ``cancel_time_ms`` may settle an order at ``order_time_ms`` (both layers'
    horizon).

    It counts when dated from ``lookback_days`` before the order's UTC day to the end of the
    ``horizon_days``-th day after it. Later, the order's day is final and nothing refunds it;
    much earlier (a cancel dated days before its order) the job deciding the order never reads
    it. Both bounds hold for every run, from scratch or from a checkpoint, so both settle the
    same cancels; the speed layer applies the same window.
    """
    lo, hi = cancel_window(order_time_ms, lookback_days, horizon_days)
    return lo <= cancel_time_ms < hi


def cancel_rank(cancel: OrderCancel) -> tuple[int, str]:
    """Which of an order's counting cancels is its cancel: the earliest, then the least event id.

    Not the first to land: cancels of one order by different users reach different partitions,
    so which lands first depends on consumption order. The speed layer keeps every distinct cancel
    pending (``contract.pending_field``) and releases them by time, so the earliest that counts
    is the first it applies; the nightly job takes the same one (``batch.job``)."""
    return cancel.event_time, cancel.event_id


@dataclass(slots=True)
class _Charged:
    decision: Decision
    charge: int
    day: str
    refunded: bool = False


@dataclass(frozen=True, slots=True)
class ChargeRecord:
    """A settled decision a later cancel may still name: its charge, budget day, and whether it was
    refunded (or stopped by a cancel that came first: charge 0, refunded)."""

    decision: Decision
    charge_minor: int
    budget_day: str
    refunded: bool = False


@dataclass(frozen=True, slots=True)
class BookState:
    """What a ``ChargeBook`` needs to go on settling after a boundary, and nothing else.

    - ``spend_lifetime``: per campaign (campaigns that spent nothing are left out);
    - ``spend_day``: per (campaign, local budget day) for the days a later order can fall
      on, and only for campaigns with a daily cap;
    - ``charges``: per order id, the charges a later cancel may still refund (or ignore,
      when already refunded), so a refund after the boundary is the same amount on the
      same day as in one go;
    - ``cancelled``: orders cancelled before they were decided (the decision, when it
      comes, charges nothing).
    """

    spend_lifetime: Mapping[str, int] = field(default_factory=dict)
    spend_day: Mapping[tuple[str, str], int] = field(default_factory=dict)
    charges: Mapping[str, ChargeRecord] = field(default_factory=dict)
    cancelled: frozenset[str] = frozenset()

    def merge(self, other: BookState) -> BookState:
        """The union of two states of disjoint campaigns (one book per campaign, then one state)."""
        return BookState(
            {**self.spend_lifetime, **other.spend_lifetime},
            {**self.spend_day, **other.spend_day},
            {**self.charges, **other.charges},
            self.cancelled | other.cancelled,
        )


@dataclass(slots=True)
class ChargeBook:
    """In-memory settlement of one stream of actions against the catalog's caps."""

    catalog: Catalog
    spend_day: dict[tuple[str, str], int] = field(default_factory=dict)
    spend_lifetime: dict[str, int] = field(default_factory=dict)
    # Revenue of charged orders per campaign and UTC day of the order: the speed layer's daily
    # stats, bounded like every money counter (``MAX_COUNTER_MINOR``). Not in a snapshot: every
    # charge of a UTC day is settled before the boundary that day's night checkpoints at, and a
    # refund only lowers it.
    revenue_day: dict[tuple[str, str], int] = field(default_factory=dict)
    charged: dict[str, _Charged] = field(default_factory=dict)
    cancelled: set[str] = field(default_factory=set)
    ledger: list[LedgerEntry] = field(default_factory=list)
    # Orders whose charge was refused because a counter would pass MAX_COUNTER_MINOR.
    refused: list[str] = field(default_factory=list)

    @classmethod
    def restore(cls, catalog: Catalog, state: BookState) -> ChargeBook:
        """A book that goes on from ``state`` (a ``snapshot``), with an empty ledger."""
        book = cls(catalog)
        book.spend_lifetime.update(state.spend_lifetime)
        book.spend_day.update(state.spend_day)
        for order_id, r in state.charges.items():
            book.charged[order_id] = _Charged(r.decision, r.charge_minor, r.budget_day, r.refunded)
        book.cancelled.update(state.cancelled)
        return book

    def snapshot(self, open_from_ms: int, refundable_from_ms: int) -> BookState:
        """The state after the actions settled so far, cut to what later actions can read.

        The caller promises that every later decision is of an order at or after
        ``open_from_ms`` (so a budget day before that instant's local day, in the campaign's
        time zone, is closed: no later charge reads it), and that no later cancel names a
        charged order before ``refundable_from_ms`` (its cancel horizon has passed). Zero
        spend is left out: a missing entry reads as 0.
        """
        first_open: dict[str, str | None] = {}

        def is_open(campaign_id: str, day: str) -> bool:
            if campaign_id not in first_open:
                campaign = self.catalog.get(campaign_id)
                first_open[campaign_id] = (
                    budget_day(open_from_ms, campaign.budget.timezone).isoformat()
                    if campaign is not None and campaign.budget.daily_minor is not None
                    else None
                )
            first = first_open[campaign_id]
            return first is not None and day >= first

        return BookState(
            spend_lifetime={c: v for c, v in self.spend_lifetime.items() if v},
            spend_day={k: v for k, v in self.spend_day.items() if v and is_open(*k)},
            charges={
                order_id: ChargeRecord(r.decision, r.charge, r.day, r.refunded)
                for order_id, r in self.charged.items()
                if r.decision.order_time_ms >= refundable_from_ms
            },
            cancelled=frozenset(o for o in self.cancelled if o not in self.charged),
        )

    def settle(self, actions: Iterable[SettlementAction]) -> list[LedgerEntry]:
        """Apply actions in ``action_key`` order; returns the ledger entries they produced."""
        start = len(self.ledger)
        for action in sorted(actions, key=lambda a: a.key):
            if action.kind == "decide":
                self._decide(action)
            else:
                self._cancel(action)
        return self.ledger[start:]

    def _entry(self, kind: LedgerKind, d: Decision, due: int, charge: int, capped: bool, day: str) -> None:
        self.ledger.append(LedgerEntry.of(kind, d, due, charge, capped, day))

    def _decide(self, action: SettlementAction) -> None:
        d = action.decision
        if d is None or action.order_id in self.charged:
            return
        campaign = self.catalog.get(d.campaign_id)
        if campaign is None:
            raise KeyError(f"campaign_id = {d.campaign_id!r}: not in the catalog")
        day = budget_day(d.order_time_ms, campaign.budget.timezone).isoformat()
        if action.order_id in self.cancelled:
            self.charged[action.order_id] = _Charged(d, 0, day, refunded=True)
            self._entry("cancelled", d, action.due_ms, 0, False, day)
            return
        spent_day = self.spend_day.get((d.campaign_id, day), 0)
        spent_life = self.spend_lifetime.get(d.campaign_id, 0)
        stats_day = (d.campaign_id, utc_day(d.order_time_ms))
        revenue = self.revenue_day.get(stats_day, 0)
        result = apply_caps(d.price_minor, campaign.budget, spent_day, spent_life)
        if max(
            spent_day + result.charge_minor, spent_life + result.charge_minor, revenue + d.amount_minor
        ) > (MAX_COUNTER_MINOR):
            self.refused.append(action.order_id)
            return
        self.spend_day[(d.campaign_id, day)] = spent_day + result.charge_minor
        self.spend_lifetime[d.campaign_id] = spent_life + result.charge_minor
        self.revenue_day[stats_day] = revenue + d.amount_minor
        self.charged[action.order_id] = _Charged(d, result.charge_minor, day)
        self._entry("charge", d, action.due_ms, result.charge_minor, result.capped, day)

    def _cancel(self, action: SettlementAction) -> None:
        record = self.charged.get(action.order_id)
        if record is None:
            self.cancelled.add(action.order_id)
            return
        if record.refunded:
            return
        record.refunded = True
        d = record.decision
        # A restored book may lack a closed day (see ``snapshot``): nothing reads it any more.
        key = (d.campaign_id, record.day)
        self.spend_day[key] = self.spend_day.get(key, 0) - record.charge
        self.spend_lifetime[d.campaign_id] = self.spend_lifetime.get(d.campaign_id, 0) - record.charge
        stats = (d.campaign_id, utc_day(d.order_time_ms))
        self.revenue_day[stats] = self.revenue_day.get(stats, 0) - d.amount_minor
        self._entry("refund", d, action.due_ms, -record.charge, False, record.day)


def settle_events(
    events: Iterable[Event], catalog: Catalog, policy: AttributionPolicy
) -> tuple[ChargeBook, dict[str, Decision | None]]:
    """Decide and settle a whole set of events in one process, with every touch known.

    The reference both layers must agree with: each order (the first event of
    its order id) is decided by ``attribute_order`` over all of its user's
    touches, its cancel is the earliest one inside its cancel window (``cancel_counts``, then
    ``cancel_rank``), then
    decisions and cancels are settled in ``action_key`` order.
    Returns the book and the decision of every order (``None``: organic).
    """
    touches: dict[str, list[Touch]] = {}
    orders: dict[str, Order] = {}
    cancels: dict[str, list[OrderCancel]] = {}
    seen_touch: set[str] = set()
    for event in events:
        if isinstance(event, Order):
            orders.setdefault(event.order_id, event)
        elif isinstance(event, OrderCancel):
            cancels.setdefault(event.order_id, []).append(event)
        else:
            touch = touch_from_event(event)
            if touch is not None and touch.event_id not in seen_touch:
                seen_touch.add(touch.event_id)
                touches.setdefault(touch.user_id, []).append(touch)
    lateness = policy.allowed_lateness_ms
    decisions: dict[str, Decision | None] = {}
    actions: list[SettlementAction] = []
    for order in orders.values():
        decision = attribute_order(order, touches.get(order.user_id, ()), catalog, policy)
        decisions[order.order_id] = decision
        actions.append(SettlementAction(order.event_time + lateness, "decide", order.order_id, decision))
    lookback, horizon = policy.lookback_days(catalog), policy.cancel_horizon_days
    for order_id, copies in cancels.items():
        named = orders.get(order_id)
        counting = [
            c
            for c in copies
            if named is None or cancel_counts(named.event_time, c.event_time, lookback, horizon)
        ]
        if counting:
            first = min(counting, key=cancel_rank)
            actions.append(SettlementAction(first.event_time + lateness, "cancel", order_id))
    book = ChargeBook(catalog)
    book.settle(actions)
    return book, decisions
