"""Small builders for test data: campaigns, orders and touches."""

from __future__ import annotations

from typing import Any

from shared_logic import Campaign, Catalog, Order, Touch, TouchKind

T0 = 1_793_500_000_000  # 2026-11-01T01:06:40Z
MIN = 60_000
HOUR = 3_600_000
DAY = 86_400_000


def campaign(cid: str = "ad1", **over: Any) -> Campaign:
    record: dict[str, Any] = {
        "campaign_id": cid,
        "advertiser_id": "adv1",
        "lever": "ad",
        "merchant_ids": ["m1"],
        "currency": "USD",
        "pricing": {"model": "fixed", "fee_minor": 100},
    }
    record.update(over)
    return Campaign.parse(record)


def promo(cid: str = "pr1", codes: tuple[str, ...] = ("SAVE",), **over: Any) -> Campaign:
    return campaign(cid, lever="promo", promo_codes=list(codes), **over)


def catalog(*campaigns: Campaign) -> Catalog:
    return Catalog(campaigns)


def order(t: int = T0, user: str = "u1", merchant: str = "m1", amount: int = 5_000, **over: Any) -> Order:
    fields: dict[str, Any] = {
        "event_id": "eo1",
        "event_time": t,
        "user_id": user,
        "order_id": "o1",
        "merchant_id": merchant,
        "amount_minor": amount,
        "currency": "USD",
    }
    fields.update(over)
    if "promo_codes" in fields:
        fields["promo_codes"] = tuple(fields["promo_codes"])
    return Order(**fields)


def touch(eid: str, cid: str, kind: TouchKind, t: int, user: str = "u1") -> Touch:
    return Touch(eid, user, cid, kind, t)
