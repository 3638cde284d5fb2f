"""Budget maths: cutting a charge to the caps, and the budget day of an instant.

``apply_caps`` is the specification of the charging step. The speed layer runs
the same arithmetic inside one Redis Lua script (atomicity needs it there); a
property test drives both with the same inputs and demands equal results.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from shared_logic.campaigns import Budget


@dataclass(frozen=True, slots=True)
class CapResult:
    """Outcome of charging one order against a campaign's caps."""

    charge_minor: int
    capped: bool
    daily_exhausted: bool
    lifetime_exhausted: bool

    @property
    def exhausted(self) -> bool:
        return self.daily_exhausted or self.lifetime_exhausted


def apply_caps(
    price_minor: int, budget: Budget, spent_day_minor: int, spent_lifetime_minor: int
) -> CapResult:
    """Cut ``price_minor`` to what is left of the daily and lifetime caps.

    The charge is ``min(price, daily left, lifetime left)`` and never negative,
    so spend can never pass a cap. ``capped`` says the charge was cut below the
    price; the exhaustion flags say a cap is fully spent after this charge.
    """
    if price_minor < 0:
        raise ValueError(f"price_minor = {price_minor}: must not be negative")
    charge = price_minor
    if budget.daily_minor is not None:
        charge = min(charge, max(budget.daily_minor - spent_day_minor, 0))
    if budget.lifetime_minor is not None:
        charge = min(charge, max(budget.lifetime_minor - spent_lifetime_minor, 0))
    daily_exhausted = budget.daily_minor is not None and spent_day_minor + charge >= budget.daily_minor
    lifetime_exhausted = (
        budget.lifetime_minor is not None and spent_lifetime_minor + charge >= budget.lifetime_minor
    )
    return CapResult(charge, charge < price_minor, daily_exhausted, lifetime_exhausted)


@lru_cache(maxsize=256)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def budget_day(time_ms: int, timezone: str) -> date:
    """The local calendar day of an instant in the campaign's time zone."""
    return datetime.fromtimestamp(time_ms / 1000, tz=_zone(timezone)).date()


def day_bounds_ms(day: date, timezone: str) -> tuple[int, int]:
    """Start (inclusive) and end (exclusive) of a local day in epoch ms.

    DST-safe: a spring-forward day lasts 23 hours and a fall-back day 25, since
    both ends are local midnights converted through the zone's rules.
    """
    zone = _zone(timezone)
    start = datetime.combine(day, time(0), tzinfo=zone)
    end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=zone)
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000)
