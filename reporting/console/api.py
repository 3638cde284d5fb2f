"""``/v1/reconciliation``: the nightly reconciliation per closed day, as JSON (``X-API-Key``).

The console's reconciliation view and its CSV read the same function
(``reporting.console.data.reconciliation``).
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query

from reporting.console.data import reconciliation
from reporting.problems import openapi_responses
from reporting.routes.deps import KEYED, Caller, Core, visible

router = APIRouter(tags=["reports"])


@router.get("/v1/reconciliation", responses={**KEYED, **openapi_responses(403, 404, 422)})
async def reconciliation_report(
    who: Caller,
    state: Core,
    start: Annotated[date, Query(description="first day (UTC), YYYY-MM-DD")],
    end: Annotated[date, Query(description="last day (UTC), inclusive")],
    campaign_id: Annotated[list[str] | None, Query(max_length=500)] = None,
) -> dict[str, Any]:
    """Per reconciled day: orders compared between the speed layer's ledger and the batch billing
    rule, those that differ by cause, and each campaign's spend in both layers where they differ.
    An advertiser's key counts only orders its campaigns took part in; days not reconciled (yet)
    are listed as ``unreconciled``."""
    if who.role == "ad_server":
        raise HTTPException(403, "an ad-server key may read budget state only")
    ids = visible(state, who, campaign_id)
    return asdict(await reconciliation(state, ids, start, end))
