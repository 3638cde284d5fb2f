"""The speed layer's daily view per campaign (what the API merges with batch days).

Orders, revenue and spend come from each campaign's stats in its budget shard
(moved by the charge and refund scripts); impressions, clicks and promo views
from the counters of every user bucket, summed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis

from realtime.keys import Keys
from shared_logic import Catalog


async def speed_view(
    redis: Redis, keys: Keys, catalog: Catalog, days: Sequence[str], campaign_ids: Sequence[str]
) -> list[dict[str, Any]]:
    """One row per (day, campaign) with any activity; days are UTC ``YYYY-MM-DD``."""
    if not days or not campaign_ids:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for day in days:
            for bucket in range(keys.user_buckets):
                pipe.hgetall(keys.counts(bucket, day))
            for cid in campaign_ids:
                pipe.hgetall(keys.stats(cid, day))
        results = await pipe.execute()
    rows = []
    i = 0
    wanted = set(campaign_ids)
    for day in days:
        counts: dict[str, dict[str, int]] = {}
        for _ in range(keys.user_buckets):
            for field, n in results[i].items():
                cid, name = field.decode().split("|", 1)
                if cid in wanted:
                    slot = counts.setdefault(cid, {})
                    slot[name] = slot.get(name, 0) + int(n)
            i += 1
        for cid in campaign_ids:
            stats = {k.decode(): int(v) for k, v in results[i].items()}
            i += 1
            c = counts.get(cid, {})
            if not stats and not c:
                continue
            campaign = catalog.get(cid)
            assert campaign is not None
            spend = stats.get("spend", 0)
            revenue = stats.get("revenue", 0)
            rows.append(
                {
                    "dt": day,
                    "campaign_id": cid,
                    "advertiser_id": campaign.advertiser_id,
                    "lever": str(campaign.lever),
                    "currency": campaign.currency,
                    "model": "billing",
                    "impressions": c.get("impressions", 0),
                    "clicks": c.get("clicks", 0),
                    "promo_views": c.get("promo_views", 0),
                    "orders": float(stats.get("orders", 0)),
                    "revenue_minor": float(revenue),
                    "spend_minor": spend,
                    "capped_orders": stats.get("capped_orders", 0),
                    "roas": revenue / spend if spend > 0 else None,
                }
            )
    return rows
