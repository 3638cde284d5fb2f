"""Redis key layout. Every key carries a hash tag, so each script's keys share one slot.

User state (touches, pending actions, claims, cancel markers, counts) lives in
user buckets ``{uN}``: all of one user's keys, and the keys of every user of the
bucket, hash to one Redis Cluster slot, so a batch of events for a bucket is
one script call. Budget state (charges, spend, stats, exhaustion, the ledger and
the ``budget-events`` stream) lives in budget shards ``{bN}``.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Keys:
    """Key builder for one prefix and one layout of buckets and shards."""

    prefix: str = "attr"
    user_buckets: int = 256
    budget_shards: int = 1

    def bucket(self, user_id: str) -> int:
        return zlib.crc32(user_id.encode()) % self.user_buckets

    def shard(self, campaign_id: str) -> int:
        return zlib.crc32(campaign_id.encode()) % self.budget_shards

    # user bucket
    def _u(self, bucket: int) -> str:
        return f"{self.prefix}:{{u{bucket}}}"

    def touches(self, user_id: str) -> str:
        return f"{self._u(self.bucket(user_id))}:t:{user_id}"

    def pending(self, bucket: int) -> str:
        return f"{self._u(bucket)}:pending"

    def claim(self, bucket: int, order_id: str) -> str:
        return f"{self._u(bucket)}:d:{order_id}"

    def cancel_marker(self, bucket: int, order_id: str) -> str:
        return f"{self._u(bucket)}:x:{order_id}"

    def counts(self, bucket: int, day: str) -> str:
        return f"{self._u(bucket)}:n:{day}"

    # budget shard
    def _b(self, shard: int) -> str:
        return f"{self.prefix}:{{b{shard}}}"

    def charge(self, campaign_id: str, order_id: str) -> str:
        return f"{self._b(self.shard(campaign_id))}:ch:{order_id}"

    def spend_day(self, campaign_id: str, day: str) -> str:
        return f"{self._b(self.shard(campaign_id))}:spend:{campaign_id}:d:{day}"

    def spend_lifetime(self, campaign_id: str) -> str:
        return f"{self._b(self.shard(campaign_id))}:spend:{campaign_id}:life"

    def stats(self, campaign_id: str, day: str) -> str:
        return f"{self._b(self.shard(campaign_id))}:stats:{campaign_id}:{day}"

    def exhausted(self, shard: int) -> str:
        return f"{self._b(shard)}:exhausted"

    def ledger(self, shard: int) -> str:
        return f"{self._b(shard)}:ledger"

    def ledger_flushed(self, shard: int) -> str:
        return f"{self._b(shard)}:ledger-flushed"

    def budget_events(self, shard: int) -> str:
        return f"{self._b(shard)}:budget-events"

    # global (not touched by scripts)
    def dead_letters(self) -> str:
        return f"{self.prefix}:dead-letters"
