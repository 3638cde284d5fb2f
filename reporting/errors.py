"""Errors of the reporting package (analytics stores, the API), and the HTTP problem of any error.

The API answers every error as an RFC 9457 problem (``application/problem+json``): ``type``,
``title``, ``status``, ``detail``, ``instance``, and ``parameter`` when one parameter is at
fault. ``problem_of`` maps the error tree's categories to it in one place, as ``cli.errors``
maps them to exit statuses; values are echoed through ``short_repr``, never whole.

| status | type | when |
| --- | --- | --- |
| 400 | about:blank | another input broke a rule |
| 404 | about:blank | a campaign the key cannot see (missing or another advertiser's: one answer) |
| 409 | about:blank | a valid request the state of the data forbids |
| 422 | ``…:invalid-parameter`` | a parameter broke a rule (``parameter`` names it) |
| 422 | ``…:cost-limit`` | a ROAS request over ``api.roas_max_cost`` days x campaigns |
| 429 | ``…:rate-limited`` | the key's (or address's) bucket is empty; ``Retry-After`` says when to retry |
| 503 | ``…:unavailable`` | Redis, the store or the catalog did not answer |
| 500 | about:blank | anything else (logged; the body says nothing about it) |

HTTP-level errors (401, 403, 404 and 405 of the router, 413, 414, 431) are ``about:blank``
problems with the status phrase as ``title`` (``reporting.problems`` builds those).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from shared_logic.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    Unavailable,
    foreign_unavailable_classes,
    short_repr,
)
from shared_logic.errors import foreign_unavailable as shared_foreign_unavailable

PROBLEM_TYPE = "tag:attribution-engine,2026:problem:"
INVALID_PARAMETER = PROBLEM_TYPE + "invalid-parameter"
COST_LIMIT = PROBLEM_TYPE + "cost-limit"
RATE_LIMITED = PROBLEM_TYPE + "rate-limited"
UNAVAILABLE = PROBLEM_TYPE + "unavailable"
MAX_DETAIL = 300
MAX_INSTANCE = 200


class StoreUnavailable(Unavailable):
    """The analytics store did not answer."""


class InvalidParameter(InvalidInput):
    """A request parameter broke a rule of the API (422, naming the parameter)."""

    kind = "parameter"


class TooCostly(InvalidParameter):
    """A request asks for more work than one request may (``api.roas_max_cost``)."""

    def __init__(self, field: str, value: Any, cost: int, limit: int, rule: str) -> None:
        self.cost, self.limit = cost, limit
        super().__init__(field, value, rule)


class CampaignNotFound(NotFound):
    """A campaign the caller may not see. A missing campaign and another advertiser's answer alike,
    so a key learns nothing about campaigns that are not its own."""

    def __init__(self, campaign_id: str) -> None:
        self.field, self.value = "campaign_id", campaign_id
        super().__init__(f"campaign_id {short_repr(campaign_id)} not found")


@dataclass(frozen=True, slots=True)
class Problem:
    """An RFC 9457 problem without its ``instance`` (the request's path, known at the edge)."""

    status: int
    detail: str
    type: str = "about:blank"
    title: str = ""
    parameter: str | None = None
    extensions: Mapping[str, Any] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)

    def body(self, instance: str) -> dict[str, Any]:
        # about:blank carries the status phrase as its title (RFC 9457 4.2.1).
        title = self.title or HTTPStatus(self.status).phrase
        out: dict[str, Any] = {
            "type": self.type,
            "title": title,
            "status": self.status,
            "detail": _cut(self.detail),
            "instance": _cut(instance, MAX_INSTANCE),
        }
        if self.parameter is not None:
            out["parameter"] = self.parameter
        out.update(self.extensions)
        return out


def _cut(text: str, limit: int = MAX_DETAIL) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def foreign_unavailable(exc: BaseException) -> str | None:
    """The dependency a connection error is about (a client's, or the standard library's), or None."""
    what = shared_foreign_unavailable(exc)
    if what is None and isinstance(exc, ConnectionError | TimeoutError):
        return "a dependency"
    return what


def unavailable_classes() -> tuple[type[Exception], ...]:
    """The connection-error classes of the clients imported so far (to register handlers for)."""
    foreign = [c for c in foreign_unavailable_classes() if issubclass(c, Exception)]
    return (ConnectionError, TimeoutError, *foreign)


def problem_of(exc: BaseException) -> Problem:
    """The problem an error of the engine (or a client's connection error) answers with."""
    if isinstance(exc, TooCostly):
        return Problem(
            422,
            str(exc),
            COST_LIMIT,
            "Request too costly",
            exc.field,
            {"cost": exc.cost, "limit": exc.limit},
        )
    if isinstance(exc, InvalidParameter):
        return Problem(422, str(exc), INVALID_PARAMETER, "Invalid parameter", exc.field)
    if isinstance(exc, InvalidInput):
        return Problem(400, str(exc), parameter=exc.field)
    if isinstance(exc, NotFound):
        return Problem(404, str(exc), parameter=getattr(exc, "field", None))
    if isinstance(exc, Conflict):
        return Problem(409, str(exc))
    if isinstance(exc, Unavailable):
        return Problem(503, str(exc), UNAVAILABLE, "Dependency unavailable")
    what = foreign_unavailable(exc)
    if what is not None:
        return Problem(
            503, f"{what} did not answer ({type(exc).__name__})", UNAVAILABLE, "Dependency unavailable"
        )
    # MissingExtra, any other error of the engine, any bug: the server's fault. The log has the
    # message and the traceback; the caller gets nothing that could leak internals.
    return Problem(500, "the server could not answer this request; the error has been logged")
