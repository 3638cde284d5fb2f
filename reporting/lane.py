"""The ad server's reads, ``GET /v1/answer`` and ``GET /v1/budget``, as an ASGI layer of their own
(``AdServerLane``).

At 1,000 ad requests a second on two cores, the framework was most of the cost of an answer: a
request crossed Starlette's error middleware, the console's sessions, the size limits, the rate
limiter, the exception middleware, the router and FastAPI's route (its dependencies, its query
validation) before the read itself. The lane sits inside the security headers and the request
metrics (``reporting.api``), so its responses carry exactly their headers and are counted under the
route's template, and answers a plainly valid request (``reporting.routes.budget.plain_answer``,
``plain_budget``) itself:

- the size limits first (``RequestLimits.refusal``: a request they would refuse goes on down);
- the key identified once, as the rate limiter does;
- the rate limit as ``RateLimits`` applies it, with its state (the pause after an outage, failing
  open or closed): for an answer on one Redis in the answer's own round trip (``DeferredLimit``),
  otherwise its own call first;
- any error answered by the app's own exception handler, as the exception middleware (or, for an
  unexpected one, the error middleware, which then raises it again) would.

Every other request (another path or method, a mounted app, no key or another role's, a query a
rule of the endpoint could refuse) goes down the whole stack untouched, and takes no token here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from reporting.middleware import CALLER, DeferredLimit, RateLimits, Refused, RequestLimits
from reporting.problems import problem_response
from reporting.routes import budget
from reporting.routes.budget import ANSWER_PATH, BUDGET_PATH
from reporting.state import State

_Layer = TypeVar("_Layer")


def layer(stack: Any, kind: type[_Layer]) -> _Layer:
    """The middleware of ``kind`` in ``stack`` (each layer holds the next as ``app``)."""
    seen = stack
    while seen is not None:
        if isinstance(seen, kind):
            return seen
        seen = getattr(seen, "app", None)
    raise LookupError(f"no {kind.__name__} in the app's middleware stack")


@dataclass(frozen=True, slots=True)
class _Read:
    """One read the lane serves: the names in ``reporting.routes.budget`` of the function that
    takes a request as it is (``plain_*``: the key and the raw query, None to leave it to FastAPI)
    and of the one that answers it; whether the limiter's check may ride in its round trip."""

    plain: str
    serve: str
    deferred: bool


READS = {
    ANSWER_PATH: _Read("plain_answer", "answer_plain", deferred=True),
    BUDGET_PATH: _Read("plain_budget", "budget_plain", deferred=False),
}


class AdServerLane:
    """Answers a plainly valid ad-server read (``READS``) before the stack below it (``stack``, the
    app's own middleware stack, whose limits it applies); passes anything else down."""

    def __init__(self, stack: ASGIApp, api: Any) -> None:
        self.app, self.api = stack, api
        self.limits = layer(stack, RateLimits)
        self.sizes = layer(stack, RequestLimits)
        # The routes the metrics name (``RecordMetrics`` reads ``scope["route"]``).
        self.routes = {
            path: next(r for r in api.router.routes if getattr(r, "path", None) == path) for path in READS
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        read = READS.get(scope["path"]) if scope["type"] == "http" else None
        if (
            read is None
            or scope["method"] != "GET"
            or scope.get("root_path")
            or self.sizes.refusal(scope) is not None
        ):
            await self.app(scope, receive, send)
            return
        limits = self.limits
        host: State = self.api.state.core
        presented = next((v for k, v in scope["headers"] if k.lower() == b"x-api-key"), None)
        who = host.keyring.identify(presented.decode("latin-1") if presented is not None else None)
        # Looked up on the module at each request (the tests watch them there).
        plain = getattr(budget, read.plain)(who, scope["query_string"])
        if plain is None:  # FastAPI's handler answers it, after the whole stack's checks
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})[CALLER] = who
        scope["route"] = self.routes[scope["path"]]
        deferred: DeferredLimit | None = None
        if limits.enabled:
            if read.deferred and host.limiter.pipelined:
                deferred = DeferredLimit(limits, host.limiter, who, scope)
            else:
                problem = await limits.check(host.limiter, who, scope)
                if problem is not None:
                    await problem_response(problem, scope["path"])(scope, receive, send)
                    return
        request = Request(scope, receive)
        try:
            response = await getattr(budget, read.serve)(host, plain, deferred)
        except Refused as refused:
            response = problem_response(refused.problem, scope["path"])
        except Exception as exc:
            if deferred is not None and not deferred.settled:
                await deferred.check()  # failed before its check: the token is taken all the same
            await self.failed(request, exc, send)
            return
        await response(scope, receive, send)

    async def failed(self, request: Request, exc: Exception, send: Send) -> None:
        """Answer ``exc`` as the app would: its handler for the nearest class; for one only the
        catch-all handles (an unexpected error), answer it, then raise it again for the server to
        log, as Starlette's error middleware does."""
        handlers = self.api.exception_handlers
        cls = next((c for c in type(exc).__mro__ if c in handlers and c is not Exception), None)
        if cls is not None:
            response: Response = await handlers[cls](request, exc)
            await response(request.scope, request.receive, send)
            return
        handler = handlers.get(500) or handlers.get(Exception)
        if handler is not None:
            response = await handler(request, exc)
            await response(request.scope, request.receive, send)
        raise exc
