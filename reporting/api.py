"""The HTTP API: ROAS reports for advertisers, budget state for the ad server.

ROAS rows come from the batch view for days up to the last complete batch run
and from the speed layer after it, never both for one day; each row says which
(``source``) and carries the model and the windows used. Every route needs an
``X-API-Key`` (the docs and ``/metrics`` too, unless a setting makes them public).

Limits (``api`` settings): per-key and per-address rate limits (429), a cost bound per ROAS
request (422), URL, header and body sizes (414, 431, 413). Every error is an RFC 9457 problem
(``reporting.problems``); every response carries ``Cache-Control: no-store`` and the security
headers (``reporting.middleware``). Blocking store queries run in a worker thread, so a heavy
report never holds up the event loop (``/health``, budget reads).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import date, timedelta
from typing import Annotated, Any, Literal

import orjson
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Security
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.security import APIKeyHeader
from starlette.types import ASGIApp

from realtime.budget import BudgetReader, BudgetState
from realtime.client import connect
from realtime.keys import Keys
from realtime.views import Retention, closed_days, lake_view, speed_view
from reporting.auth import ApiKey, KeyRing
from reporting.errors import UNAVAILABLE, CampaignNotFound, InvalidParameter, Problem, TooCostly
from reporting.metrics import ApiMetrics
from reporting.middleware import CALLER, RateLimits, RecordMetrics, RequestLimits, SecurityHeaders
from reporting.problems import as_problem_media_type, install, openapi_responses, problem_response
from reporting.ratelimit import RateLimiter, rates
from reporting.schemas import Health, RoasReport
from reporting.stores import RoasQuery, open_store
from shared_logic import Catalog
from shared_logic.contract import REPORT_MODELS
from shared_logic.settings import Settings, load_settings
from storage import open_lake
from storage.catalog import open_catalog

log = logging.getLogger(__name__)
MAX_RANGE_DAYS = 366
TITLE = "Attribution engine API"
VERSION = "0.1.0"


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
        self.policy = settings.rules.policy()
        rt, lateness = settings.realtime, settings.rules.allowed_lateness_ms
        self.retention = Retention(
            # Touches are counted up to the touch retention late, then kept counts_ttl after.
            counts_ms=self.policy.longest_window_ms(self.catalog) + lateness + rt.counts_ttl_ms,
            # A charge (at release) and a refund (while the charge is kept) each restart the TTL.
            stats_ms=lateness + 2 * rt.decision_ttl_ms,
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
            rows = await asyncio.to_thread(lake_view, self.lake, self.catalog, stale, ids)
            for d in stale:
                self.lake_cache[d] = (now + self.lake_ttl_s, [r for r in rows if r["dt"] == d])
        return {d: self.lake_cache[d][1] for d in closed}


def core(request: Request) -> State:
    return request.app.state.core  # type: ignore[no-any-return]


_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)
_UNSET = object()


def caller(request: Request, key: Annotated[str | None, Security(_api_key_header)]) -> ApiKey:
    """The key's owner; 401 for a missing or unknown key (every route depends on this)."""
    found = getattr(request.state, CALLER, _UNSET)  # the rate limiter identified it already
    if found is _UNSET:
        found = core(request).keyring.identify(key)
    if not isinstance(found, ApiKey):
        raise HTTPException(401, "a valid X-API-Key header is required")
    return found


# Module level: FastAPI resolves string annotations (from __future__) in module globals.
Caller = Annotated[ApiKey, Depends(caller)]
_KEYED = openapi_responses(401, 413, 414, 429, 431, 500)


class _Api(FastAPI):
    """FastAPI with the security headers and the request metrics outside Starlette's error
    middleware (so a 500 has them too), and problem details as the media type of its errors."""

    metrics: ApiMetrics

    def build_middleware_stack(self) -> ASGIApp:
        return SecurityHeaders(RecordMetrics(super().build_middleware_stack(), self.metrics))

    def openapi(self) -> dict[str, Any]:
        fresh = self.openapi_schema is None
        schema = super().openapi()
        return as_problem_media_type(schema) if fresh else schema


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    section = settings.api

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.core = State(settings)
        yield
        await app.state.core.redis.aclose()
        app.state.core.store.close()

    app = _Api(
        title=TITLE,
        version=VERSION,
        lifespan=lifespan,
        description="ROAS per advertiser, campaign, day and model; real-time budget state. "
        "Errors are RFC 9457 problem details (application/problem+json).",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.metrics = ApiMetrics()
    install(app)
    # Added innermost first: sizes are checked before a key is hashed or Redis is asked.
    app.add_middleware(
        RateLimits, host=lambda: app.state.core, section=section, rates=rates(section), metrics=app.metrics
    )
    app.add_middleware(RequestLimits, section=section)

    def docs_access(request: Request, key: Annotated[str | None, Security(_api_key_header)]) -> None:
        if not section.docs_public:
            caller(request, key)

    def metrics_access(request: Request, key: Annotated[str | None, Security(_api_key_header)]) -> None:
        if not section.metrics_public and caller(request, key).role != "admin":
            raise HTTPException(403, "/metrics needs an admin key")

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(docs_access)])
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=[Depends(docs_access)])
    async def docs() -> Response:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{TITLE} - docs")

    @app.get("/redoc", include_in_schema=False, dependencies=[Depends(docs_access)])
    async def redoc() -> Response:
        return get_redoc_html(openapi_url="/openapi.json", title=f"{TITLE} - ReDoc")

    @app.get(
        "/metrics",
        tags=["ops"],
        response_class=PlainTextResponse,
        dependencies=[Depends(metrics_access)],
        responses=openapi_responses(403),
    )
    async def metrics() -> Response:
        """Prometheus text format: requests and latency by route and status, 429s by role, limiter errors."""
        body, content_type = app.metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/health", response_model=Health, tags=["ops"], responses=_KEYED)
    async def health(_: Caller) -> Health:
        return Health(status="ok")

    @app.get("/ready", response_model=Health, tags=["ops"], responses={**_KEYED, **openapi_responses(503)})
    async def ready(request: Request, _: Caller) -> Any:
        state = core(request)
        checks: dict[str, str] = {}
        try:
            await asyncio.wait_for(state.redis.ping(), 2)
            checks["redis"] = "ok"
        except Exception as exc:
            checks["redis"] = f"unavailable: {type(exc).__name__}"
        try:
            async with state.lock:
                await asyncio.to_thread(state.store.days)
            checks["store"] = "ok"
        except Exception as exc:
            checks["store"] = f"unavailable: {type(exc).__name__}"
        if all(v == "ok" for v in checks.values()):
            return Health(status="ready", checks=checks)
        down = ", ".join(f"{k} {v}" for k, v in checks.items() if v != "ok")
        problem = Problem(
            503, f"not ready: {down}", UNAVAILABLE, "Dependency unavailable", None, {"checks": checks}
        )
        return problem_response(problem, request.url.path)

    def _visible(state: State, who: ApiKey, campaign_ids: list[str] | None) -> list[str]:
        allowed = [
            c.campaign_id
            for c in state.catalog
            if who.role == "admin" or c.advertiser_id == who.advertiser_id
        ]
        if not campaign_ids:
            return allowed
        for cid in campaign_ids:
            if cid not in allowed:  # another advertiser's campaign looks exactly like a missing one
                raise CampaignNotFound(cid)
        return list(dict.fromkeys(campaign_ids))

    @app.get(
        "/v1/roas",
        response_model=RoasReport,
        tags=["reports"],
        responses={**_KEYED, **openapi_responses(403, 404, 422, 503)},
    )
    async def roas(
        request: Request,
        who: Caller,
        start: Annotated[date, Query(description="first day (UTC), YYYY-MM-DD")],
        end: Annotated[date, Query(description="last day (UTC), inclusive")],
        campaign_id: Annotated[list[str] | None, Query(max_length=500)] = None,
        model: Annotated[list[Literal[REPORT_MODELS]] | None, Query()] = None,  # type: ignore[valid-type]  # the contract's names
    ) -> Response:
        """ROAS per day, campaign and model. One request may cover at most ``api.roas_max_cost``
        days x campaigns (all the key's campaigns when none is named)."""
        if who.role == "ad_server":
            raise HTTPException(403, "an ad-server key may read budget state only")
        if end < start:
            raise InvalidParameter("end", end.isoformat(), f"must not be before start ({start.isoformat()})")
        n_days = (end - start).days + 1
        if n_days > MAX_RANGE_DAYS:
            raise InvalidParameter("end", end.isoformat(), f"at most {MAX_RANGE_DAYS} days per query")
        state = core(request)
        campaigns = _visible(state, who, campaign_id)
        cost, limit = n_days * len(campaigns), section.roas_max_cost
        if cost > limit:
            raise TooCostly(
                "end" if n_days > 1 else "campaign_id",
                end.isoformat() if n_days > 1 else len(campaigns),
                cost,
                limit,
                f"{n_days} days x {len(campaigns)} campaigns = {cost:,} day-campaigns, more than the "
                f"{limit:,} one request may ask for: ask for fewer days (end) or name fewer campaigns "
                "(campaign_id)",
            )
        models = tuple(model) if model else None
        async with state.lock:
            batch_through = await state.batch_through()
            rows = (
                await asyncio.to_thread(
                    state.store.roas,
                    RoasQuery(start, min(end, batch_through), None, tuple(campaigns), models),
                )
                if batch_through
                else []
            )
        speed: list[dict[str, Any]] = []
        speed_start = max(start, batch_through + timedelta(days=1)) if batch_through else start
        if speed_start <= end and (models is None or "billing" in models):
            asked = [
                (speed_start + timedelta(days=i)).isoformat() for i in range((end - speed_start).days + 1)
            ]
            now_ms = int(time.time() * 1000)
            # Closed days from the lake (landed, settled, the ledger flushed), the others from Redis.
            closed = await state.closed_view(asked, now_ms)
            open_days = [d for d in asked if d not in closed]
            # Only days whose keys can still exist: older ones expired, later ones are in the future.
            counted = state.retention.days(open_days, now_ms, "counts")
            kept = set(counted) | set(state.retention.days(open_days, now_ms, "stats"))
            speed = await speed_view(
                state.redis,
                state.keys,
                state.catalog,
                [d for d in open_days if d in kept],
                campaigns,
                counted,
            )
            wanted = set(campaigns)
            speed += [r for day in asked if day in closed for r in closed[day] if r["campaign_id"] in wanted]
        body = await asyncio.to_thread(_report, state, rows, speed, batch_through, start, end)
        return Response(body, media_type="application/json")

    @app.get(
        "/v1/budget",
        response_model=list[BudgetState],
        tags=["budget"],
        responses={**_KEYED, **openapi_responses(404, 422, 503)},
    )
    async def budget(
        request: Request,
        who: Caller,
        campaign_id: Annotated[list[str], Query(min_length=1, max_length=1000)],
        at: Annotated[
            int | None,
            Query(
                description="epoch ms to read the budget day at; default now",
                ge=946_684_800_000,
                lt=4_102_444_800_000,
            ),
        ] = None,
    ) -> list[BudgetState]:
        state = core(request)
        ids = campaign_id if who.role in ("admin", "ad_server") else _visible(state, who, campaign_id)
        for cid in ids:
            if cid not in state.catalog:
                raise CampaignNotFound(cid)
        reader = BudgetReader(state.redis, state.catalog, state.keys)
        states = await reader.states(ids, at if at is not None else int(time.time() * 1000))
        # The ad server's hot path: orjson encodes the dataclasses directly (the schema above
        # documents them), skipping a validation pass over values this process just built.
        return Response(orjson.dumps(states), media_type="application/json")  # type: ignore[return-value]

    return app


def _row(state: State, r: dict[str, Any], source: Literal["batch", "speed"]) -> dict[str, Any]:
    """A metric row as the API shows it (``RoasRow``): its day, source and windows, NaN as null."""
    campaign = state.catalog.get(r["campaign_id"])
    assert campaign is not None
    w = state.policy.windows_for(campaign)
    row = {k: None if isinstance(v, float) and v != v else v for k, v in r.items() if k != "dt"}
    row["day"] = str(r["dt"])
    row["source"] = source
    row["windows"] = {"click_ms": w.click_ms, "view_ms": w.view_ms}
    return row


def _report(
    state: State,
    batch: list[dict[str, Any]],
    speed: list[dict[str, Any]],
    batch_through: date | None,
    start: date,
    end: date,
) -> bytes:
    """The report as JSON: CPU work, run in a worker thread. ``batch`` rows are the store's answer
    for days up to the batch view's last (the query is bounded there). orjson encodes the rows the contract
    shaped (``RoasReport`` documents them; the tests validate answers against it), four times
    faster than a validation pass over every row."""
    out = [_row(state, r, "batch") for r in batch] + [_row(state, r, "speed") for r in speed]
    out.sort(key=lambda r: (r["day"], r["campaign_id"], r["model"]))
    return orjson.dumps({"rows": out, "batch_through": batch_through, "start": start, "end": end})


def app_from_env() -> FastAPI:
    """Uvicorn factory: ``uvicorn --factory reporting.api:app_from_env``."""
    return create_app(load_settings())
