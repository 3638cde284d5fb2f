"""Operations: ``/metrics`` (Prometheus), ``/health`` (the process answers), ``/ready`` (Redis and
the analytics store answer too)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import PlainTextResponse, Response

from reporting.errors import UNAVAILABLE, Problem
from reporting.metrics import ApiMetrics
from reporting.problems import openapi_responses, problem_response
from reporting.routes.deps import KEYED, Caller, Core, KeyHeader, caller, core
from reporting.schemas import Health

router = APIRouter(tags=["ops"])


def metrics_access(request: Request, key: KeyHeader) -> None:
    if not core(request).settings.api.metrics_public and caller(request, key).role != "admin":
        raise HTTPException(403, "/metrics needs an admin key")


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    dependencies=[Depends(metrics_access)],
    responses=openapi_responses(403),
)
async def metrics(request: Request) -> Response:
    """Prometheus text format: requests and latency by route and status, 429s by role, limiter errors."""
    counters: ApiMetrics = request.app.metrics  # the app's, which its middlewares count in
    body, content_type = counters.render()
    return Response(body, media_type=content_type)


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
