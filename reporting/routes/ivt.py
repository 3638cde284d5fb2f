"""Invalid traffic: ``/v1/ivt``, per day, campaign and reason.

Days the nightly job has judged come from its verdicts in the lake (``ivt/dt=``), the others from
the speed layer's day hashes in Redis, never both for one day (``realtime.views.ivt_summaries``,
what ``attribution ivt report`` reads for the judged days too).
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import date, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query

from realtime.views import ivt_summaries
from reporting.auth import ApiKey
from reporting.errors import InvalidParameter
from reporting.problems import openapi_responses
from reporting.routes.deps import KEYED, Caller, Core, visible
from reporting.schemas import IvtReport
from reporting.state import State

MAX_RANGE_DAYS = 366

router = APIRouter(tags=["reports"])


@router.get("/v1/ivt", response_model=IvtReport, responses={**KEYED, **openapi_responses(403, 404, 422)})
async def ivt(
    who: Caller,
    state: Core,
    start: Annotated[date, Query(description="first day (UTC), YYYY-MM-DD")],
    end: Annotated[date, Query(description="last day (UTC), inclusive")],
    campaign_id: Annotated[list[str] | None, Query(max_length=500)] = None,
) -> dict[str, Any]:
    """Invalid traffic per day, campaign and reason of the key's campaigns: touches judged
    invalid, orders whose winner a verdict changed or left unattributed, orders only flagged
    (report mode) and the charges avoided (minor units of the campaign's currency)."""
    rows = await ivt_rows(state, who, start, end, campaign_id)
    return {"rows": rows, "start": start, "end": end}


async def ivt_rows(
    state: State, who: ApiKey, start: date, end: date, campaign_ids: list[str] | None
) -> list[dict[str, Any]]:
    """The rows of ``/v1/ivt`` (``IvtReportRow``s, sorted by day, campaign, reason): what the route
    answers and what the console shows, one code path for both."""
    if who.role == "ad_server":
        raise HTTPException(403, "an ad-server key may read budget state only")
    if end < start:
        raise InvalidParameter("end", end.isoformat(), f"must not be before start ({start.isoformat()})")
    if (end - start).days + 1 > MAX_RANGE_DAYS:
        raise InvalidParameter("end", end.isoformat(), f"at most {MAX_RANGE_DAYS} days per query")
    wanted = set(visible(state, who, campaign_ids))
    days = [(start + timedelta(days=i)).isoformat() for i in range((end - start).days + 1)]
    out = []
    for summary, source in await ivt_summaries(state.lake, state.redis, state.keys, days):
        if summary.campaign_id not in wanted:
            continue
        campaign = state.catalog.get(summary.campaign_id)
        row = asdict(summary)
        row["day"] = row.pop("dt")
        row["currency"] = row["currency"] or (campaign.currency if campaign is not None else None)
        row["source"] = source
        out.append(row)
    out.sort(key=lambda r: (r["day"], r["campaign_id"], r["reason"]))
    return out
