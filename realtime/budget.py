"""Real-time budget state for the ad server, read straight from Redis."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from realtime.errors import UnknownCampaign
from realtime.keys import Keys
from shared_logic import Catalog, budget_day, day_bounds_ms
from shared_logic.money import caps_left
from shared_logic.pacing import PACING_FIELDS, PacingConfig, decode_state, published_probability


@dataclass(frozen=True, slots=True)
class BudgetState:
    """What an ad server needs before serving a campaign.

    ``pacing`` is the share of the daily cap spent divided by the share of the
    budget day elapsed: 1.0 is on schedule, above it ahead of schedule (None
    without a daily cap). ``serve_probability`` is what the pacing controller
    publishes for serving the campaign now (``shared_logic.pacing``; 0 once
    exhausted), ``liability_minor`` the in-flight liability its last step
    counted today (None before one), ``delivery`` the campaign's delivery mode,
    ``frequency_cap_impressions`` per ``frequency_cap_window_ms`` its frequency cap.
    """

    campaign_id: str
    advertiser_id: str
    currency: str
    budget_day: str
    spend_day_minor: int
    spend_lifetime_minor: int
    daily_cap_minor: int | None
    lifetime_cap_minor: int | None
    remaining_minor: int | None
    exhausted: bool
    day_elapsed: float
    pacing: float | None
    serve_probability: float = 1.0
    liability_minor: float | None = None
    delivery: str = "asap"
    frequency_cap_impressions: int | None = None
    frequency_cap_window_ms: int | None = None


class BudgetReader:
    """Reads spend for many campaigns in one pipelined round trip."""

    def __init__(self, redis: Any, catalog: Catalog, keys: Keys, pacing: PacingConfig | None = None) -> None:
        self.redis, self.catalog, self.keys = redis, catalog, keys
        self.pacing = pacing or PacingConfig()

    async def states(self, campaign_ids: Sequence[str], now_ms: int) -> list[BudgetState]:
        campaigns = []
        for cid in campaign_ids:
            c = self.catalog.get(cid)
            if c is None:
                raise UnknownCampaign(cid)
            campaigns.append(c)
        days = [budget_day(now_ms, c.budget.timezone) for c in campaigns]
        async with self.redis.pipeline(transaction=False) as pipe:
            for c, day in zip(campaigns, days, strict=True):
                pipe.get(self.keys.spend_day(c.campaign_id, day.isoformat()))
                pipe.get(self.keys.spend_lifetime(c.campaign_id))
                pipe.hmget(self.keys.pacing(c.campaign_id), list(PACING_FIELDS))
            raw = await pipe.execute()
        out = []
        for i, (c, day) in enumerate(zip(campaigns, days, strict=True)):
            spent_day = int(raw[3 * i] or 0)
            spent_life = int(raw[3 * i + 1] or 0)
            state = decode_state(raw[3 * i + 2])
            b = c.budget
            remaining = caps_left(b.daily_minor, b.lifetime_minor, spent_day, spent_life)
            start, end = day_bounds_ms(day, b.timezone)
            elapsed = min(max((now_ms - start) / (end - start), 0.0), 1.0)
            pacing = None
            if b.daily_minor is not None and elapsed > 0:
                pacing = (spent_day / b.daily_minor) / elapsed
            today = state if state is not None and state.day == day.isoformat() else None
            mode = b.delivery_mode
            fc = c.frequency_cap
            out.append(
                BudgetState(
                    c.campaign_id,
                    c.advertiser_id,
                    c.currency,
                    day.isoformat(),
                    spent_day,
                    spent_life,
                    b.daily_minor,
                    b.lifetime_minor,
                    remaining,
                    remaining == 0,
                    round(elapsed, 6),
                    None if pacing is None else round(pacing, 6),
                    0.0
                    if remaining == 0
                    else published_probability(
                        today, day.isoformat(), remaining is not None, mode, self.pacing
                    ),
                    None if today is None else today.liability_minor,
                    mode.value,
                    None if fc is None else fc.impressions,
                    None if fc is None else fc.window_ms,
                )
            )
        return out
