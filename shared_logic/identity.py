"""What makes two events the same event, two orders the same order, and a cancel the cancel of an
order: one rule that landing, the speed layer and the nightly job apply alike.

- **A touch** (impression, click, promo view) is named by its user and event id,
  ``(user_id, event_id)``. Two copies with the same fields (``digest``) are one event: a
  redelivery changes nothing anywhere, counters included. Copies with different fields
  conflict: the copy of least ``rank`` (earliest event time, then least digest) stands and every
  other copy is refused (field ``event_id``, ``TOUCH_CONFLICT_RULE``). Another user's event with
  the same id is another event: ids come from many producers, and two users' impressions are
  never one impression.
- **An order** is named by its ``order_id``, whoever the user. Order events with the same id and
  the same fields are one order; otherwise the order event of least ``rank`` (earliest event
  time, then least event id, then least digest) stands and the others are refused (field
  ``order_id``, ``ORDER_CONFLICT_RULE``).
- **A cancel** cancels the order with its ``order_id``, whatever the cancel's ``user_id``.

The rule does not depend on which copy arrives first, so neither does any layer's outcome: a
copy that arrives later and ranks lower replaces the standing one (the speed layer moves its
touch and its count, or its pending order) unless the standing one was already used by a
released order, which only a copy arriving after its own allowed lateness can find (late data,
labelled by the reconciliation).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Final

from shared_logic.events import (
    TRAFFIC_FIELDS,
    Click,
    Event,
    Impression,
    Order,
    OrderCancel,
    PromoView,
    event_to_dict,
)

TOUCH_CONFLICT_RULE: Final = (
    "conflicts with another copy of this event (same user_id and event_id, other fields): "
    "the copy with the earliest event_time, then the least digest, stands"
)
ORDER_CONFLICT_RULE: Final = (
    "names another order (another event with this order_id): the order with the earliest "
    "event_time, then the least event_id, stands"
)

#: A rank: (event time, event id, digest); the least copy stands.
Rank = tuple[int, str, str]


def digest_of(fields: dict[str, Any]) -> str:
    """The digest of an event's wire fields (``event_to_dict``): 16 hex digits, equal exactly
    when the fields are (times as epoch ms, so a copy sent as RFC 3339 equals one in ms). An absent
    traffic field (``TRAFFIC_FIELDS``) is left out: events from before those fields keep their
    digest."""
    if any(fields.get(name, 0) is None for name in TRAFFIC_FIELDS):
        fields = {k: v for k, v in fields.items() if not (v is None and k in TRAFFIC_FIELDS)}
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def digest(event: Event) -> str:
    """The digest of an event's fields (see ``digest_of``)."""
    return digest_of(event_to_dict(event))


#: Each event type's wire fields, in ``event_to_dict`` order.
_FIELDS: Final = {
    cls.__dataclass_fields__["event_type"].default: tuple(cls.__dataclass_fields__)
    for cls in (Impression, Click, PromoView, Order, OrderCancel)
}
_INTS: Final = frozenset({"event_time", "amount_minor"})


def row_digest(row: Mapping[str, Any]) -> str:
    """``digest`` of an event held as a row (a raw row of the lake: every type's columns, unused
    ones null), equal to the digest of the event the row was landed from."""
    return digest_of(row_fields(row))


def row_fields(row: Mapping[str, Any]) -> dict[str, Any]:
    """The wire fields (``event_to_dict``) of the event a raw row holds, as plain values."""
    fields: dict[str, Any] = {}
    for name in _FIELDS[row["event_type"]]:
        value: Any = row.get(name)
        if name in _INTS:
            value = int(value)
        elif name == "promo_codes":
            value = [] if value is None else [str(c) for c in value]
        fields[name] = value
    return fields


def rank(event_time: int, event_id: str, event_digest: str) -> Rank:
    """The order copies compete in: the least stands."""
    return (event_time, event_id, event_digest)


def stands(candidate: Rank, standing: Rank) -> bool:
    """Whether a candidate copy replaces the standing one (it ranks lower); equal ranks are one
    event (the same digest), and the standing copy stays."""
    return candidate < standing
