"""The console's pages, their CSV downloads and today's figures as JSON (``/console/...``).

Every page needs a session (``reporting.console.session``); without one it sends the browser to
the sign-in page, and the CSV and JSON routes answer 401. Pages take ``start``/``end`` (UTC days,
default the last 7 days), an admin's ``advertiser`` pick, and their own choices; a bad value
shows the problem on the page, naming the parameter and its value.
"""

from __future__ import annotations

import csv
import hmac
import io
import secrets
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode, urlsplit

from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates

from reporting.auth import ApiKey
from reporting.console import data
from reporting.console.charts import Series, line_chart
from reporting.console.middleware import SESSION, SESSIONS
from reporting.console.session import COOKIE, CSRF_COOKIE, Session, Sessions
from reporting.errors import InvalidParameter
from reporting.middleware import CALLER
from reporting.problems import problem_for, problem_response, validation_problem
from reporting.routes.deps import core, visible
from shared_logic.contract import BILLING_MODEL, REPORT_MODELS
from shared_logic.errors import InvalidInput, NotFound
from shared_logic.money import format_minor

HERE = Path(__file__).parent
STATIC = HERE / "static"
STATIC_FILES = {p.name: p for p in STATIC.iterdir() if p.is_file()}
templates = Jinja2Templates(directory=str(HERE / "templates"))
DEFAULT_DAYS = 7
REFRESH_S = 5
NAV = (
    ("overview", "/console", "Overview"),
    ("roas", "/console/roas", "ROAS by day"),
    ("budget", "/console/budget", "Budget today"),
    ("reconciliation", "/console/reconciliation", "Reconciliation"),
    ("invalid", "/console/invalid-traffic", "Invalid traffic"),
)


class SignInFirst(Exception):
    """No open session (none, expired, signed out, or its key revoked)."""


class ConsoleRoute(APIRoute):
    """Pages answer problems as a page (a status and what was wrong); a missing session sends a
    page to the sign-in form, and a CSV or JSON request gets 401."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        data_route = self.path.endswith(".json") or "/csv/" in self.path

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except SignInFirst:
                if data_route:
                    raise HTTPException(401, "sign in to the console first") from None
                return RedirectResponse("/console/sign-in", status_code=303)
            except (InvalidInput, NotFound, HTTPException, RequestValidationError) as exc:
                if data_route:
                    raise
                if isinstance(exc, RequestValidationError):
                    problem = validation_problem(exc)
                else:
                    problem = problem_for(exc)
                return _page(
                    request,
                    "problem.html",
                    {"problem": problem, "who": _who_or_none(request)},
                    status=problem.status,
                )

        return route


router = APIRouter(prefix="/console", include_in_schema=False, route_class=ConsoleRoute)


def _sessions(request: Request) -> Sessions:
    return getattr(request.state, SESSIONS)  # type: ignore[no-any-return]  # set by ConsoleSessions


def _who_or_none(request: Request) -> ApiKey | None:
    session: Session | None = getattr(request.state, SESSION, None)
    if session is None:
        return None
    found = getattr(request.state, CALLER, None)  # the rate limiter identified the session's key
    if not isinstance(found, ApiKey):
        found = core(request).keyring.identify(session.key)
    return found


def signed_in(request: Request) -> tuple[ApiKey, Session]:
    who = _who_or_none(request)
    session: Session | None = getattr(request.state, SESSION, None)
    if who is None or session is None:
        raise SignInFirst
    return who, session


def _page(request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
    return templates.TemplateResponse(
        request, name, {"format_minor": _money, "format_orders": _orders, **context}, status_code=status
    )


def _money(amount: float | None, currency: str | None) -> str:
    if amount is None or currency is None:
        return "-"
    return format_minor(round(amount), currency)


def _orders(orders: float, model: str) -> str:
    """The billing model counts whole orders; a multi-touch model's credit splits them (2 decimals)."""
    return f"{round(orders):,}" if model == BILLING_MODEL else f"{orders:,.2f}"


def _same_origin(request: Request) -> bool:
    """A POST's Origin (when the browser sends one) names this site."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.headers.get("host", "")


# Sign-in and sign-out ----------------------------------------------------------------------------


@router.get("/sign-in")
async def sign_in_form(request: Request) -> Response:
    token = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(24)
    response = _page(request, "sign_in.html", {"csrf": token, "who": None, "error": None})
    _set_cookie(request, response, CSRF_COOKIE, token, 3600)
    return response


@router.post("/sign-in")
async def sign_in(
    request: Request,
    api_key: Annotated[str, Form(max_length=200)],
    csrf: Annotated[str, Form(max_length=100)],
) -> Response:
    expected = request.cookies.get(CSRF_COOKIE)
    if not expected or not hmac.compare_digest(expected, csrf) or not _same_origin(request):
        return _refused(request)
    who = core(request).keyring.identify(api_key.strip())
    error = None
    if who is None:
        error = "This key is not known (or has been revoked)."
    elif who.role == "ad_server":
        error = "An ad-server key reads budget state only; sign in with an advertiser or admin key."
    if error is not None:
        return _page(request, "sign_in.html", {"csrf": expected, "who": None, "error": error}, status=401)
    token, _ = _sessions(request).issue(api_key.strip())
    response = RedirectResponse("/console", status_code=303)
    _set_cookie(request, response, COOKIE, token, _sessions(request).ttl_s)
    response.delete_cookie(CSRF_COOKIE, path="/")
    return response


@router.post("/sign-out")
async def sign_out(request: Request, csrf: Annotated[str, Form(max_length=100)]) -> Response:
    _, session = signed_in(request)
    if not _sessions(request).csrf_ok(session, csrf) or not _same_origin(request):
        return _refused(request)
    await _sessions(request).end(session)
    response = RedirectResponse("/console/sign-in", status_code=303)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response


def _refused(request: Request) -> Response:
    return _page(
        request,
        "problem.html",
        {
            "who": None,
            "problem": problem_for(
                HTTPException(403, "the form's CSRF token or origin is not this console's: reload the page")
            ),
        },
        status=403,
    )


def _set_cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


# Shared page parameters --------------------------------------------------------------------------

Start = Annotated[date | None, Query(description="first day (UTC)")]
End = Annotated[date | None, Query(description="last day (UTC), inclusive")]
Advertiser = Annotated[str | None, Query(max_length=200)]


def _range(start: date | None, end: date | None) -> tuple[date, date]:
    end = end or datetime.now(UTC).date()
    return start or end - timedelta(days=DEFAULT_DAYS - 1), end


def _common(
    request: Request, who: ApiKey, session: Session, scope: data.Scope, start: date, end: date, active: str
) -> dict[str, Any]:
    keep = {"start": start.isoformat(), "end": end.isoformat()}
    if who.role == "admin" and scope.advertiser_id:
        keep["advertiser"] = scope.advertiser_id
    return {
        "who": who,
        "scope": scope,
        "csrf": _sessions(request).csrf(session),
        "expires": datetime.fromtimestamp(session.expires_at, UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "advertisers": data.advertisers(core(request)) if who.role == "admin" else [],
        "start": start,
        "end": end,
        "nav": NAV,
        "active": active,
        "keep": keep,
        "qs": lambda **more: urlencode(
            {**keep, **{k: v for k, v in more.items() if v is not None}}, doseq=True
        ),
        "refresh_s": REFRESH_S,
    }


# Overview ----------------------------------------------------------------------------------------

SORTABLE = {
    "campaign_id": "Campaign",
    "spend_minor": "Spend (range)",
    "remaining_minor": "Remaining",
    "spend_today_minor": "Spend today",
    "orders": "Orders",
    "revenue_minor": "Revenue",
    "roas": "ROAS",
}


@router.get("")
async def overview_page(
    request: Request,
    start: Start = None,
    end: End = None,
    advertiser: Advertiser = None,
    model: Annotated[str, Query(max_length=40)] = BILLING_MODEL,
    sort: Annotated[str, Query(max_length=40)] = "campaign_id",
    desc: bool = False,
) -> Response:
    who, session = signed_in(request)
    state = core(request)
    scope = data.scope_of(state, who, advertiser)
    first, last = _range(start, end)
    model = _model(model)
    table = await data.overview(state, scope, first, last, model)
    rows = data.sort_rows(table.rows, sort, desc)
    return _page(
        request,
        "overview.html",
        {
            **_common(request, who, session, scope, first, last, "overview"),
            "rows": rows,
            "model": model,
            "models": REPORT_MODELS,
            "sort": sort,
            "desc": desc,
            "sortable": SORTABLE,
            "batch_through": table.batch_through,
        },
    )


def _model(model: str) -> str:
    if model not in REPORT_MODELS:
        raise InvalidParameter("model", model, f"must be one of {', '.join(REPORT_MODELS)}")
    return model


# ROAS by day -------------------------------------------------------------------------------------


@router.get("/roas")
async def roas_page(
    request: Request,
    start: Start = None,
    end: End = None,
    advertiser: Advertiser = None,
    campaign_id: Annotated[str | None, Query(max_length=200)] = None,
    model: Annotated[list[str] | None, Query()] = None,
) -> Response:
    who, session = signed_in(request)
    state = core(request)
    scope = data.scope_of(state, who, advertiser)
    first, last = _range(start, end)
    models = [_model(m) for m in model] if model else list(REPORT_MODELS)
    daily = await data.daily(state, scope, first, last, campaign_id or None, models)
    index = {d: i for i, d in enumerate(daily.days)}
    series = []
    for m in models:
        mine = [r for r in daily.rows if r["model"] == m and r["roas"] is not None]
        series.append(
            Series(
                m,
                [(index[r["day"]], r["roas"]) for r in mine],
                [f"{r['day']}: ROAS {r['roas']:.3f} ({r['source']})" for r in mine],
            )
        )
    step = max(1, len(daily.days) // 8)
    chart = line_chart(
        "ROAS by day, one line per model",
        series,
        (0, max(len(daily.days) - 1, 1)),
        [(i, d[5:]) for i, d in enumerate(daily.days) if i % step == 0],
        "ROAS",
        "roas-chart",
    )
    return _page(
        request,
        "roas.html",
        {
            **_common(request, who, session, scope, first, last, "roas"),
            "daily": daily,
            "chart": chart,
            "models": REPORT_MODELS,
            "chosen": models,
            "campaign_id": campaign_id or "",
        },
    )


# Budget today ------------------------------------------------------------------------------------


@router.get("/budget")
async def budget_page(
    request: Request,
    advertiser: Advertiser = None,
    campaign_id: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    who, session = signed_in(request)
    state = core(request)
    scope = data.scope_of(state, who, advertiser)
    first, last = _range(None, None)
    rows = await data.budget_today(state, scope)
    if campaign_id and campaign_id not in scope.campaign_ids:
        visible(state, who, [campaign_id])  # 404 for another advertiser's campaign
        raise InvalidParameter("campaign_id", campaign_id, "is not one of the chosen advertiser's campaigns")
    capped = [r for r in rows if r["daily_cap_minor"] is not None]
    chosen = [r for r in rows if r["campaign_id"] == campaign_id]
    shown = next(iter(chosen or capped or rows), None)
    chart = None
    if shown is not None:
        series = [
            Series(
                "spend today",
                [(0.0, 0.0), (shown["day_elapsed"], float(shown["spend_day_minor"]))],
                ["budget day starts", _money(shown["spend_day_minor"], shown["currency"])],
            )
        ]
        if shown["daily_cap_minor"] is not None:
            cap = float(shown["daily_cap_minor"])
            series.append(Series("daily cap", [(0.0, cap), (1.0, cap)], ["cap", "cap"], dashed=True))
        chart = line_chart(
            f"Budget burn today for {shown['campaign_id']} ({shown['timezone']})",
            series,
            (0.0, 1.0),
            [(h / 24, f"{h:02d}:00") for h in range(0, 25, 4)],
            f"spend, {shown['currency']} minor units",
            "burn-chart",
            y_max=float(shown["daily_cap_minor"] or 0),
            slots=("pacing target", "serve probability"),
        )
    return _page(
        request,
        "budget.html",
        {
            **_common(request, who, session, scope, first, last, "budget"),
            "rows": rows,
            "shown": shown,
            "chart": chart,
        },
    )


@router.get("/today.json")
async def today_json(request: Request, advertiser: Advertiser = None) -> Response:
    """Today's budget state of the page's campaigns, for the page to refresh itself."""
    who, _ = signed_in(request)
    scope = data.scope_of(core(request), who, advertiser)
    rows = await data.budget_today(core(request), scope)
    for r in rows:
        r["display"] = {
            "spend_day": _money(r["spend_day_minor"], r["currency"]),
            "remaining": _money(r["remaining_minor"], r["currency"]),
            "pacing": "-" if r["pacing"] is None else f"{r['pacing']:.2f}",
            "exhausted": "exhausted" if r["exhausted"] else "serving",
        }
    return JSONResponse({"at_ms": int(time.time() * 1000), "campaigns": rows})


# Reconciliation and invalid traffic ---------------------------------------------------------------


@router.get("/reconciliation")
async def reconciliation_page(
    request: Request, start: Start = None, end: End = None, advertiser: Advertiser = None
) -> Response:
    who, session = signed_in(request)
    state = core(request)
    scope = data.scope_of(state, who, advertiser)
    first, last = _range(start, end)
    report = await data.reconciliation(state, scope.campaign_ids, first, last)
    return _page(
        request,
        "reconciliation.html",
        {
            **_common(request, who, session, scope, first, last, "reconciliation"),
            "report": report,
            "causes": data.CAUSES,
        },
    )


@router.get("/invalid-traffic")
async def invalid_traffic_page(
    request: Request, start: Start = None, end: End = None, advertiser: Advertiser = None
) -> Response:
    who, session = signed_in(request)
    state = core(request)
    scope = data.scope_of(state, who, advertiser)
    first, last = _range(start, end)
    rows = await data.invalid_traffic(state, scope, first, last)
    return _page(
        request,
        "invalid.html",
        {**_common(request, who, session, scope, first, last, "invalid"), "rows": rows},
    )


# CSV downloads -----------------------------------------------------------------------------------

CSV_TABLES = (
    "overview",
    "roas-daily",
    "roas-models",
    "budget",
    "reconciliation-days",
    "reconciliation-campaigns",
    "invalid-traffic",
)


@router.get("/csv/{table}.csv")
async def csv_download(
    request: Request,
    table: str,
    start: Start = None,
    end: End = None,
    advertiser: Advertiser = None,
    model: Annotated[list[str] | None, Query()] = None,
    campaign_id: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    """What the table of the same name shows, in integer minor units with the currency."""
    who, _ = signed_in(request)
    state = core(request)
    scope = data.scope_of(state, who, advertiser)
    first, last = _range(start, end)
    columns: tuple[str, ...]
    if table == "overview":
        chosen = _model(model[0]) if model else BILLING_MODEL
        rows, columns = (await data.overview(state, scope, first, last, chosen)).rows, data.OVERVIEW_COLUMNS
    elif table in ("roas-daily", "roas-models"):
        models = [_model(m) for m in model] if model else list(REPORT_MODELS)
        daily = await data.daily(state, scope, first, last, campaign_id or None, models)
        if daily.problem:
            raise InvalidParameter("campaign_id", campaign_id or "", daily.problem)
        rows, columns = (
            (daily.rows, data.DAILY_COLUMNS)
            if table == "roas-daily"
            else (daily.comparison, data.COMPARISON_COLUMNS)
        )
    elif table == "budget":
        rows, columns = await data.budget_today(state, scope), data.BUDGET_COLUMNS
    elif table in ("reconciliation-days", "reconciliation-campaigns"):
        report = await data.reconciliation(state, scope.campaign_ids, first, last)
        rows, columns = (
            (report.days, data.RECONCILIATION_DAY_COLUMNS)
            if table == "reconciliation-days"
            else (report.campaigns, data.RECONCILIATION_CAMPAIGN_COLUMNS)
        )
    elif table == "invalid-traffic":
        rows, columns = await data.invalid_traffic(state, scope, first, last), data.IVT_COLUMNS
    else:
        raise InvalidParameter("table", table, f"must be one of {', '.join(CSV_TABLES)}")
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    name = f"{table}-{first.isoformat()}-{last.isoformat()}.csv"
    return Response(
        out.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


# Static files ------------------------------------------------------------------------------------


@router.get("/static/{name}")
async def static(request: Request, name: str) -> Response:
    path = STATIC_FILES.get(name)
    if path is None:
        return problem_response(problem_for(HTTPException(404, f"no static file {name!r}")), request.url.path)
    return FileResponse(path)
