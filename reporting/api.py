"""The HTTP API: ROAS reports for advertisers, budget state for the ad server.

ROAS rows come from the batch view for days up to the last complete batch run
and from the speed layer after it, never both for one day; each row says which
(``source``) and carries the model and the windows used. Every route needs an
``X-API-Key``.
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
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from attribution_models import MODEL_NAMES
from realtime.budget import BudgetState
from reporting.auth import ApiKey, KeyRing
from shared_logic import AttributionPolicy, Catalog, load_catalog
from shared_logic.errors import AttributionError, InvalidInput

log = logging.getLogger(__name__)
MAX_RANGE_DAYS = 366
REPORT_MODELS = ("billing", *MODEL_NAMES)


class ApiSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ATTRIBUTION_API_", frozen=True, extra="forbid")

    lake_url: str = "file://./var/lake"
    catalog_path: str = "var/demo/catalog.yaml"
    store_url: str = "duckdb://"
    redis_url: str = "redis://127.0.0.1:6379/0"
    keys_path: str = "var/demo/api-keys.yaml"
    key_prefix: str = "attr"
    user_buckets: int = 64
    budget_shards: int = 1


class Windows(BaseModel):
    click_ms: int
    view_ms: int


class RoasRow(BaseModel):
    day: date
    campaign_id: str
    advertiser_id: str
    lever: str
    currency: str
    model: str
    source: Literal["batch", "speed"]
    windows: Windows
    impressions: int
    clicks: int
    promo_views: int
    orders: float
    revenue_minor: float
    spend_minor: int
    roas: float | None = Field(description="revenue / spend; null when nothing was spent")


class RoasReport(BaseModel):
    rows: list[RoasRow]
    batch_through: date | None = Field(
        description="last day of the batch view; later days are from the speed layer"
    )
    start: date
    end: date


class Health(BaseModel):
    status: str
    checks: dict[str, str] = {}


class State:
    def __init__(self, settings: ApiSettings) -> None:
        from redis.asyncio import Redis

        from batch.lake import Lake
        from realtime.keys import Keys
        from reporting.stores import open_store

        self.settings = settings
        self.catalog: Catalog = load_catalog(settings.catalog_path)
        self.lake = Lake(settings.lake_url)
        self.store = open_store(settings.store_url, self.lake)
        self.redis = Redis.from_url(settings.redis_url)
        self.keys = Keys(settings.key_prefix, settings.user_buckets, settings.budget_shards)
        self.keyring = KeyRing.load(settings.keys_path)
        self.policy = AttributionPolicy()
        self.lock = asyncio.Lock()  # the DuckDB connection is not safe for concurrent use


def core(request: Request) -> State:
    return request.app.state.core  # type: ignore[no-any-return]


_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)


def caller(request: Request, key: Annotated[str | None, Security(_api_key_header)]) -> ApiKey:
    """The key's owner; 401 for a missing or unknown key (every route depends on this)."""
    found = core(request).keyring.identify(key)
    if found is None:
        raise HTTPException(401, "a valid X-API-Key header is required")
    return found


# Module level: FastAPI resolves string annotations (from __future__) in module globals.
Caller = Annotated[ApiKey, Depends(caller)]


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    settings = settings or ApiSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.core = State(settings)
        yield
        await app.state.core.redis.aclose()
        app.state.core.store.close()

    app = FastAPI(
        title="Attribution engine API",
        version="0.1.0",
        lifespan=lifespan,
        description="ROAS per advertiser, campaign, day and model; real-time budget state.",
    )

    @app.exception_handler(RequestValidationError)
    async def bad_parameter(_: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0]
        loc = [str(part) for part in err.get("loc", ())]
        # ("query", "model", 0): the parameter is the part after where it came from.
        name = (
            loc[1] if len(loc) > 1 and loc[0] in ("query", "path", "header", "body") else ".".join(loc) or "?"
        )
        value = err.get("input")
        return JSONResponse(
            status_code=422,
            content={"error": f"invalid parameter {name!r} = {value!r}: {err['msg']}", "parameter": name},
        )

    @app.exception_handler(AttributionError)
    async def engine_error(_: Request, exc: AttributionError) -> JSONResponse:
        body: dict[str, Any] = {"error": str(exc)}
        if isinstance(exc, InvalidInput):
            body["parameter"] = exc.field
        return JSONResponse(status_code=400, content=body)

    @app.get("/health", response_model=Health, tags=["ops"])
    async def health(_: Caller) -> Health:
        return Health(status="ok")

    @app.get("/ready", response_model=Health, tags=["ops"], responses={503: {"model": Health}})
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
                state.store.days()
            checks["store"] = "ok"
        except Exception as exc:
            checks["store"] = f"unavailable: {type(exc).__name__}"
        ok = all(v == "ok" for v in checks.values())
        body = Health(status="ready" if ok else "not ready", checks=checks)
        return body if ok else JSONResponse(status_code=503, content=body.model_dump())

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
                raise HTTPException(404, f"campaign_id {cid!r} not found")
        return list(dict.fromkeys(campaign_ids))

    @app.get("/v1/roas", response_model=RoasReport, tags=["reports"])
    async def roas(
        request: Request,
        who: Caller,
        start: Annotated[date, Query(description="first day (UTC), YYYY-MM-DD")],
        end: Annotated[date, Query(description="last day (UTC), inclusive")],
        campaign_id: Annotated[list[str] | None, Query(max_length=500)] = None,
        model: Annotated[list[Literal[REPORT_MODELS]] | None, Query()] = None,  # type: ignore[valid-type]
    ) -> RoasReport:
        if who.role == "ad_server":
            raise HTTPException(403, "an ad-server key may read budget state only")
        if end < start:
            raise HTTPException(422, detail="invalid parameter 'end': must not be before start")
        if (end - start).days >= MAX_RANGE_DAYS:
            raise HTTPException(
                422, detail=f"invalid parameter 'end': at most {MAX_RANGE_DAYS} days per query"
            )
        state = core(request)
        campaigns = _visible(state, who, campaign_id)
        models = tuple(model) if model else None
        from reporting.stores import RoasQuery

        async with state.lock:
            batch_days = state.store.days()
            batch_through = date.fromisoformat(batch_days[-1]) if batch_days else None
            rows = (
                state.store.roas(
                    RoasQuery(
                        start,
                        min(end, batch_through) if batch_through else start,
                        None,
                        tuple(campaigns),
                        models,
                    )
                )
                if batch_through
                else []
            )
        out = [
            _row(state, r, "batch")
            for r in rows
            if batch_through and date.fromisoformat(str(r["dt"])) <= batch_through
        ]
        speed_start = max(start, batch_through + timedelta(days=1)) if batch_through else start
        if speed_start <= end and (models is None or "billing" in models):
            from realtime.views import speed_view

            days = [
                (speed_start + timedelta(days=i)).isoformat() for i in range((end - speed_start).days + 1)
            ]
            speed = await speed_view(state.redis, state.keys, state.catalog, days, campaigns)
            out += [_row(state, r, "speed") for r in speed]
        out.sort(key=lambda r: (r.day, r.campaign_id, r.model))
        return RoasReport(rows=out, batch_through=batch_through, start=start, end=end)

    def _row(state: State, r: dict[str, Any], source: Literal["batch", "speed"]) -> RoasRow:
        campaign = state.catalog.get(r["campaign_id"])
        assert campaign is not None
        w = state.policy.windows_for(campaign)
        roas_value = r.get("roas")
        return RoasRow(
            day=date.fromisoformat(str(r["dt"])),
            campaign_id=r["campaign_id"],
            advertiser_id=r["advertiser_id"],
            lever=r["lever"],
            currency=r["currency"],
            model=r["model"],
            source=source,
            windows=Windows(click_ms=w.click_ms, view_ms=w.view_ms),
            impressions=int(r["impressions"]),
            clicks=int(r["clicks"]),
            promo_views=int(r["promo_views"]),
            orders=float(r["orders"]),
            revenue_minor=float(r["revenue_minor"]),
            spend_minor=int(r["spend_minor"]),
            roas=None if roas_value is None or roas_value != roas_value else float(roas_value),
        )

    @app.get("/v1/budget", response_model=list[BudgetState], tags=["budget"])
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
        from realtime.budget import BudgetReader

        state = core(request)
        ids = campaign_id if who.role in ("admin", "ad_server") else _visible(state, who, campaign_id)
        for cid in ids:
            if cid not in state.catalog:
                raise HTTPException(404, f"campaign_id {cid!r} not found")
        reader = BudgetReader(state.redis, state.catalog, state.keys)
        states = await reader.states(ids, at if at is not None else int(time.time() * 1000))
        # The ad server's hot path: orjson encodes the dataclasses directly (the schema above
        # documents them), skipping a validation pass over values this process just built.
        return Response(orjson.dumps(states), media_type="application/json")  # type: ignore[return-value]

    return app


def app_from_env() -> FastAPI:
    """Uvicorn factory: ``uvicorn --factory reporting.api:app_from_env``."""
    return create_app(ApiSettings())
