"""Every error the API answers, as one RFC 9457 problem (``application/problem+json``).

``install`` registers one handler for the error tree (mapped by ``reporting.errors.problem_of``),
for client connection errors (503), for FastAPI's parameter validation (422 naming the
parameter), for HTTP exceptions (401, 403, the router's 404 and 405) and for anything else
(500). The middlewares (``reporting.middleware``) answer their refusals (413, 414, 429, 431)
with ``problem_response`` too, so no route and no limit ever answers plain text.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from reporting.errors import INVALID_PARAMETER, Problem, problem_of, unavailable_classes
from shared_logic.errors import AttributionError, short_repr

log = logging.getLogger(__name__)
MEDIA_TYPE = "application/problem+json"
_WHERE = ("query", "path", "header", "cookie", "body")


class ProblemResponse(JSONResponse):
    media_type = MEDIA_TYPE


def problem_response(problem: Problem, instance: str, headers: Mapping[str, str] | None = None) -> Response:
    """The HTTP response of a problem at ``instance`` (the request's path, never its query)."""
    return ProblemResponse(
        problem.body(instance), status_code=problem.status, headers={**problem.headers, **(headers or {})}
    )


def validation_problem(exc: RequestValidationError) -> Problem:
    """A 422 naming the first parameter at fault, its value cut short, and the rule it broke."""
    errors = exc.errors()
    err = errors[0] if errors else {}
    loc = [str(part) for part in err.get("loc", ())]
    # ("query", "model", 0): the parameter is the part after where it came from.
    name = loc[1] if len(loc) > 1 and loc[0] in _WHERE else ".".join(loc) or "?"
    if err.get("type") == "missing":
        detail = f"parameter {name!r} is required"
    else:
        detail = f"invalid parameter {name!r} = {short_repr(err.get('input'))}: {err.get('msg', 'invalid')}"
    if len(errors) > 1:
        detail += f" (and {len(errors) - 1} more)"
    return Problem(422, detail, INVALID_PARAMETER, "Invalid parameter", name)


def http_problem(exc: StarletteHTTPException) -> Problem:
    """401, 403, 404 and 405 of the router, and the like: ``about:blank`` with the status phrase."""
    detail = exc.detail if isinstance(exc.detail, str) else short_repr(exc.detail)
    return Problem(exc.status_code, detail, headers=dict(exc.headers or {}))


def problem_for(exc: BaseException) -> Problem:
    if isinstance(exc, RequestValidationError):
        return validation_problem(exc)
    if isinstance(exc, StarletteHTTPException):
        return http_problem(exc)
    return problem_of(exc)


async def handle(request: Request, exc: Exception) -> Response:
    """The one exception handler: every error becomes a problem."""
    problem = problem_for(exc)
    if problem.status == 503:
        log.warning("%s %s: %s: %s", request.method, request.url.path, type(exc).__name__, problem.detail)
    elif problem.status >= 500 and isinstance(exc, AttributionError):
        # Other exceptions reach Starlette's ServerErrorMiddleware, which logs them itself.
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return problem_response(problem, request.url.path)


def install(app: FastAPI) -> None:
    """Register ``handle`` for every error (``Exception`` last: Starlette's outermost 500 handler)."""
    classes: tuple[type[Exception], ...] = (
        RequestValidationError,
        StarletteHTTPException,
        AttributionError,
        *unavailable_classes(),
        Exception,
    )
    for cls in classes:
        app.add_exception_handler(cls, handle)


def openapi_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for error statuses, each a ``ProblemDetails`` (``as_problem_media_type``
    then moves them to ``application/problem+json``)."""
    from reporting.schemas import ProblemDetails

    return {status: {"model": ProblemDetails} for status in statuses}


def as_problem_media_type(schema: dict[str, Any]) -> dict[str, Any]:
    """An OpenAPI document with every 4xx and 5xx body declared as ``application/problem+json``."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            for status, response in operation.get("responses", {}).items():
                content = response.get("content", {})
                if str(status)[0] in "45" and "application/json" in content:
                    content[MEDIA_TYPE] = content.pop("application/json")
    return schema
