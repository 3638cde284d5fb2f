"""Money is an integer of minor units with an ISO 4217 currency, never a float."""

from __future__ import annotations

from functools import lru_cache
from typing import Final

from iso4217 import Currency

# Bounds that keep every sum of money exact, in Python and in the speed layer's Lua (whose
# numbers are doubles, exact up to 2**53):
#: One order's value, one fixed fee: below a thousand billion minor units (10 billion USD).
MAX_AMOUNT_MINOR: Final = 10**12
#: Every money counter (a campaign's spend of a budget day, its lifetime spend, its revenue of a
#: UTC day) and every cap: at most 2**53 - 1 minor units, so at least 9,007 orders a day at the
#: per-order maximum. A settlement that would pass it is refused before anything is written.
MAX_COUNTER_MINOR: Final = 2**53 - 1


@lru_cache(maxsize=512)
def currency_exponent(code: str) -> int:
    """Number of decimal places of the currency's minor unit (USD 2, JPY 0, BHD 3).

    Raises ``ValueError`` for a code that is not ISO 4217 or has no minor unit
    (gold, SDR, testing codes), since money can't be counted in those here.
    """
    if not isinstance(code, str) or len(code) != 3 or not code.isupper():
        raise ValueError("must be a three-letter upper-case ISO 4217 code")
    try:
        currency = Currency(code)
    except ValueError:
        raise ValueError("is not an ISO 4217 currency code") from None
    exponent = currency.exponent
    if exponent is None:
        raise ValueError("is an ISO 4217 code without a minor unit")
    return int(exponent)


def format_minor(amount_minor: int, currency: str) -> str:
    """Human form of an amount, e.g. ``format_minor(12345, "USD") == "123.45 USD"``."""
    exponent = currency_exponent(currency)
    sign = "-" if amount_minor < 0 else ""
    whole, frac = divmod(abs(amount_minor), 10**exponent)
    if exponent == 0:
        return f"{sign}{whole:,} {currency}"
    return f"{sign}{whole:,}.{frac:0{exponent}d} {currency}"


def caps_left(
    daily_cap_minor: int | None,
    lifetime_cap_minor: int | None,
    spent_day_minor: int,
    spent_lifetime_minor: int,
) -> int | None:
    """What a campaign's daily and lifetime caps leave of real spend, never below 0 (None without a
    cap): the one rule the budget state, the ad server's answer and the pacing controller read."""
    if daily_cap_minor is None:
        if lifetime_cap_minor is None:
            return None
        left = lifetime_cap_minor - spent_lifetime_minor
    elif lifetime_cap_minor is None:
        left = daily_cap_minor - spent_day_minor
    else:
        left = min(daily_cap_minor - spent_day_minor, lifetime_cap_minor - spent_lifetime_minor)
    return left if left > 0 else 0
