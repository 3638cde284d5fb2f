"""Budget state for the ad server: ``/v1/budget``, read from Redis at a moment (default now), and
``/v1/answer``, one ad request's answer (``serving``: the read model the ad server's own client
uses too)."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Annotated

import orjson
from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import Response
from starlette.datastructures import QueryParams

from realtime.budget import BudgetReader, BudgetState
from reporting.auth import ApiKey
from reporting.errors import CampaignNotFound
from reporting.middleware import DeferredLimit, Refused
from reporting.problems import openapi_responses
from reporting.routes.deps import KEYED, Caller, Core, visible
from reporting.state import State
from serving import AdAnswer
from serving.answer import MAX_CANDIDATES
from shared_logic.timeutil import MAX_EPOCH_MS, MIN_EPOCH_MS

router = APIRouter(tags=["budget"])
#: The ad server's reads: ``reporting.lane.AdServerLane`` answers a plainly valid request to either
#: before the framework sees it (``plain_budget``, ``plain_answer``); the endpoints below answer
#: every other request.
BUDGET_PATH = "/v1/budget"
ANSWER_PATH = "/v1/answer"
MAX_BUDGET_IDS = 1000


@router.get(
    BUDGET_PATH,
    response_model=list[BudgetState],
    responses={**KEYED, **openapi_responses(404, 422, 503)},
)
async def budget(
    who: Caller,
    state: Core,
    campaign_id: Annotated[list[str], Query(min_length=1, max_length=MAX_BUDGET_IDS)],
    at: Annotated[
        int | None,
        Query(
            description="epoch ms to read the budget day at; default now",
            ge=MIN_EPOCH_MS,
            lt=MAX_EPOCH_MS,
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


#: The roles ``/v1/answer`` serves, and the bounds of its query (the endpoint's ``Query`` rules).
ANSWER_ROLES = ("admin", "ad_server")
MAX_USER_ID = 256
#: ``at`` as the ad server's lane takes it: plain ASCII digits, no sign, no leading zero (12 or 13 digits
#: hold every value the bounds allow); any other spelling is left to FastAPI's validation.
_PLAIN_MS = re.compile(r"[1-9][0-9]{11,12}")


def answer_query(raw: bytes) -> tuple[str | None, list[str], str | None]:
    """``user_id`` (its last value), every ``campaign_id`` and ``at`` (its last value) of a query
    string, as Starlette's ``QueryParams`` reads them (``parse_qsl`` over the Latin-1 text, blank
    values kept). A query without ``%`` or ``+`` needs no unquoting, so it is split here: parsing
    every pair of 50 ids took about 50 us a request."""
    if b"%" in raw or b"+" in raw:
        query = QueryParams(raw)
        return query.get("user_id"), query.getlist("campaign_id"), query.get("at")
    user_id = at = None
    campaign_ids: list[str] = []
    for pair in raw.decode("latin-1").split("&"):
        name, _, value = pair.partition("=")
        if name == "campaign_id":
            campaign_ids.append(value)
        elif name == "user_id":
            user_id = value
        elif name == "at":
            at = value
    return user_id, campaign_ids, at


@dataclass(frozen=True, slots=True)
class PlainAnswer:
    """An ad request ``/v1/answer`` accepts as it is: an ad-server or admin key, a query no rule of
    the endpoint's ``Query`` parameters could refuse, ``at`` resolved (now when absent)."""

    who: ApiKey
    user_id: str
    campaign_ids: list[str]
    now_ms: int


def plain_answer(who: ApiKey | None, raw_query: bytes) -> PlainAnswer | None:
    """The request as ``reporting.lane.AdServerLane`` answers it, or None to leave it to FastAPI's
    handler (``answer``), whose 401, 403 and 422 are then exactly the endpoint's. Pure: it reads
    nothing and takes no token."""
    if not isinstance(who, ApiKey) or who.role not in ANSWER_ROLES:
        return None
    user_id, campaign_ids, at = answer_query(raw_query)
    if (
        user_id is None
        or not 1 <= len(user_id) <= MAX_USER_ID
        or not 1 <= len(campaign_ids) <= MAX_CANDIDATES
    ):
        return None
    now = _plain_now(at)
    return None if now is None else PlainAnswer(who, user_id, campaign_ids, now)


def _plain_now(at: str | None) -> int | None:
    """``at`` as both endpoints take it plainly (now when absent), or None to leave it to FastAPI's
    validation."""
    if at is None:
        return int(time.time() * 1000)
    if _PLAIN_MS.fullmatch(at) and MIN_EPOCH_MS <= int(at) < MAX_EPOCH_MS:
        return int(at)
    return None


@dataclass(frozen=True, slots=True)
class PlainBudget:
    """A budget read ``/v1/budget`` accepts as it is: a known key, 1 to ``MAX_BUDGET_IDS`` campaign
    ids, ``at`` resolved (now when absent)."""

    who: ApiKey
    campaign_ids: list[str]
    now_ms: int


def plain_budget(who: ApiKey | None, raw_query: bytes) -> PlainBudget | None:
    """The budget read as ``reporting.lane.AdServerLane`` answers it, or None to leave it to
    FastAPI's handler (``budget``). Pure, as ``plain_answer``."""
    if not isinstance(who, ApiKey):
        return None
    _, campaign_ids, at = answer_query(raw_query)
    if not 1 <= len(campaign_ids) <= MAX_BUDGET_IDS:
        return None
    now = _plain_now(at)
    return None if now is None else PlainBudget(who, campaign_ids, now)


async def budget_plain(state: State, plain: PlainBudget, deferred: DeferredLimit | None) -> Response:
    """The answer to a ``plain_budget`` read, exactly the endpoint's (the limit is checked before:
    ``deferred`` is always None here)."""
    states = await budget_states(state, plain.who, plain.campaign_ids, plain.now_ms)
    return Response(orjson.dumps(states), media_type="application/json")


async def answer_plain(state: State, plain: PlainAnswer, deferred: DeferredLimit | None) -> Response:
    """The answer to a ``plain_answer`` request. The limiter's check, when the caller left it
    (``DeferredLimit``), rides in the answer's pipeline; a refusal raises ``Refused`` and nothing is
    answered."""
    reader = state.answers
    if deferred is not None and not deferred.settled and deferred.limiter.redis is not reader.redis:
        problem = await deferred.check()  # another client: the limit on its own, first
        if problem is not None:
            raise Refused(problem)
    ahead = deferred if deferred is not None and not deferred.settled else None
    answers = await reader.answer(plain.user_id, plain.campaign_ids, plain.now_ms, ahead)
    return Response(orjson.dumps(answers), media_type="application/json")


async def answer(
    who: Caller,
    state: Core,
    user_id: Annotated[str, Query(min_length=1, max_length=MAX_USER_ID)],
    campaign_id: Annotated[list[str], Query(min_length=1, max_length=MAX_CANDIDATES)],
    at: Annotated[
        int | None,
        Query(description="epoch ms to answer at; default now", ge=MIN_EPOCH_MS, lt=MAX_EPOCH_MS),
    ] = None,
) -> list[AdAnswer]:
    """For one user and its candidate campaigns: servable or why not, the serve probability, what
    is left, the pacing state's age. An unknown campaign answers ``unknown``, not 404: an ad
    server's candidate list may run ahead of the catalog."""
    if who.role not in ANSWER_ROLES:
        raise HTTPException(403, "the ad request answer is for ad-server keys")
    now = at if at is not None else int(time.time() * 1000)
    answers = await state.answers.answer(user_id, campaign_id, now)
    return Response(orjson.dumps(answers), media_type="application/json")  # type: ignore[return-value]


router.add_api_route(
    "/v1/answer",
    answer,
    methods=["GET"],
    response_model=list[AdAnswer],
    responses={**KEYED, **openapi_responses(403, 422, 503)},
)
