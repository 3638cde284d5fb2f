"""Redis key layout. Every key carries a hash tag, so each script's keys share one slot.

User state (touches, touch ids, counts) lives in user buckets ``{uN}``: all of
one user's keys, and the keys of every user of the bucket, hash to one Redis
Cluster slot, so a batch of events for a bucket is one script call. Orders and
cancels (pending actions, claims, cancel markers) live in the bucket of their
order id (``bucket(order_id)``): an order is named by its id whoever the user.
Budget state (charges, spend, stats, exhaustion, the ledger and the
``budget-events`` stream) lives in budget shards ``{bN}``.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from shared_logic.settings import KeySettings


@dataclass(frozen=True, slots=True)
class Keys:
    """Key builder for one layout (``KeySettings``: the section writers and readers share)."""

    prefix: str
    user_buckets: int
    budget_shards: int

    @classmethod
    def of(cls, section: KeySettings) -> Keys:
        return cls(section.prefix, section.user_buckets, section.budget_shards)

    def bucket(self, user_id: str) -> int:
        return zlib.crc32(user_id.encode()) % self.user_buckets

    def shard(self, campaign_id: str) -> int:
        return zlib.crc32(campaign_id.encode()) % self.budget_shards

    # user bucket
    def _u(self, bucket: int) -> str:
        return f"{self.prefix}:{{u{bucket}}}"

    def touches(self, user_id: str) -> str:
        return self.touches_in(self.bucket(user_id), user_id)

    def touches_in(self, bucket: int, user_id: str) -> str:
        """``touches`` when the user's bucket is known already (the hot path)."""
        return f"{self.prefix}:{{u{bucket}}}:t:{user_id}"

    def touch_ids_in(self, bucket: int, user_id: str) -> str:
        """A user's touches by event id (the identity rule's lookup: ``touch_ids``)."""
        return f"{self.prefix}:{{u{bucket}}}:ti:{user_id}"

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

    def queue(self, shard: int) -> str:
        """Released actions waiting for the settlement bound, scored by release time."""
        return f"{self._b(shard)}:queue"

    def queue_payloads(self, shard: int) -> str:
        return f"{self._b(shard)}:queue:p"

    def budget_events(self, shard: int) -> str:
        return f"{self._b(shard)}:budget-events"

    # global (not touched by scripts)
    def clocks(self) -> str:
        """Each input partition's checkpoint: ``<next offset>|<watermark>``."""
        return f"{self.prefix}:clocks"

    def ivt(self, day: str) -> str:
        """The invalid-traffic verdicts of a UTC day (``contract.ivt_field`` -> ``IvtRow`` JSON)."""
        return f"{self.prefix}:ivt:{day}"

    def dead_letters(self) -> str:
        """The dead-letter stream of the embedded default (``redis://`` sink)."""
        return f"{self.prefix}:dead-letters"
