"""Operations: ``/metrics`` (Prometheus), ``/health`` (the process answers), ``/ready`` (Redis and
the analytics store answer too)."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from datetime import date, timedelta
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import PlainTextResponse, Response

from realtime.views import speed_ivt
from reporting.errors import UNAVAILABLE, Problem
from reporting.metrics import ApiMetrics, ivt_exposition
from reporting.problems import openapi_responses, problem_response
from reporting.routes.deps import KEYED, Caller, Core, KeyHeader, caller, core
from reporting.schemas import Health
from reporting.state import State
from shared_logic.contract import IvtSummary
from shared_logic.timeutil import MS_PER_DAY, utc_day

router = APIRouter(tags=["ops"])
log = logging.getLogger(__name__)


def metrics_access(request: Request, key: KeyHeader) -> None:
    if not core(request).settings.api.metrics_public and caller(request, key).role != "admin":
        raise HTTPException(403, "/metrics needs an admin key")


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    dependencies=[Depends(metrics_access)],
    responses=openapi_responses(403),
)
async def metrics(request: Request, state: Core) -> Response:
    """Prometheus text format: requests and latency by route and status, 429s by role, limiter
    errors; invalid traffic per day, campaign and reason of the speed layer's open days."""
    counters: ApiMetrics = request.app.metrics  # the app's, which its middlewares count in
    body, content_type = counters.render()
    try:  # the API's own counters answer even when Redis or the store does not
        ivt = await asyncio.wait_for(open_day_ivt(state), 5)
    except Exception as exc:
        log.warning("/metrics without invalid traffic: %s: %s", type(exc).__name__, exc)
        ivt = []
    return Response(body + ivt_exposition(ivt), media_type=content_type)


async def open_day_ivt(state: State) -> list[IvtSummary]:
    """The speed layer's verdicts (``realtime.views.speed_ivt``) of the days ``/v1/roas`` reads
    from it: after the batch view's last, up to today (UTC), whose keys can still exist."""
    now_ms = int(time.time() * 1000)
    async with state.lock:
        batch_through = await state.batch_through()
    today = date.fromisoformat(utc_day(now_ms))
    back = state.retention.counts_ms // MS_PER_DAY + 1
    days = [(today - timedelta(days=i)).isoformat() for i in range(back, -1, -1)]
    days = [d for d in days if batch_through is None or d > batch_through.isoformat()]
    found = await speed_ivt(state.redis, state.keys, state.retention.days(days, now_ms, "counts"))
    out = []
    for s in found:  # a reason with touch verdicts only has no currency: the campaign's
        campaign = state.catalog.get(s.campaign_id)
        out.append(replace(s, currency=s.currency or (campaign.currency if campaign else None)))
    return out


@router.get("/health", response_model=Health, responses=KEYED)
async def health(_: Caller) -> Health:
    return Health(status="ok")


@router.get("/ready", response_model=Health, responses={**KEYED, **openapi_responses(503)})
async def ready(request: Request, _: Caller, state: Core) -> Any:
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
