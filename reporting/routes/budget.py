"""Budget state for the ad server: ``/v1/budget``, read from Redis at a moment (default now), and
``/v1/answer``, one ad request's answer (``serving``: the read model the ad server's own client
uses too)."""

from __future__ import annotations

import time
from typing import Annotated

import orjson
from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import Response

from realtime.budget import BudgetReader, BudgetState
from reporting.auth import ApiKey
from reporting.errors import CampaignNotFound
from reporting.problems import openapi_responses
from reporting.routes.deps import KEYED, Caller, Core, visible
from reporting.state import State
from serving import AdAnswer

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
    states = await budget_states(state, who, campaign_id, at if at is not None else int(time.time() * 1000))
    # The ad server's hot path: orjson encodes the dataclasses directly (the schema above
    # documents them), skipping a validation pass over values this process just built.
    return Response(orjson.dumps(states), media_type="application/json")  # type: ignore[return-value]


async def budget_states(state: State, who: ApiKey, campaign_ids: list[str], at_ms: int) -> list[BudgetState]:
    """The budget state of ``campaign_ids`` at ``at_ms`` as ``/v1/budget`` answers it (404 for a
    campaign the key may not see): the route and the console read it here."""
    ids = campaign_ids if who.role in ("admin", "ad_server") else visible(state, who, campaign_ids)
    for cid in ids:
        if cid not in state.catalog:
            raise CampaignNotFound(cid)
    reader = BudgetReader(state.redis, state.catalog, state.keys, state.settings.pacing.config())
    return await reader.states(ids, at_ms)


@router.get(
    "/v1/answer",
    response_model=list[AdAnswer],
    responses={**KEYED, **openapi_responses(403, 422, 503)},
)
async def answer(
    who: Caller,
    state: Core,
    user_id: Annotated[str, Query(min_length=1, max_length=256)],
    campaign_id: Annotated[list[str], Query(min_length=1, max_length=500)],
    at: Annotated[
        int | None,
        Query(
            description="epoch ms to answer at; default now",
            ge=946_684_800_000,
            lt=4_102_444_800_000,
        ),
    ] = None,
) -> list[AdAnswer]:
    """For one user and its candidate campaigns: servable or why not, the serve probability, what
    is left, the pacing state's age. An unknown campaign answers ``unknown``, not 404: an ad
    server's candidate list may run ahead of the catalog."""
    if who.role not in ("admin", "ad_server"):
        raise HTTPException(403, "the ad request answer is for ad-server keys")
    now = at if at is not None else int(time.time() * 1000)
    answers = await state.answers.answer(user_id, campaign_id, now)
    return Response(orjson.dumps(answers), media_type="application/json")  # type: ignore[return-value]
