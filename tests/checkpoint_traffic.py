"""A small, seeded lake for the checkpoint tests: days of traffic on a few campaigns whose
lifetime caps bind from the third or fourth day, in time zones from UTC-11 to UTC+14, with short
windows and a short cancel horizon (so a night reads few days), cancels before and after their
orders (some beyond the horizon, some twice, some landed late), duplicates, and events dated in
the future."""

from __future__ import annotations

import random
from datetime import date
from typing import Any

from shared_logic import Catalog
from shared_logic.settings import Settings
from shared_logic.timeutil import MS_PER_DAY, MS_PER_HOUR, utc_day_bounds_ms

MIN = 60_000
START = date(2026, 11, 1)
CATALOG = Catalog.from_records(
    [
        {
            "campaign_id": "ad1",
            "advertiser_id": "adv1",
            "lever": "ad",
            "merchant_ids": ["m1"],
            "currency": "USD",
            "pricing": {"model": "fixed", "fee_minor": 300},
            "budget": {"daily_minor": 1_500, "lifetime_minor": 1_900, "timezone": "Pacific/Kiritimati"},
            "windows": {"click_ms": MS_PER_DAY, "view_ms": 6 * MS_PER_HOUR},
        },
        {
            "campaign_id": "ad2",
            "advertiser_id": "adv1",
            "lever": "ad",
            "merchant_ids": ["m1", "m2"],
            "currency": "USD",
            "pricing": {"model": "bps", "bps": 1_000},
            "budget": {"daily_minor": 2_500, "lifetime_minor": 7_700, "timezone": "Pacific/Pago_Pago"},
            "windows": {"click_ms": MS_PER_DAY, "view_ms": 6 * MS_PER_HOUR},
        },
        {
            "campaign_id": "ad3",
            "advertiser_id": "adv2",
            "lever": "ad",
            "merchant_ids": ["m2"],
            "currency": "USD",
            "pricing": {"model": "fixed", "fee_minor": 200},
            "budget": {"lifetime_minor": 1_500, "timezone": "UTC"},
            "windows": {"click_ms": MS_PER_DAY, "view_ms": 6 * MS_PER_HOUR},
        },
        {
            "campaign_id": "pr1",
            "advertiser_id": "adv2",
            "lever": "promo",
            "merchant_ids": ["m3"],
            "promo_codes": ["SAVE1"],
            "currency": "USD",
            "pricing": {"model": "fixed", "fee_minor": 150},
            "budget": {"daily_minor": 600, "lifetime_minor": 800, "timezone": "America/New_York"},
            "windows": {"click_ms": MS_PER_DAY, "view_ms": 6 * MS_PER_HOUR},
        },
    ]
)
MERCHANTS = {"ad1": "m1", "ad2": "m2", "ad3": "m2", "pr1": "m3"}


def settings(**changes: Any) -> Settings:
    """Two-day cancel horizon, default windows as short as the campaigns' own (a day for clicks,
    6 hours for views: the look-back is 2 days instead of the defaults' 8), a few models (one
    data-driven), everything else as deployed."""
    return Settings().replace(
        rules_cancel_horizon_days=2,
        rules_default_click_window_ms=MS_PER_DAY,
        rules_default_view_window_ms=6 * MS_PER_HOUR,
        batch_models=("last_touch", "markov"),
        **changes,
    )


def deliveries(days: int, users_per_day: int = 10, seed: int = 11) -> list[tuple[dict[str, Any], int]]:
    """``(payload, arrival ms)`` pairs of ``days`` days from ``START``."""
    rng = random.Random(seed)
    out: list[tuple[dict[str, Any], int]] = []
    n = 0

    def eid(prefix: str) -> str:
        nonlocal n
        n += 1
        return f"{prefix}{n:06d}"

    def add(payload: dict[str, Any], arrival: int) -> None:
        out.append((payload, arrival))
        if rng.random() < 0.08:  # a redelivery of the same event
            out.append((payload, arrival + rng.randint(1_000, 30_000)))

    for d in range(days):
        day0 = utc_day_bounds_ms(START)[0] + d * MS_PER_DAY
        for user in rng.sample(range(40), users_per_day):
            uid = f"u{user:02d}"
            for _ in range(rng.randint(1, 3)):
                cid = rng.choice(("ad1", "ad2", "ad3", "pr1"))
                t = day0 + rng.randrange(MS_PER_DAY)
                kind = "promo_view" if cid == "pr1" else rng.choice(("impression", "click", "click"))
                touch = {"event_id": eid("t"), "event_type": kind, "event_time": t, "user_id": uid}
                touch["campaign_id"] = cid
                add(touch, t + rng.randint(0, 2_000))
                if rng.random() < 0.75:
                    ot = t + rng.randint(MIN, 20 * MS_PER_HOUR)
                    codes = ["SAVE1"] if cid == "pr1" and rng.random() < 0.5 else []
                    order_id = eid("o")
                    order = {
                        "event_id": eid("e"),
                        "event_type": "order",
                        "event_time": ot,
                        "user_id": uid,
                        "order_id": order_id,
                        "merchant_id": MERCHANTS[cid],
                        "amount_minor": rng.randint(1_000, 20_000),
                        "currency": "USD",
                        "promo_codes": codes,
                    }
                    add(order, ot + rng.randint(0, 2_000))
                    if rng.random() < 0.3:
                        # Mostly after the order, up to past the two-day horizon; a few before it.
                        ct = ot + (
                            -rng.randint(MIN, 3 * MS_PER_HOUR)
                            if rng.random() < 0.1
                            else rng.randint(MIN, 3 * MS_PER_DAY)
                        )
                        late = rng.random() < 0.2  # landed hours after it happened
                        cancel = {"event_type": "order_cancel", "user_id": uid, "order_id": order_id}
                        add(
                            {**cancel, "event_id": eid("x"), "event_time": ct},
                            ct + (rng.randint(2, 20) * MS_PER_HOUR if late else rng.randint(0, 2_000)),
                        )
                        if rng.random() < 0.2:  # a second cancel of the same order, another event
                            ct2 = ct + rng.randint(-MS_PER_HOUR, MS_PER_HOUR)
                            add(
                                {**cancel, "event_id": eid("x"), "event_time": ct2},
                                ct2 + rng.randint(0, 5_000),
                            )
            if rng.random() < 0.3:  # an organic order
                ot = day0 + rng.randrange(MS_PER_DAY)
                organic = {
                    "event_id": eid("e"),
                    "event_type": "order",
                    "event_time": ot,
                    "user_id": uid,
                    "order_id": eid("o"),
                    "merchant_id": "m9",
                    "amount_minor": 5_000,
                    "currency": "USD",
                }
                add(organic, ot)
    return out
