"""One ad request's answer: for a user and its candidate campaigns, which may be served and how often.

For each candidate: servable, or the reason it is not (``Reason``); the serve probability the
pacing controller published (``shared_logic.pacing``); what is left of its caps; and how old the
controller's state is. The reads are one Redis round trip: one pipeline holding one ``MGET`` of
the candidates' spends and published pacing states (``Keys.published``; one per budget shard on a
Redis Cluster, so each stays in one slot) and one read-only script call for the user's bucket
(frequency counts).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from typing import Any, Protocol

from redis.asyncio.cluster import ClusterPipeline
from redis.exceptions import NoScriptError

from realtime.client import Exchange, LeadFailed, Packed, exchanges
from realtime.keys import Keys
from shared_logic import Campaign, Catalog, budget_day, day_bounds_ms
from shared_logic.errors import InvalidInput
from shared_logic.money import caps_left
from shared_logic.pacing import DeliveryMode, Published, decode_published, published_probability
from shared_logic.settings import PacingSettings

#: Candidates one request may name (a realistic list is about 50).
MAX_CANDIDATES = 500


class Reason(StrEnum):
    """Why a candidate may not be served, in the order they are checked."""

    UNKNOWN = "unknown"
    INACTIVE = "inactive"
    LIFETIME_EXHAUSTED = "lifetime_exhausted"
    BUDGET_EXHAUSTED = "budget_exhausted"
    FREQUENCY_CAPPED = "frequency_capped"


# Neither frozen nor slotted: an ad request builds 50 of these and encodes them, and a frozen
# dataclass's __init__ (object.__setattr__ per field) took 90 us for 50 against 13, and orjson
# encodes slotted dataclasses about 4 times slower (55 us for 50 against 15).
@dataclass
class AdAnswer:
    """The engine's answer for one candidate campaign of one ad request (a value: nothing changes
    it once built).

    ``serve_probability`` is 0 when the campaign is not servable; ``remaining_minor`` is what the
    daily and lifetime caps leave (minor units of ``currency``; None without a cap);
    ``liability_minor`` the in-flight liability the controller counted; ``state_age_ms`` how long
    ago (event time) the controller last stepped (None before it ever has: the probability is
    then ``start_probability`` for ``even`` delivery, 1 for ``asap``); ``impressions`` the user's
    impressions of the campaign inside its frequency cap's window (None without a cap).
    """

    campaign_id: str
    servable: bool
    reason: Reason | None
    serve_probability: float
    remaining_minor: int | None
    currency: str | None
    budget_day: str | None
    liability_minor: float | None
    state_age_ms: int | None
    impressions: int | None


class Ahead(Protocol):
    """A command of the caller's that rides first in the answer's pipeline, on the same client
    (the API's rate limit: one round trip instead of two). ``command`` is called once, before the
    first read (None: nothing to send; it may raise to stop the answer); that pipeline waits at
    most ``timeout_s``; ``settle`` gets the command's reply, or the exception that failed the
    whole pipeline, before the reads' replies are looked at, and may raise to stop the answer.
    The command is never sent again: after a failure ``settle`` returns from, the reads go again
    alone."""

    timeout_s: float | None

    def command(self) -> tuple[Any, ...] | None: ...

    async def settle(self, reply: Any) -> None: ...


class _Commands(list[tuple[Any, ...] | Packed]):
    """Commands queued as on a pipeline, for ``realtime.client.Exchange``."""

    __slots__ = ()

    def execute_command(self, *args: Any) -> None:
        self.append(args)


class _Script:
    def __init__(self, name: str) -> None:
        self.text = resources.files("serving").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")
        self.sha = hashlib.sha1(self.text.encode()).hexdigest()  # noqa: S324 - Redis names scripts by SHA-1

    def queue(self, pipe: Any, keys: Sequence[str], args: Sequence[Any]) -> None:
        pipe.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)


_FREQUENCY = _Script("frequency_read")
_UNKNOWN, _INACTIVE = Reason.UNKNOWN, Reason.INACTIVE
_LIFETIME_EXHAUSTED, _BUDGET_EXHAUSTED = Reason.LIFETIME_EXHAUSTED, Reason.BUDGET_EXHAUSTED
_FREQUENCY_CAPPED = Reason.FREQUENCY_CAPPED
#: Values the budget read returns per campaign: budget-day spend, lifetime spend, published state.
_PER_CAMPAIGN = 3


def _int(raw: Any) -> int:
    return int(raw) if raw is not None else 0


class Parsed(tuple[int, int, Published | None]):
    """A campaign's budget values parsed: budget-day spend, lifetime spend, published pacing state."""

    __slots__ = ()


def parse(values: Sequence[Any]) -> Parsed:
    """The budget values ``AnswerReader.read`` returns for one campaign, parsed."""
    return Parsed((_int(values[0]), _int(values[1]), decode_published(values[2])))


@dataclass(frozen=True, slots=True)
class _Profile:
    """What the answer reads of a campaign's record, flattened once (``AnswerReader._profile``)."""

    campaign: Campaign
    daily: int | None
    lifetime: int | None
    frequency_cap: int | None
    mode: DeliveryMode


class AnswerReader:
    """Answers ad requests from the speed layer's Redis (``redis.asyncio`` ``Redis`` or
    ``RedisCluster``), the catalog and the key layout the worker writes with."""

    def __init__(
        self, redis: Any, catalog: Catalog, keys: Keys, pacing: PacingSettings | None = None
    ) -> None:
        self.redis, self.catalog, self.keys = redis, catalog, keys
        self.pacing = pacing or PacingSettings()
        self.config = self.pacing.config()
        # Per request, 50 candidates: their budget days and keys come from these memos, not from
        # a time-zone conversion and three key builds each (measured in ``make bench BENCH=serving``).
        self._days: dict[str, tuple[int, int, str]] = {}
        self._keys: dict[tuple[str, str], tuple[int, tuple[str, str, str], bytes]] = {}
        self._profiles: dict[str, _Profile] = {}
        self._exchange = Exchange(redis) if exchanges(redis) else None

    async def load(self) -> None:
        """Load the frequency read's script (on every primary of a cluster), so the first answer
        is one round trip too; an answer that finds it missing loads it itself."""
        await self.redis.script_load(_FREQUENCY.text)

    async def answer(
        self, user_id: str, campaign_ids: Sequence[str], now_ms: int, ahead: Ahead | None = None
    ) -> list[AdAnswer]:
        """The answer for ``user_id`` and each of ``campaign_ids`` at ``now_ms``, in their order
        (``ahead``: a command of the caller's sent first in the same round trip)."""
        if not user_id:
            raise InvalidInput("user_id", user_id, "must not be empty")
        if len(campaign_ids) > MAX_CANDIDATES:
            raise InvalidInput("campaign_id", len(campaign_ids), f"at most {MAX_CANDIDATES} candidates")
        known, days = self.days(campaign_ids, now_ms)
        capped = [c for c in known if c.frequency_cap is not None]
        budget, seen = await self.read(user_id, known, days, capped, now_ms, ahead)
        return self.build(campaign_ids, budget, seen, days, now_ms)

    async def read(
        self,
        user_id: str,
        campaigns: Sequence[Campaign],
        days: dict[str, str],
        capped: Sequence[Campaign],
        now_ms: int,
        ahead: Ahead | None = None,
    ) -> tuple[dict[str, Sequence[Any]], dict[str, int]]:
        """One round trip: the budget part of ``campaigns`` (per campaign, the values ``answer``
        reads: the two spends then the published pacing state) and the user's impressions of ``capped``
        inside their windows. Either list may be empty; both empty read nothing (but ``ahead``'s)."""
        groups, raw = await self._read(user_id, list(campaigns), days, list(capped), now_ms, ahead)
        budget: dict[str, Sequence[Any]] = {}
        for group, values in zip(groups, raw, strict=False):
            for i, c in enumerate(group):
                budget[c.campaign_id] = values[i * _PER_CAMPAIGN : (i + 1) * _PER_CAMPAIGN]
        seen = dict(zip((c.campaign_id for c in capped), raw[-1], strict=True)) if capped else {}
        return budget, seen

    def days(self, campaign_ids: Sequence[str], now_ms: int) -> tuple[list[Campaign], dict[str, str]]:
        """The known campaigns among ``campaign_ids`` (once each) and each one's budget day."""
        known = [c for cid in dict.fromkeys(campaign_ids) if (c := self.catalog.get(cid)) is not None]
        return known, {c.campaign_id: self.day(c.budget.timezone, now_ms) for c in known}

    def day(self, timezone: str, now_ms: int) -> str:
        """The budget day at ``now_ms`` in ``timezone`` (ISO), from the zone's current day's
        bounds while ``now_ms`` is inside them (a conversion only when a day turns)."""
        known = self._days.get(timezone)
        if known is not None and known[0] <= now_ms < known[1]:
            return known[2]
        day = budget_day(now_ms, timezone)
        start, end = day_bounds_ms(day, timezone)
        if start <= now_ms < end:  # a zone whose midnight a clock change skips is not memoised
            self._days[timezone] = (start, end, day.isoformat())
        return day.isoformat()

    def _budget_keys(self, campaign_id: str, day: str) -> tuple[int, tuple[str, str, str], bytes]:
        """A campaign's budget shard, the keys ``read`` reads on ``day`` (spend of the day, lifetime
        spend, published pacing state) and the same keys as ``MGET`` arguments already packed
        (``realtime.client.Packed``), built once a campaign and day."""
        found = self._keys.get((campaign_id, day))
        if found is None:
            if len(self._keys) > 100_000:  # yesterday's keys and campaigns gone from the catalog
                self._keys.clear()
            k = self.keys
            keys = (k.spend_day(campaign_id, day), k.spend_lifetime(campaign_id), k.published(campaign_id))
            found = (k.shard(campaign_id), keys, b"".join(map(Packed.argument, keys)))
            self._keys[(campaign_id, day)] = found
        return found

    async def _read(
        self,
        user_id: str,
        campaigns: list[Campaign],
        days: dict[str, str],
        capped: list[Campaign],
        now_ms: int,
        ahead: Ahead | None = None,
    ) -> tuple[list[list[Campaign]], list[Any]]:
        """The pipeline's results, and the campaigns of each budget MGET in its order."""
        bucket = self.keys.bucket(user_id)
        groups: list[list[Campaign]] = []

        def queue(pipe: Any) -> None:
            groups.clear()
            if isinstance(pipe, ClusterPipeline):
                # An MGET's keys must share a slot on a cluster: one per budget shard.
                by_shard: dict[int, list[Campaign]] = {}
                for c in campaigns:
                    by_shard.setdefault(self._budget_keys(c.campaign_id, days[c.campaign_id])[0], []).append(
                        c
                    )
                groups.extend(by_shard.values())
            elif campaigns:
                # One server takes the whole budget part in one MGET (50 candidates on 16 shards:
                # 17 calls took 1.07 ms a read, one call 0.76 ms).
                groups.append(campaigns)
            for group in groups:
                if isinstance(pipe, _Commands):  # packed once a campaign and day, not 150 arguments a read
                    packed = [self._budget_keys(c.campaign_id, days[c.campaign_id])[2] for c in group]
                    pipe.append(Packed.of(b"MGET", packed, _PER_CAMPAIGN * len(group)))
                    continue
                keys: list[str] = []
                for c in group:
                    keys += self._budget_keys(c.campaign_id, days[c.campaign_id])[1]
                pipe.execute_command("MGET", *keys)
            if capped:
                _FREQUENCY.queue(
                    pipe,
                    [self.keys.frequency(bucket, user_id, c.campaign_id) for c in capped],
                    [now_ms, *(c.frequency_cap.window_ms for c in capped if c.frequency_cap)],
                )

        # ``ahead``'s command goes first in the first pipeline only: its reply (or the pipeline's
        # failure) is settled before the reads' replies are looked at, and only the reads are
        # ever sent again.
        lead = ahead.command() if ahead is not None else None
        if not campaigns and not capped and lead is None:
            return [], []
        reloaded = False
        while True:
            if lead is None:
                results: list[Any] = await self._send(queue)
            else:
                assert ahead is not None
                try:
                    results = await self._send(queue, lead, ahead.timeout_s)
                except LeadFailed as exc:  # the lead's reply came, the reads' did not
                    lead = None
                    await ahead.settle(exc.reply)  # a refusal is a refusal, else the reads' failure
                    raise exc.__cause__ or exc from None
                except Exception as exc:  # no reply to the lead: ``ahead`` raises, or the reads go alone
                    lead = None
                    await ahead.settle(exc)
                    continue
                lead = None
                await ahead.settle(results[0])
                results = results[1:]
            if not reloaded and any(isinstance(r, NoScriptError) for r in results):
                # A node restarted or failed over: load (on every primary) and read again; reads
                # change nothing, so the repeat is safe.
                reloaded = True
                await self.load()
                continue
            for r in results:
                if isinstance(r, Exception):
                    raise r
            return groups, results

    async def _send(
        self,
        queue: Callable[[Any], None],
        lead: tuple[Any, ...] | None = None,
        lead_within: float | None = None,
    ) -> list[Any]:
        """The replies to ``lead`` and what ``queue`` queues, in one round trip (a reply error in its
        place): on one server without redis-py's pipeline object (``realtime.client.Exchange``:
        ``lead`` sent once, only its reply awaited under ``lead_within``)."""
        if self._exchange is not None:
            commands = _Commands()
            if lead is not None:
                commands.execute_command(*lead)
            queue(commands)
            return await self._exchange(commands, lead_within if lead is not None else None)
        async with (
            asyncio.timeout(lead_within if lead is not None else None),
            self.redis.pipeline(transaction=False) as pipe,
        ):
            if lead is not None:
                pipe.execute_command(*lead)
            queue(pipe)
            return await pipe.execute(raise_on_error=False)  # type: ignore[no-any-return]

    def one(
        self,
        campaign_id: str,
        values: Sequence[Any] | None,
        impressions: int | None,
        day: str | None,
        now_ms: int,
    ) -> AdAnswer:
        """The answer for one candidate from its budget values (as ``read`` returns them, or
        ``parse``d already) and the user's impressions of it."""
        return self.build(
            (campaign_id,),
            {} if values is None else {campaign_id: values},
            {} if impressions is None else {campaign_id: impressions},
            {} if day is None else {campaign_id: day},
            now_ms,
        )[0]

    def build(
        self,
        campaign_ids: Sequence[str],
        budget: dict[str, Sequence[Any]],
        seen: dict[str, int],
        days: dict[str, str],
        now_ms: int,
    ) -> list[AdAnswer]:
        """The answer for each of ``campaign_ids``, in their order, from their budget values (as
        ``read`` returns them, or ``parse``d already), the user's impressions of them and their
        budget days (a candidate missing from ``budget`` or ``days`` is ``unknown``). One loop
        over the candidates: 50 of them took about 165 us as 50 calls of a per-candidate method."""
        get, profiles, config = self.catalog.get, self._profiles, self.config
        out: list[AdAnswer] = []
        for campaign_id in campaign_ids:
            c = get(campaign_id)
            values = budget.get(campaign_id)
            day = days.get(campaign_id)
            if c is None or values is None or day is None:
                out.append(AdAnswer(campaign_id, False, _UNKNOWN, 0.0, None, None, None, None, None, None))
                continue
            pr = profiles.get(campaign_id)
            if pr is None or pr.campaign is not c:
                pr = self._profile(c)
            if type(values) is Parsed:
                spent_day, spent_life, state = values
            else:
                raw_day, raw_life, raw_state = values
                spent_day = 0 if raw_day is None else int(raw_day)
                spent_life = 0 if raw_life is None else int(raw_life)
                state = decode_published(raw_state)
            daily, lifetime, cap = pr.daily, pr.lifetime, pr.frequency_cap
            remaining = caps_left(daily, lifetime, spent_day, spent_life)
            impressions = seen.get(campaign_id)
            reason: Reason | None = None
            if not c.active_at(now_ms):
                reason = _INACTIVE
            elif lifetime is not None and spent_life >= lifetime:
                reason = _LIFETIME_EXHAUSTED
            elif daily is not None and spent_day >= daily:
                reason = _BUDGET_EXHAUSTED
            elif cap is not None and (impressions or 0) >= cap:
                reason = _FREQUENCY_CAPPED
            out.append(
                AdAnswer(
                    campaign_id,
                    reason is None,
                    reason,
                    0.0
                    if reason is not None
                    else published_probability(state, day, remaining is not None, pr.mode, config),
                    remaining,
                    c.currency,
                    day,
                    state.liability_minor if state is not None and state.day == day else None,
                    None if state is None else max(now_ms - state.at_ms, 0),
                    impressions if cap is not None else None,
                )
            )
        return out

    def _profile(self, c: Campaign) -> _Profile:
        """``c``'s record flattened for ``one`` (memoised per campaign record: a catalog reloaded
        with a changed record makes a new one)."""
        pr = self._profiles.get(c.campaign_id)
        if pr is None or pr.campaign is not c:
            b, cap = c.budget, c.frequency_cap
            pr = _Profile(
                c,
                b.daily_minor,
                b.lifetime_minor,
                None if cap is None else cap.impressions,
                b.delivery_mode,
            )
            self._profiles[c.campaign_id] = pr
        return pr
