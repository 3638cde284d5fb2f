"""The cached mode of the ad server's answer: the budget part from memory, changes pushed by Redis.

``CachedAnswerReader`` keeps every catalog campaign's budget part (budget-day and lifetime spend,
the pacing controller's published state: what ``AnswerReader`` reads per campaign) in memory and answers an
ad request from it without a round trip; the frequency part is per user (an unbounded set, only
worth reading when asked) and still costs one round trip when a candidate has a frequency cap.

Changes are pushed by Redis client-side caching: one RESP3 connection per node (each primary of a
cluster) runs ``CLIENT TRACKING ON BCAST`` with a prefix per budget shard and kind
(``<prefix>:{bN}:spend:`` and ``<prefix>:{bN}:pace-p:``), so every write to a spend or published pacing key
of that node, by anyone, pushes an ``invalidate`` message naming the key; the reader marks the
campaign dirty and a refresher task reads it again (one pipeline for all dirty campaigns). The
speed layer's ``budget-events`` stream is no substitute: it carries exhaustion and resumption
only, not every spend change or pacing step.

Staleness is bounded, and known per campaign. The same connection sends ``PING`` every
``heartbeat_ms``; a ``PONG`` proves that every write the node applied before that ``PING`` was
sent has had its invalidation read (one connection keeps its replies in order). So a clean entry
is current as of ``max(its read, the last acknowledged PING)``, a dirty one as of that instant
when it went dirty. An entry older than ``max_age_ms`` (the tracking connection dropped, the node
went silent, a refresh failed, or the campaign has no entry for the request's budget day yet) is
not served from memory: ``on_stale="read"`` reads those campaigns directly in the round trip the
request makes anyway (and fails like the direct reader if Redis is gone), ``"refuse"`` raises
``StaleBudgetState``. After a reconnect every entry is read again (writes while the connection was
down pushed nothing).

A dedicated ``redis.asyncio.Connection`` with ``protocol=3`` carries the tracking: redis-py's own
client-side cache (``cache_config``) exists for its synchronous clients only, caches single
commands (never the read scripts) and has no bound on age when a connection goes silent.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from redis.asyncio import Connection
from redis.exceptions import RedisError

from serving.answer import MAX_CANDIDATES, AdAnswer, AnswerReader, parse
from shared_logic import Campaign
from shared_logic.errors import InvalidInput, InvalidSetting

_FLUSH = object()


class StaleBudgetState(RuntimeError):
    """The cached budget part of some candidates is older than the bound (``on_stale="refuse"``)."""

    def __init__(self, campaign_ids: Sequence[str], age_ms: float | None, max_age_ms: int) -> None:
        self.campaign_ids, self.age_ms, self.max_age_ms = list(campaign_ids), age_ms, max_age_ms
        age = "no state" if age_ms is None else f"{age_ms:.0f} ms old"
        super().__init__(
            f"budget state of {', '.join(campaign_ids[:5])}{'…' if len(campaign_ids) > 5 else ''} "
            f"is {age}, over max_age_ms={max_age_ms}"
        )


@dataclass(slots=True)
class CacheStats:
    """What the cache did: answers from memory, campaigns read directly or refused as stale,
    invalidations received, campaigns read again, tracking connections made and lost."""

    hits: int = 0
    fallbacks: int = 0
    refused: int = 0
    invalidations: int = 0
    refreshed: int = 0
    connects: int = 0
    disconnects: int = 0


@dataclass(slots=True)
class _Entry:
    day: str
    values: Sequence[Any]
    parsed: Sequence[Any]  # ``serving.answer.parse(values)``, parsed once per read
    read_at: float  # monotonic s the read of ``values`` was sent: they were current then or later
    gen: int = 0
    dirty_as_of: float | None = None  # set while an invalidation is not read again yet


@dataclass(slots=True)
class _Link:
    name: str
    factory: Callable[[], Connection]
    synced_at: float = -math.inf  # the send time of the last PING whose PONG was read
    pings: deque[float] = field(default_factory=deque)
    up: bool = False


class CachedAnswerReader:
    """``AnswerReader``'s answers with the budget part from memory (see the module's docstring).

    ``start`` connects, tracks and loads every catalog campaign; ``close`` stops. ``clock_ms`` is
    the wall clock the refresher picks a campaign's budget day with (a request for another day
    reads that day directly and teaches the refresher). ``on_change(campaign_id, values)`` is
    called whenever fresh values of a campaign land in memory (the benchmark measures with it).
    """

    def __init__(
        self,
        reader: AnswerReader,
        *,
        max_age_ms: int = 500,
        heartbeat_ms: int = 50,
        on_stale: Literal["read", "refuse"] = "read",
        clock_ms: Callable[[], int] | None = None,
        on_change: Callable[[str, Sequence[Any]], None] | None = None,
    ) -> None:
        if max_age_ms <= 0:
            raise InvalidSetting("max_age_ms", max_age_ms, "must be positive")
        if not 0 < heartbeat_ms < max_age_ms:
            raise InvalidSetting("heartbeat_ms", heartbeat_ms, f"must be in (0, max_age_ms={max_age_ms})")
        if on_stale not in ("read", "refuse"):
            raise InvalidSetting("on_stale", on_stale, "must be 'read' or 'refuse'")
        self.reader = reader
        self.max_age_s, self.heartbeat_s = max_age_ms / 1000, heartbeat_ms / 1000
        self.max_age_ms, self.on_stale = max_age_ms, on_stale
        self.clock_ms = clock_ms or (lambda: int(time.time() * 1000))
        self.on_change = on_change
        self.stats = CacheStats()
        self._entries: dict[str, _Entry] = {}
        self._key_cid: dict[bytes, str] = {}
        self._want_day: dict[str, str] = {}
        self._pending: set[str] = set()
        self._wake = asyncio.Event()
        self._links: list[_Link] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False

    # lifecycle

    async def start(self, timeout_s: float = 10.0) -> None:
        """Track every node, load every catalog campaign, and wait until all are fresh."""
        await self.reader.load()
        self._links = self._discover()
        self._tasks = [asyncio.create_task(self._link_loop(link)) for link in self._links]
        self._tasks.append(asyncio.create_task(self._refresher()))
        deadline = time.monotonic() + timeout_s
        while True:
            now = time.monotonic()
            ids = [c.campaign_id for c in self.reader.catalog]
            if all(self._age_s(cid, now) is not None for cid in ids) and all(
                self._age_s(cid, now) <= self.max_age_s  # type: ignore[operator]
                for cid in ids
            ):
                return
            if now > deadline:
                await self.close()
                raise TimeoutError(f"the budget cache was not fresh within {timeout_s} s")
            await asyncio.sleep(0.005)

    async def close(self) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []

    def age_ms(self, campaign_id: str) -> float | None:
        """How old the cached budget part of ``campaign_id`` is (None: nothing cached)."""
        age = self._age_s(campaign_id, time.monotonic())
        return None if age is None else age * 1000

    # answers

    async def answer(self, user_id: str, campaign_ids: Sequence[str], now_ms: int) -> list[AdAnswer]:
        """``AnswerReader.answer``'s answer: the budget part from memory where it is fresh enough,
        one round trip for the rest and for the frequency part (none if there is neither)."""
        if not user_id:
            raise InvalidInput("user_id", user_id, "must not be empty")
        reader = self.reader
        if len(campaign_ids) > MAX_CANDIDATES:
            raise InvalidInput("campaign_id", len(campaign_ids), f"at most {MAX_CANDIDATES} candidates")
        known, days = reader.days(campaign_ids, now_ms)
        now = time.monotonic()
        synced = self._synced()
        budget: dict[str, Sequence[Any]] = {}
        missing: list[Campaign] = []
        oldest: float | None = 0.0
        for c in known:
            cid = c.campaign_id
            entry = self._entries.get(cid)
            age = self._age_s(cid, now, synced)
            if entry is not None and entry.day == days[cid] and age is not None and age <= self.max_age_s:
                budget[cid] = entry.parsed
                continue
            if entry is None or entry.day != days[cid]:
                self._want_day[cid] = days[cid]
                self._schedule([cid])
                oldest = None
            elif oldest is not None and age is not None:
                oldest = max(oldest, age * 1000)
            missing.append(c)
        if missing and self.on_stale == "refuse":
            self.stats.refused += len(missing)
            raise StaleBudgetState([c.campaign_id for c in missing], oldest, self.max_age_ms)
        self.stats.hits += len(budget)
        self.stats.fallbacks += len(missing)
        capped = [c for c in known if c.frequency_cap is not None]
        seen: dict[str, int] = {}
        if missing or capped:
            read, seen = await reader.read(user_id, missing, days, capped, now_ms)
            budget.update(read)
        return reader.build(campaign_ids, budget, seen, days, now_ms)

    # freshness

    def _synced(self) -> float:
        return min((link.synced_at for link in self._links), default=-math.inf)

    def _age_s(self, campaign_id: str, now: float, synced: float | None = None) -> float | None:
        entry = self._entries.get(campaign_id)
        if entry is None:
            return None
        if entry.dirty_as_of is not None:
            as_of = entry.dirty_as_of
        else:
            as_of = max(entry.read_at, self._synced() if synced is None else synced)
        return max(now - as_of, 0.0)

    def _invalidate(self, keys: Any) -> None:
        if keys is None or keys is _FLUSH:
            cids: Sequence[str] = list(self._entries)
        else:
            cids = [
                cid
                for k in keys
                if (cid := self._key_cid.get(k if isinstance(k, bytes) else str(k).encode()))
            ]
        self.stats.invalidations += len(cids)
        now = time.monotonic()
        for cid in cids:
            entry = self._entries.get(cid)
            if entry is None:
                continue
            if entry.dirty_as_of is None:
                entry.dirty_as_of = now - (self._age_s(cid, now) or 0.0)
            entry.gen += 1
        self._schedule(cids)

    def _schedule(self, cids: Sequence[str]) -> None:
        if cids:
            self._pending.update(cids)
            self._wake.set()

    # the refresher: reads dirty and missing campaigns again

    async def _refresher(self) -> None:
        backoff = 0.01
        while not self._closing:
            await self._wake.wait()
            self._wake.clear()
            cids, self._pending = self._pending, set()
            campaigns = [c for cid in cids if (c := self.reader.catalog.get(cid)) is not None]
            if not campaigns:
                continue
            gens = {
                c.campaign_id: (e.gen if (e := self._entries.get(c.campaign_id)) else -1) for c in campaigns
            }
            today = self.clock_ms()
            days = {
                c.campaign_id: self._want_day.get(c.campaign_id) or self.reader.day(c.budget.timezone, today)
                for c in campaigns
            }
            read_at = time.monotonic()
            try:
                values, _ = await self.reader.read("-", campaigns, days, [], today)
            except (RedisError, OSError):  # read again after a pause; ages grow meanwhile
                self._schedule(list(cids))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            backoff = 0.01
            keys = self.reader.keys
            for c in campaigns:
                cid, day = c.campaign_id, days[c.campaign_id]
                entry = self._entries.get(cid)
                raced = entry is not None and entry.gen != gens[cid]
                raw = tuple(values[cid])
                new = _Entry(day, raw, parse(raw), read_at, gen=entry.gen if entry else 0)
                if entry is not None and entry.day != day:  # the old day's key no longer names it
                    self._key_cid.pop(keys.spend_day(cid, entry.day).encode(), None)
                if raced:  # an invalidation crossed the read: current as of the read, read again
                    new.dirty_as_of = read_at
                    self._schedule([cid])
                self._entries[cid] = new
                for key in (keys.spend_day(cid, day), keys.spend_lifetime(cid), keys.published(cid)):
                    self._key_cid[key.encode()] = cid
                self.stats.refreshed += 1
                if self.on_change is not None:
                    self.on_change(cid, new.values)

    # tracking: one RESP3 connection per node

    def _discover(self) -> list[_Link]:
        redis = self.reader.redis
        if hasattr(redis, "get_primaries"):
            nodes = [(n.name, n.connection_class, n.connection_kwargs) for n in redis.get_primaries()]
        else:
            pool = redis.connection_pool
            kw = pool.connection_kwargs
            nodes = [(f"{kw.get('host')}:{kw.get('port')}", pool.connection_class, kw)]
        links = []
        for name, cls, kwargs in nodes:
            kw = {**kwargs, "protocol": 3, "decode_responses": False, "socket_timeout": None}

            def factory(cls: Any = cls, kw: dict[str, Any] = kw) -> Connection:
                conn: Connection = cls(**kw)
                return conn

            links.append(_Link(name, factory))
        return links

    def _prefixes(self) -> list[str]:
        keys = self.reader.keys
        out = []
        for shard in range(keys.budget_shards):
            base = f"{keys.prefix}:{{b{shard}}}:"
            out += ["PREFIX", base + "spend:", "PREFIX", base + "pace-p:"]
        return out

    async def _link_loop(self, link: _Link) -> None:
        backoff = 0.05
        while not self._closing:
            conn = link.factory()
            pinger: asyncio.Task[None] | None = None
            try:
                await conn.connect()  # type: ignore[no-untyped-call]

                async def on_push(response: Any) -> Any:
                    return response

                conn._parser.set_invalidation_push_handler(on_push)  # type: ignore[attr-defined]
                await conn.send_command("CLIENT", "TRACKING", "ON", "BCAST", *self._prefixes())
                reply = await conn.read_response(timeout=math.inf, push_request=True)
                if reply not in (b"OK", "OK"):
                    raise RedisError(f"CLIENT TRACKING answered {reply!r}")
                link.pings.clear()
                link.up = True
                self.stats.connects += 1
                backoff = 0.05
                # Nothing was pushed while untracked: every entry is read again.
                self._invalidate(_FLUSH)
                self._schedule([c.campaign_id for c in self.reader.catalog])
                pinger = asyncio.create_task(self._pinger(link, conn))
                while True:
                    r = await conn.read_response(timeout=math.inf, push_request=True)
                    if isinstance(r, list) and r and r[0] in (b"invalidate", "invalidate"):
                        self._invalidate(r[1])
                    elif r in (b"PONG", "PONG") and link.pings:
                        link.synced_at = link.pings.popleft()
                    elif isinstance(r, Exception):
                        raise r
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, ValueError):
                if link.up:
                    self.stats.disconnects += 1
            finally:
                link.up = False
                if pinger is not None:
                    pinger.cancel()
                with contextlib.suppress(Exception):
                    await conn.disconnect()
            if self._closing:
                return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)

    async def _pinger(self, link: _Link, conn: Connection) -> None:
        """PING every heartbeat; a PING unanswered for ``max_age_ms`` drops the connection (a
        silent node must not keep entries looking fresh: they age meanwhile anyway)."""
        try:
            while link.up:
                if link.pings and time.monotonic() - link.pings[0] > self.max_age_s:
                    break
                link.pings.append(time.monotonic())
                await conn.send_command("PING", check_health=False)
                await asyncio.sleep(self.heartbeat_s)
        except (RedisError, OSError):
            pass
        await conn.disconnect()
