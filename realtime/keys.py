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

import re
import zlib
from dataclasses import dataclass
from typing import Any

from shared_logic.errors import InvalidSetting
from shared_logic.settings import KeySettings

#: The version of the records' encoding (``ensure_layout`` refuses a Redis of another): 1 before
#: it was recorded, 2 since decisions are JSON arrays (``contract.decision_values``) and touch ids
#: hold their touch's score, not its member (``contract.LUA_CONTRACT["touch_ids"]``).
RECORDS_VERSION = 2
#: Keys that hold a record whose encoding changed with version 2: a Redis without a layout record
#: that holds one was filled by version 1 (touch ids, claims, queued settlements, ledger streams).
_V1_RECORDS = re.compile(r"\{u\d+\}:(ti|d):|\{b\d+\}:(queue:p|ledger)$")


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

    def trim_floor(self, bucket: int) -> str:
        """The greatest trim base the ingest script applied to the bucket's touches."""
        return f"{self._u(bucket)}:trimmed"

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
    def layout(self) -> str:
        """The layout this Redis was filled with (``describe``), written by the first worker."""
        return f"{self.prefix}:layout"

    def describe(self) -> str:
        return (
            f"records={RECORDS_VERSION} user_buckets={self.user_buckets} budget_shards={self.budget_shards}"
        )

    def clocks(self) -> str:
        """Each input partition's checkpoint: ``<next offset>|<watermark>``."""
        return f"{self.prefix}:clocks"

    def ivt(self, day: str) -> str:
        """The invalid-traffic verdicts of a UTC day (``contract.ivt_field`` -> ``IvtRow`` JSON)."""
        return f"{self.prefix}:ivt:{day}"

    def dead_letters(self) -> str:
        """The dead-letter stream of the embedded default (``redis://`` sink)."""
        return f"{self.prefix}:dead-letters"

    # pacing and frequency caps (the ad server's answer; ``serving`` reads them)
    def pacing(self, campaign_id: str) -> str:
        """The pacing controller's state of a campaign (a hash, ``PACING_FIELDS``), in its budget shard."""
        return f"{self._b(self.shard(campaign_id))}:pace:{campaign_id}"

    def published(self, campaign_id: str) -> str:
        """The published part of a campaign's pacing state (a string, ``encode_published``): what
        the ad server's answer reads, written with the hash, in its budget shard."""
        return f"{self._b(self.shard(campaign_id))}:pace-p:{campaign_id}"

    def pacing_touches(self, campaign_id: str) -> str:
        """A campaign's served touches by time group (a hash ``<group start ms>`` → count), the
        open touches the controller's in-flight liability counts, in its budget shard."""
        return f"{self._b(self.shard(campaign_id))}:pace-t:{campaign_id}"

    def frequency(self, bucket: int, user_id: str, campaign_id: str) -> str:
        """One user's impressions of one campaign (a sorted set: event id scored by time), in the
        user's bucket; trimmed to the cap and expiring with the cap's window."""
        return f"{self.prefix}:{{u{bucket}}}:f:{user_id}:{campaign_id}"


async def ensure_layout(redis: Any, keys: Keys) -> None:
    """Refuse to write to a Redis filled with another key layout, whose state this one would not
    find (a campaign's spend in another shard: caps lost; a user's touches in another bucket).

    The layout is recorded in ``keys.layout()``. A Redis filled before the record existed (the
    layout of one budget shard) is checked from its lifetime spend keys, which never expire: each
    must sit in the shard this layout gives its campaign; then the record is written."""
    recorded = await redis.get(keys.layout())
    if recorded is not None:
        version = _records_version(recorded.decode())
        if version != RECORDS_VERSION:
            raise InvalidSetting(
                "ATTRIBUTION_REDIS_URL",
                recorded.decode(),
                f"this Redis holds records of version {version}, this worker writes version "
                f"{RECORDS_VERSION} (decisions as arrays, touch ids holding scores) and would "
                "misread them: start on an empty Redis (README, Redis memory: moving to another layout)",
            )
        if recorded.decode() != keys.describe():
            raise InvalidSetting(
                "ATTRIBUTION_KEYS_BUDGET_SHARDS",
                str(keys.budget_shards),
                f"this Redis holds the layout {recorded.decode()!r}, not {keys.describe()!r}: set "
                "ATTRIBUTION_KEYS_USER_BUCKETS and ATTRIBUTION_KEYS_BUDGET_SHARDS to its values, or "
                "start on an empty Redis (README, Redis memory: moving to another layout)",
            )
        return
    life = re.compile("^" + re.escape(keys.prefix) + r":\{b(\d+)\}:spend:(.*):life$")
    shards: set[int] = set()
    misplaced = 0
    old_records: str | None = None
    start = len(keys.prefix) + 1
    async for raw in redis.scan_iter(match=f"{keys.prefix}:{{*", count=10_000):
        name = raw.decode(errors="replace")
        if old_records is None and _V1_RECORDS.match(name, start):
            old_records = name
        m = life.match(name)
        if m is None:
            continue
        shards.add(int(m.group(1)))
        misplaced += keys.shard(m.group(2)) != int(m.group(1))
    if old_records is not None:
        raise InvalidSetting(
            "ATTRIBUTION_REDIS_URL",
            old_records,
            f"this Redis holds records written before the layout was recorded (version 1), this worker "
            f"writes version {RECORDS_VERSION} (decisions as arrays, touch ids holding scores) and "
            "would misread them: start on an empty Redis (README, Redis memory: moving to another layout)",
        )
    if misplaced:
        raise InvalidSetting(
            "ATTRIBUTION_KEYS_BUDGET_SHARDS",
            str(keys.budget_shards),
            f"this Redis holds budget state of an earlier layout ({misplaced} campaigns' spend in other "
            f"shards; it used at least {max(shards) + 1}, and 1 before the default became 16): set "
            "ATTRIBUTION_KEYS_BUDGET_SHARDS to its count, or start on an empty Redis (README, Redis "
            "memory: moving to another layout)",
        )
    await redis.set(keys.layout(), keys.describe(), nx=True)


def _records_version(recorded: str) -> int:
    """The records version a layout record names (``describe``); 1 when it names none (written
    before the version was)."""
    for part in recorded.split():
        name, _, value = part.partition("=")
        if name == "records" and value.isdigit():
            return int(value)
    return 1
