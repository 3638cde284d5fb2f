"""The price of one attributed order, before budget caps."""

from __future__ import annotations

from shared_logic.campaigns import Pricing

BPS_DENOMINATOR = 10_000


def price_order(pricing: Pricing, amount_minor: int) -> int:
    """Charge in minor units for one attributed order of ``amount_minor``.

    Rounding rule: a share of order value (``bps``) is rounded *down* to a whole
    minor unit, so an advertiser is never charged a fraction it did not earn
    (an order of 0.99 USD at 250 bps costs 0.02 USD, not 0.03). A fixed fee is
    charged as it is, whatever the order value.
    """
    if amount_minor < 0:
        raise ValueError(f"amount_minor = {amount_minor}: must not be negative")
    if pricing.model == "fixed":
        assert pricing.fee_minor is not None  # guaranteed by Pricing's validator
        return pricing.fee_minor
    assert pricing.bps is not None
    return amount_minor * pricing.bps // BPS_DENOMINATOR
