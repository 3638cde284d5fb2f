"""The speed layer's side of the ad server's answer: frequency counts and the pacing controller.

``Pacer.observe`` is told of each touch the ingest script stored as new (a redelivered or
replayed touch is not new, so nothing is counted twice): an impression of a campaign with a
frequency cap goes into the user's impression set of that campaign (``Keys.frequency``: event id
scored by time, trimmed to the cap's newest ``N``, expiring a window after its last write), and a
touch of a capped campaign into the campaign's touch groups (``Keys.pacing_touches``: counts per
kind and ``touch_group_ms`` of event time), the open touches the in-flight liability counts.

``Pacer.run`` writes what was observed, then, each time the worker's watermark (event time)
passes a multiple of ``pacing.interval_ms``, steps the controller (``shared_logic.pacing.step``)
for every capped campaign and stores its state (``Keys.pacing``, and the published string the
answer reads, ``Keys.published``). A step is written only over an
older one, so workers stepping the same interval write once, and a replay's steps follow its
event time, not the wall clock.

**Catch-up.** A batch steps once at most, at the newest interval its watermark passed. A batch
of a catch-up (a replay or a backlog) does not step at all: it is full (the source had more
waiting) and its watermark moved past more than one interval (live batches cover seconds of
event time), or did not move while a step waits (a partition behind holds the minimum). Nobody
reads the intermediate states of a backlog, only the current one, so the first batch that is
not a catch-up's (not full, or moving less than an interval: the worker is live) takes one step
at the newest interval, and the controller lets a gap of ``k`` intervals
since the state's previous step move ``p`` by up to ``k`` bounded steps (``shared_logic.pacing``
says why). The rule reads event time and batch sizes only, no wall clock: the same batches give
the same steps. While a catch-up lasts the stored state ages (the answer reports its age).

Frequency sets are a set union trimmed to the newest ``N``: the same whatever the order or
batching of the impressions. The touch groups are estimates, not money: a worker that dies
between the ingest and this write loses its batch's counts (the liability reads a little low).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from realtime.codec import TouchItem
from realtime.keys import Keys
from shared_logic import AttributionPolicy, Campaign, Catalog, budget_day, day_bounds_ms
from shared_logic.contract import IngestStatus, parse_touch_member
from shared_logic.pacing import (
    HOUR_MS,
    PACING_FIELDS,
    PacingInput,
    PacingState,
    TrafficShape,
    conversion_rate,
    decode_state,
    due_touches,
    encode_published,
    encode_state,
    in_flight_liability,
    step,
)
from shared_logic.rules import TouchKind
from shared_logic.settings import Settings
from shared_logic.timeutil import MS_PER_DAY, utc_day

log = logging.getLogger(__name__)

# Writes a pacing state only over an older one (its ``at``), so that of workers stepping the same
# interval one writes; reads before it writes. KEYS[1] the pacing hash, KEYS[2] its published
# string (``encode_published``); ARGV[1] the step's time, ARGV[2] the TTL in ms, ARGV[3] the
# published string, then field, value pairs. A refused write still mends the string when it is
# missing or older than the hash (a worker of a version that wrote only the hash won the step, or
# the string alone was evicted): it is rebuilt from the hash's fields, the same text
# ``encode_published`` writes, so the answer and the budget state never disagree for long.
_WRITE_STATE = """
local at = redis.call('HGET', KEYS[1], 'at')
if at and tonumber(at) >= tonumber(ARGV[1]) then
  local pub = redis.call('GET', KEYS[2])
  local pub_at = pub and tonumber(string.match(pub, '^[^|]*|([^|]*)|'))
  if not pub_at or pub_at < tonumber(at) then
    local f = redis.call('HMGET', KEYS[1], 'day', 'at', 'p', 'liability')
    if f[1] and f[2] and f[3] and f[4] then
      redis.call('SET', KEYS[2], f[1] .. '|' .. f[2] .. '|' .. f[3] .. '|' .. f[4], 'PX', ARGV[2])
    end
  end
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[2])
return 1
"""
# Adds counts to a campaign's touch groups and renews the hash's TTL. KEYS[1] the groups hash;
# ARGV[1] the TTL in ms, then group, count pairs. (It only increments: nothing to check first.)
_ADD_GROUPS = """
for i = 2, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""
_KIND_CODE = {TouchKind.CLICK: "c", TouchKind.VIEW: "v"}
STATE_TTL_MS = 3 * MS_PER_DAY


def queue_state_write(pipe: Any, keys: Keys, campaign_id: str, state: PacingState) -> None:
    """Queue the write of a campaign's pacing state on ``pipe``: the hash and the published string
    the answer reads, together and only over an older step (``_WRITE_STATE``)."""
    fields = [x for kv in encode_state(state).items() for x in kv]
    pipe.execute_command(
        "EVAL",
        _WRITE_STATE,
        2,
        keys.pacing(campaign_id),
        keys.published(campaign_id),
        state.at_ms,
        STATE_TTL_MS,
        encode_published(state),
        *fields,
    )


async def write_state(redis: Any, keys: Keys, campaign_id: str, state: PacingState) -> bool:
    """Write one campaign's pacing state as a step does (``queue_state_write``), in its own
    round trip: for tools and tests that set a state. False when a state as new or newer was
    there already (nothing written but the mended published string)."""
    async with redis.pipeline(transaction=False) as pipe:
        queue_state_write(pipe, keys, campaign_id, state)
        (written,) = await pipe.execute()
    return bool(written)


@lru_cache(maxsize=1 << 16)
def _parse_group(fld: bytes) -> tuple[str, int]:
    """A touch-groups field, ``<kind>:<group start ms>``, as its kind and start (memoised)."""
    code, _, group = fld.decode().partition(":")
    return code, int(group)


@lru_cache(maxsize=1 << 16)
def _local_hour(at_ms: int, zone: str) -> int:
    """The hour of ``zone``'s clock at ``at_ms`` (memoised: a step asks it for every touch group
    of the previous days, the same groups step after step)."""
    return datetime.fromtimestamp(at_ms / 1000, tz=ZoneInfo(zone)).hour


class Pacer:
    """Counts what was served and steps the controller, for one worker (see the module)."""

    def __init__(
        self, redis: Any, catalog: Catalog, keys: Keys, settings: Settings, policy: AttributionPolicy
    ):
        self.redis, self.catalog, self.keys = redis, catalog, keys
        self.section = settings.pacing
        self.config = self.section.config()
        self.lateness = policy.allowed_lateness_ms
        self.windows = {c.campaign_id: policy.windows_for(c) for c in catalog}
        self.paced = [
            c for c in catalog if c.budget.daily_minor is not None or c.budget.lifetime_minor is not None
        ]
        self._paced_ids = {c.campaign_id for c in self.paced}
        self._impressions: list[tuple[str, str, int, int, int]] = []  # key, event id, time, cap, ttl
        self._groups: Counter[tuple[str, str]] = Counter()  # (campaign, "<kind>:<group start>")
        self.last_step_ms = 0
        self._seen_ms = 0  # the watermark the previous batch reached
        self._waiting = False  # a catch-up's batch put its step off
        self.steps = 0
        self.deferred = 0  # batches of a catch-up that did not step

    def observe(self, item: TouchItem, status: Any) -> None:
        """A touch the ingest script answered ``status`` for: counted when it was new."""
        if status != IngestStatus.NEW:
            return
        member = parse_touch_member(item.member)
        campaign = self.catalog.get(member.campaign_id)
        if campaign is None:
            return
        cap = campaign.frequency_cap
        if cap is not None and item.event_type == "impression":
            key = self.keys.frequency(item.bucket, item.user_id, campaign.campaign_id)
            ttl = cap.window_ms + self.lateness
            self._impressions.append((key, item.event_id, item.time_ms, cap.impressions, ttl))
        if campaign.campaign_id in self._paced_ids and member.kind in _KIND_CODE:
            group = item.time_ms // self.section.touch_group_ms * self.section.touch_group_ms
            self._groups[(campaign.campaign_id, f"{_KIND_CODE[member.kind]}:{group}")] += 1

    async def run(self, watermark_ms: int, end_of_time: int, full_batch: bool = False) -> None:
        """Write what was observed; step the controller when the watermark passed an interval,
        unless the batch is a catch-up's (``full_batch`` and the watermark moved past more than
        one interval in it): then the step waits for the batch that ends the catch-up."""
        await self._flush()
        interval = self.section.interval_ms
        at = watermark_ms // interval * interval
        moved = watermark_ms - self._seen_ms
        self._seen_ms = max(self._seen_ms, watermark_ms)
        if not self.paced or self.last_step_ms >= at or watermark_ms >= end_of_time:
            return
        # A full batch that moved the watermark past more than an interval, or not at all while a
        # step waits (a partition behind holds the minimum), is a catch-up's.
        if full_batch and (moved > interval or (moved <= 0 and self._waiting)):
            self._waiting = True
            self.deferred += 1
            return
        await self.step(at)
        self.last_step_ms = at
        self._waiting = False

    async def _flush(self) -> None:
        if not self._impressions and not self._groups:
            return
        keep = MS_PER_DAY + max((w.longest_ms for w in self.windows.values()), default=MS_PER_DAY)
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, event_id, time_ms, cap, ttl in self._impressions:
                pipe.zadd(key, {event_id: time_ms})
                pipe.zremrangebyrank(key, 0, -(cap + 1))  # the newest ``cap`` decide a cap
                pipe.pexpire(key, ttl)
            per_campaign: dict[str, list[Any]] = {}
            for (cid, fld), n in self._groups.items():
                per_campaign.setdefault(cid, []).extend((fld, n))
            for cid, pairs in per_campaign.items():  # one command per campaign, not one per group
                pipe.execute_command("EVAL", _ADD_GROUPS, 1, self.keys.pacing_touches(cid), keep, *pairs)
            await pipe.execute()
        self._impressions.clear()
        self._groups.clear()

    async def step(self, at_ms: int) -> None:
        """One controller step at event time ``at_ms`` for every capped campaign."""
        reads: list[tuple[Campaign, str, list[str]]] = []
        async with self.redis.pipeline(transaction=False) as pipe:
            for c in self.paced:
                cid = c.campaign_id
                day = budget_day(at_ms, c.budget.timezone).isoformat()
                days = self._stats_days(c, at_ms)
                pipe.get(self.keys.spend_day(cid, day))
                pipe.get(self.keys.spend_lifetime(cid))
                pipe.hmget(self.keys.pacing(cid), list(PACING_FIELDS))
                pipe.hgetall(self.keys.pacing_touches(cid))
                for d in days:
                    pipe.hmget(self.keys.stats(cid, d), ["orders", "revenue"])
                reads.append((c, day, days))
            raw = await pipe.execute()
        i = 0
        writes: list[tuple[str, PacingState]] = []
        stale: list[tuple[str, list[bytes]]] = []
        exposures: list[tuple[str, str, float]] = []
        for c, day, days in reads:
            spend_day, spend_life, state_raw, groups_raw = raw[i : i + 4]
            stats = raw[i + 4 : i + 4 + len(days)]
            i += 4 + len(days)
            inp, old = self._input(c, day, at_ms, spend_day, spend_life, groups_raw, stats)
            prev = decode_state(state_raw)
            gap = (at_ms - prev.at_ms) // self.section.interval_ms if prev is not None else 1
            state = step(prev, inp, self.config, max(gap, 1))
            writes.append((c.campaign_id, state))
            if prev is not None and prev.day == day and at_ms > prev.at_ms and prev.probability > 0:
                # The exposure served since the previous step (p · Δt), for tomorrow's traffic shape.
                group = prev.at_ms // self.section.touch_group_ms * self.section.touch_group_ms
                exposures.append(
                    (
                        self.keys.pacing_touches(c.campaign_id),
                        f"x:{group}",
                        prev.probability * (at_ms - prev.at_ms),
                    )
                )
            if old:
                stale.append((self.keys.pacing_touches(c.campaign_id), old))
        async with self.redis.pipeline(transaction=False) as pipe:
            for cid, state in writes:
                queue_state_write(pipe, self.keys, cid, state)
            for key, names in stale:
                pipe.hdel(key, *names)
            for key, fld, amount in exposures:  # the guarded write above decides nothing here: an
                pipe.hincrbyfloat(key, fld, amount)  # estimate, like the touch counts
            await pipe.execute()
        self.steps += 1

    def _stats_days(self, c: Campaign, at_ms: int) -> list[str]:
        """The UTC days whose stats (orders, revenue) teach the conversion rate: the click window."""
        span = self.windows[c.campaign_id].longest_ms
        return [utc_day(at_ms - k * MS_PER_DAY) for k in range(span // MS_PER_DAY + 1)]

    def _input(
        self,
        c: Campaign,
        day: str,
        at_ms: int,
        spend_day: Any,
        spend_life: Any,
        groups_raw: dict[bytes, bytes],
        stats: Sequence[Sequence[Any]],
    ) -> tuple[PacingInput, list[bytes]]:
        windows = self.windows[c.campaign_id]
        start, end = day_bounds_ms(budget_day(at_ms, c.budget.timezone), c.budget.timezone)
        open_groups: dict[str, list[tuple[int, int]]] = {"c": [], "v": []}
        old: list[bytes] = []
        by_hour = [0.0] * 24
        exposed_h = [0.0] * 24
        today = {"c": 0, "v": 0}
        kept: dict[str, list[tuple[int, int]]] = {"c": [], "v": []}
        zone = c.budget.timezone
        half = self.section.touch_group_ms // 2
        expired = max(windows.longest_ms, MS_PER_DAY) + self.section.touch_group_ms
        for fld, n in groups_raw.items():
            code, group = _parse_group(fld)
            if at_ms - group >= expired:
                old.append(fld)
                continue
            if code == "x":  # exposure served (p · ms), not touches
                if group < start:
                    exposed_h[_local_hour(group, zone)] += float(n) / HOUR_MS
                continue
            count = int(n)
            if group < start:  # previous days shape the target curve by local hour
                by_hour[_local_hour(group, zone)] += count
            else:
                today[code] += count
            age = max(at_ms - group - half, 0)
            kept[code].append((age, count))
            if age < (windows.click_ms if code == "c" else windows.view_ms):
                open_groups[code].append((age, count))
        orders = sum(int(s[0] or 0) for s in stats)
        revenue = sum(int(s[1] or 0) for s in stats)
        # The orders count from the oldest stats day's UTC midnight: the touches' conversions due
        # since then are what they are compared with.
        since = at_ms - (at_ms - (len(stats) - 1) * MS_PER_DAY) // MS_PER_DAY * MS_PER_DAY
        due = sum(
            due_touches(
                groups,
                since,
                windows.click_ms if code == "c" else windows.view_ms,
                self.section.mean_delay_ms,
                self.section.long_delay_share,
                self.section.long_delay_ms,
            )
            for code, groups in kept.items()
        )
        rate = conversion_rate(due, orders, self.section.prior_conversion_rate, self.section.prior_touches)
        p = c.pricing
        charge = (
            float(p.fee_minor)
            if p.fee_minor is not None
            else revenue / orders * (p.bps or 0) / 10_000
            if orders
            else 0.0
        )
        horizon = max(end - at_ms, 0)

        def _liability(groups: list[tuple[int, int]], code: str) -> float:
            return in_flight_liability(
                groups,
                rate,
                charge,
                windows.click_ms if code == "c" else windows.view_ms,
                self.section.mean_delay_ms,
                horizon,
                self.section.long_delay_share,
                self.section.long_delay_ms,
            )

        served = sum(today.values())
        # The expected charge inside the budget day of one touch served now, of today's mix of kinds.
        value = sum(_liability([(0, n)], code) for code, n in today.items() if n) / served if served else 0.0
        # Requests by hour from previous days: touches over the exposure that served them; before
        # any exposure was recorded, the touches themselves.
        shape = (
            TrafficShape.from_exposure(by_hour, exposed_h)
            if sum(exposed_h) > 0
            else TrafficShape.from_counts(by_hour)
        )
        liability = sum(
            in_flight_liability(
                groups,
                rate,
                charge,
                windows.click_ms if code == "c" else windows.view_ms,
                self.section.mean_delay_ms,
                horizon,
                self.section.long_delay_share,
                self.section.long_delay_ms,
            )
            for code, groups in open_groups.items()
        )
        inp = PacingInput(
            now_ms=at_ms,
            day=day,
            day_start_ms=start,
            day_end_ms=end,
            daily_cap_minor=c.budget.daily_minor,
            lifetime_cap_minor=c.budget.lifetime_minor,
            spend_day_minor=int(spend_day or 0),
            spend_lifetime_minor=int(spend_life or 0),
            liability_minor=liability,
            mode=c.budget.delivery_mode,
            shape=shape,
            served_touches=served,
            touch_value_minor=value,
        )
        return inp, old
