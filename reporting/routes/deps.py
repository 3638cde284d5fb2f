"""What the routers share: the running ``State``, the caller's key, the campaigns a key may see.

The routers hold nothing of their own: a route reaches what the lifespan opened through ``core``
(``app.state.core``), so one module-level router serves any app ``create_app`` builds.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader

from reporting.auth import ApiKey
from reporting.errors import CampaignNotFound
from reporting.middleware import CALLER
from reporting.problems import openapi_responses
from reporting.state import State

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)
_UNSET = object()


def core(request: Request) -> State:
    """The state the app's lifespan opened."""
    return request.app.state.core  # type: ignore[no-any-return]


def caller(request: Request, key: Annotated[str | None, Security(api_key_header)]) -> ApiKey:
    """The key's owner; 401 for a missing or unknown key (every route depends on this)."""
    found = getattr(request.state, CALLER, _UNSET)  # the rate limiter identified it already
    if found is _UNSET:
        found = core(request).keyring.identify(key)
    if not isinstance(found, ApiKey):
        raise HTTPException(401, "a valid X-API-Key header is required")
    return found


# The dependencies are ``async``: FastAPI runs a plain ``def`` dependency in its thread pool, two
# thread hops a request for an attribute read and a hash lookup.
async def _core(request: Request) -> State:
    return core(request)


async def _caller(request: Request, key: Annotated[str | None, Security(api_key_header)]) -> ApiKey:
    return caller(request, key)


# Module level: FastAPI resolves string annotations (from __future__) in the globals of the module
# that declares the route, so a route module imports these names rather than spelling them out.
KeyHeader = Annotated[str | None, Security(api_key_header)]
Caller = Annotated[ApiKey, Depends(_caller)]
Core = Annotated[State, Depends(_core)]
KEYED = openapi_responses(401, 413, 414, 429, 431, 500)


def visible(state: State, who: ApiKey, campaign_ids: list[str] | None) -> list[str]:
    """The campaigns among ``campaign_ids`` the key may read (all its campaigns when none is named);
    404 for one it may not."""
    allowed = [
        c.campaign_id for c in state.catalog if who.role == "admin" or c.advertiser_id == who.advertiser_id
    ]
    if not campaign_ids:
        return allowed
    for cid in campaign_ids:
        if cid not in allowed:  # another advertiser's campaign looks exactly like a missing one
            raise CampaignNotFound(cid)
    return list(dict.fromkeys(campaign_ids))
