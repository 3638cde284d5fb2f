"""Settlement: charging decided orders and refunding cancelled ones, in order.

Both layers settle the same sequence of actions. An order is decided, and a
cancel takes effect, once the allowed lateness has passed after its event
time; actions run in ``action_key`` order (due time, then decisions before
cancels, then order id). Given the same actions, the result is the same however
they were batched, replayed or interrupted.

``ChargeBook`` is the specification. The speed layer runs the same steps in
Redis Lua scripts (they must be atomic there); a property test feeds random
action sequences through both and demands identical ledgers and spend.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from shared_logic.budget import apply_caps, budget_day
from shared_logic.campaigns import Catalog
from shared_logic.events import Event, Order, OrderCancel
from shared_logic.policy import AttributionPolicy
from shared_logic.rules import Decision, Touch, attribute_order, touch_from_event

ActionKind = Literal["decide", "cancel"]
LedgerKind = Literal["charge", "cancelled", "refund"]
_KIND_RANK = {"decide": 0, "cancel": 1}


def action_key(due_ms: int, kind: ActionKind, order_id: str) -> tuple[int, int, str]:
    """Total order of settlement actions, shared by both layers."""
    return (due_ms, _KIND_RANK[kind], order_id)


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


@dataclass(slots=True)
class _Charged:
    decision: Decision
    charge: int
    day: str
    refunded: bool = False


@dataclass(slots=True)
class ChargeBook:
    """In-memory settlement of one stream of actions against the catalog's caps."""

    catalog: Catalog
    spend_day: dict[tuple[str, str], int] = field(default_factory=dict)
    spend_lifetime: dict[str, int] = field(default_factory=dict)
    charged: dict[str, _Charged] = field(default_factory=dict)
    cancelled: set[str] = field(default_factory=set)
    ledger: list[LedgerEntry] = field(default_factory=list)

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
        self.ledger.append(
            LedgerEntry(
                kind,
                d.order_id,
                d.campaign_id,
                d.advertiser_id,
                str(d.lever),
                d.user_id,
                d.order_time_ms,
                due,
                d.amount_minor,
                d.currency,
                d.price_minor,
                charge,
                capped,
                day,
                d.touch_event_id,
                int(d.touch_kind),
                d.touch_time_ms,
            )
        )

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
        result = apply_caps(
            d.price_minor,
            campaign.budget,
            self.spend_day.get((d.campaign_id, day), 0),
            self.spend_lifetime.get(d.campaign_id, 0),
        )
        self.spend_day[(d.campaign_id, day)] = (
            self.spend_day.get((d.campaign_id, day), 0) + result.charge_minor
        )
        self.spend_lifetime[d.campaign_id] = self.spend_lifetime.get(d.campaign_id, 0) + result.charge_minor
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
        self.spend_day[(d.campaign_id, record.day)] -= record.charge
        self.spend_lifetime[d.campaign_id] -= record.charge
        self._entry("refund", d, action.due_ms, -record.charge, False, record.day)

    def net_spend(self) -> dict[str, int]:
        return dict(self.spend_lifetime)


def settle_events(
    events: Iterable[Event], catalog: Catalog, policy: AttributionPolicy
) -> tuple[ChargeBook, dict[str, Decision | None]]:
    """Decide and settle a whole set of events in one process, with every touch known.

    The reference both layers must agree with: each order (the first event of
    its order id) is decided by ``attribute_order`` over all of its user's
    touches, then decisions and cancels are settled in ``action_key`` order.
    Returns the book and the decision of every order (``None``: organic).
    """
    touches: dict[str, list[Touch]] = {}
    orders: dict[str, Order] = {}
    cancels: dict[str, OrderCancel] = {}
    seen_touch: set[str] = set()
    for event in events:
        if isinstance(event, Order):
            orders.setdefault(event.order_id, event)
        elif isinstance(event, OrderCancel):
            cancels.setdefault(event.order_id, event)
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
    actions.extend(SettlementAction(c.event_time + lateness, "cancel", c.order_id) for c in cancels.values())
    book = ChargeBook(catalog)
    book.settle(actions)
    return book, decisions
