"""What the API holds while it runs (``State``): opened by the app's lifespan, read by every route
through ``reporting.routes.deps.core``."""

from __future__ import annotations

import asyncio
import time
from datetime import date
from typing import Any

from realtime.client import connect
from realtime.keys import Keys
from realtime.views import Retention, closed_days, ivt_summaries, lake_view
from reporting.auth import KeyRing
from reporting.ratelimit import RateLimiter
from reporting.stores import open_store
from serving import AnswerReader
from shared_logic import Catalog
from shared_logic.contract import IvtSummary
from shared_logic.settings import Settings
from storage import open_lake
from storage.catalog import open_catalog
from storage.ivt_lists import load_givt_lists


class State:
    """What the API holds while it runs: catalog, lake, store, Redis, keys; all from one settings tree."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.catalog: Catalog = open_catalog(settings.catalog.url)
        self.lake = open_lake(settings.lake.url, settings.s3)
        self.store = open_store(settings.store.url, self.lake)
        self.redis = connect(settings.redis)
        self.keys = Keys.of(settings.keys)
        self.keyring = KeyRing.load(settings.api.keys_path)
        self.limiter = RateLimiter(self.redis, settings.keys.prefix)
        # One reader for every ad request: it keeps its memos of budget days and keys.
        self.answers = AnswerReader(self.redis, self.catalog, self.keys, settings.pacing)
        self.policy = settings.rules.policy()
        self.givt = load_givt_lists(settings.rules)  # a touch the layers refuse is not counted
        rt, lateness = settings.realtime, settings.rules.allowed_lateness_ms
        self.retention = Retention(
            # Touches are counted up to the touch retention late, then kept counts_ttl after.
            counts_ms=self.policy.longest_window_ms(self.catalog) + lateness + rt.counts_ttl_ms,
            # A charge (at release) and a refund (while the charge is kept) each restart the TTL.
            stats_ms=lateness + 2 * settings.decision_ttl_ms,
            max_future_ms=settings.rules.max_future_ms,
        )
        # One connection, not safe for concurrent use (DuckDB): queries run one at a time, each in
        # a worker thread so the event loop stays free.
        self.lock = asyncio.Lock()
        # A closed day is read from the lake when its orders are settled and the workers flushed
        # the ledger twice since; its rows are kept for one flush interval (late refunds move them).
        flush_ms = int(rt.ledger_flush_interval_s * 1000)
        self.settled_ms = lateness + 2 * flush_ms + 60_000 if flush_ms else None
        self.lake_cache: dict[str, tuple[float, list[dict[str, Any]]]] = {}
        self.lake_ttl_s = max(rt.ledger_flush_interval_s, 1.0)
        self.closed: set[str] = set()  # a closed day stays closed: its markers are never removed
        self._batch_days: tuple[float, str | None] = (0.0, None)

    async def batch_through(self) -> date | None:
        """The last day the analytics store holds (the nightly job's load), asked at most every
        5 s: the store answers with a scan, and it changes once a night. Called under ``lock``."""
        at, last = self._batch_days
        if time.monotonic() >= at:
            days = await asyncio.to_thread(self.store.days)
            last = days[-1] if days else None
            self._batch_days = (time.monotonic() + 5.0, last)
        return date.fromisoformat(last) if last else None

    async def closed_view(self, days: list[str], now_ms: int) -> dict[str, list[dict[str, Any]]]:
        """Rows of the closed days among ``days`` (``realtime.views.lake_view``), every campaign of
        the catalog per day, cached; ``{}`` when the workers do not flush their ledger."""
        if self.settled_ms is None or not days:
            return {}
        unknown = [d for d in days if d not in self.closed]
        if unknown:
            self.closed.update(
                await asyncio.to_thread(closed_days, self.lake, unknown, now_ms, self.settled_ms)
            )
        closed = [d for d in days if d in self.closed]
        now = time.monotonic()
        if len(self.lake_cache) > 256:  # days asked once long ago
            self.lake_cache = {d: v for d, v in self.lake_cache.items() if v[0] > now}
        stale = [d for d in closed if d not in self.lake_cache or self.lake_cache[d][0] <= now]
        if stale:
            ids = [c.campaign_id for c in self.catalog]
            # Invalid traffic as /v1/ivt shows it: the nightly job's verdicts of the days it
            # judged, the speed layer's (Redis) for the others.
            verdicts: dict[str, list[IvtSummary]] = {d: [] for d in stale}
            for summary, _ in await ivt_summaries(self.lake, self.redis, self.keys, stale):
                verdicts[summary.dt].append(summary)
            rows = await asyncio.to_thread(
                lake_view, self.lake, self.catalog, stale, ids, self.policy.ivt, self.givt, verdicts
            )
            for d in stale:
                self.lake_cache[d] = (now + self.lake_ttl_s, [r for r in rows if r["dt"] == d])
        return {d: self.lake_cache[d][1] for d in closed}

    async def aclose(self) -> None:
        """Close what ``__init__`` opened: the Redis connections, then the store."""
        await self.redis.aclose()
        self.store.close()
