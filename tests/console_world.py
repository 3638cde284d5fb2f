"""A world for the console's tests: three days of synthetic traffic landed and replayed, two
batch days loaded and reconciled, keys of every role; what ``tests/e2e/test_api.py`` builds,
plus the reconciliation."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from devtools.synthetic import SyntheticConfig, Traffic, generate
from shared_logic.settings import Settings
from storage.lake import Lake
from tests.helpers import UNTHROTTLED, land_and_replay

FIRST = datetime.now(UTC).date() - timedelta(days=4)
CONFIG = SyntheticConfig(users=400, days=3, seed=23, start=FIRST)
DAYS = [(FIRST + timedelta(days=i)).isoformat() for i in range(3)]


@dataclass
class World:
    folder: Path
    lake: Lake
    traffic: Traffic
    catalog_path: Path
    keys_path: Path
    keys: dict[str, str]
    redis_url: str

    def settings(self) -> Settings:
        return Settings().replace(
            redis_url=self.redis_url,
            lake_url=self.lake.url,
            catalog_url=str(self.catalog_path),
            api_keys_path=str(self.keys_path),
            keys_user_buckets=16,
            api_rate_limit=False,
        )

    def env(self, base: dict[str, str]) -> dict[str, str]:
        return {
            **base,
            "ATTRIBUTION_LAKE_URL": self.lake.url,
            "ATTRIBUTION_CATALOG_URL": str(self.catalog_path),
            "ATTRIBUTION_API_KEYS_PATH": str(self.keys_path),
            "ATTRIBUTION_REDIS_URL": self.redis_url,
            "ATTRIBUTION_KEYS_USER_BUCKETS": "16",
            **UNTHROTTLED,
        }

    def campaigns_of(self, advertiser: str) -> list[str]:
        return sorted(c.campaign_id for c in self.traffic.catalog.advertiser_campaigns(advertiser))


def build_world(folder: Path, redis_url: str, spark: Any) -> World:
    import redis

    from batch.job import run_day
    from batch.reconcile import reconcile_day
    from reporting.auth import add_key

    redis.Redis.from_url(redis_url).flushall()
    traffic = generate(CONFIG)
    lake, _, catalog = land_and_replay(folder, traffic, redis_url, keys_user_buckets=16)
    for day in DAYS[:2]:  # the batch view covers two days; the third is the speed layer's
        run_day(spark, lake, traffic.catalog, date.fromisoformat(day), Settings())
        reconcile_day(spark, lake, traffic.catalog, date.fromisoformat(day), Settings())
    keys_path = folder / "keys.yaml"
    keys = {
        "admin": add_key(keys_path, "ops", "admin"),
        "adv00": add_key(keys_path, "a0", "advertiser", "adv00"),
        "adv01": add_key(keys_path, "a1", "advertiser", "adv01"),
        "ads": add_key(keys_path, "ad server", "ad_server"),
    }
    return World(folder, lake, traffic, catalog, keys_path, keys, redis_url)
