"""Pure attribution rules shared by the speed layer and the batch layer.

Nothing in this package does I/O or imports another package of the project:
Faust agents call these functions per event, Spark calls the very same ones
inside ``applyInPandas``, so the two layers cannot drift apart.
"""

from shared_logic.budget import CapResult, apply_caps, budget_day, day_bounds_ms
from shared_logic.campaigns import Budget, Campaign, Catalog, Lever, Pricing, Windows
from shared_logic.errors import AttributionError, InvalidCampaign, InvalidEvent
from shared_logic.events import (
    Click,
    Event,
    Impression,
    Order,
    OrderCancel,
    PromoView,
    parse_event,
)
from shared_logic.money import currency_exponent, format_minor
from shared_logic.policy import AttributionPolicy
from shared_logic.pricing import price_order
from shared_logic.rules import Decision, Touch, TouchKind, attribute_order, touch_from_event

__all__ = [
    "AttributionError",
    "AttributionPolicy",
    "Budget",
    "Campaign",
    "CapResult",
    "Catalog",
    "Click",
    "Decision",
    "Event",
    "Impression",
    "InvalidCampaign",
    "InvalidEvent",
    "Lever",
    "Order",
    "OrderCancel",
    "Pricing",
    "PromoView",
    "Touch",
    "TouchKind",
    "Windows",
    "apply_caps",
    "attribute_order",
    "budget_day",
    "currency_exponent",
    "day_bounds_ms",
    "format_minor",
    "parse_event",
    "price_order",
    "touch_from_event",
]
