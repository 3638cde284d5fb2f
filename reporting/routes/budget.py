"""Budget state for the ad server: ``/v1/budget``, read from Redis at a moment (default now)."""

from __future__ import annotations

import time
from typing import Annotated

import orjson
from fastapi import APIRouter, Query
from fastapi.responses import Response

from realtime.budget import BudgetReader, BudgetState
from reporting.errors import CampaignNotFound
from reporting.problems import openapi_responses
from reporting.routes.deps import KEYED, Caller, Core, visible

router = APIRouter(tags=["budget"])


@router.get(
    "/v1/budget",
    response_model=list[BudgetState],
    responses={**KEYED, **openapi_responses(404, 422, 503)},
)
async def budget(
    who: Caller,
    state: Core,
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
    ids = campaign_id if who.role in ("admin", "ad_server") else visible(state, who, campaign_id)
    for cid in ids:
        if cid not in state.catalog:
            raise CampaignNotFound(cid)
    reader = BudgetReader(state.redis, state.catalog, state.keys)
    states = await reader.states(ids, at if at is not None else int(time.time() * 1000))
    # The ad server's hot path: orjson encodes the dataclasses directly (the schema above
    # documents them), skipping a validation pass over values this process just built.
    return Response(orjson.dumps(states), media_type="application/json")  # type: ignore[return-value]
