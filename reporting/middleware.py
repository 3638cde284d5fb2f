"""The API's ASGI middlewares, from the outside in.

- ``SecurityHeaders``: ``Cache-Control: no-store`` and the usual security headers on every
  response, errors, 429s and 500s included (policies built with ``secure``; the docs pages get
  a content security policy that lets Swagger UI and ReDoc load).
- ``RecordMetrics``: request count and latency by route template and status.
- ``RequestLimits``: refuses a long URL (414), a large header block (431) or a body (413)
  before anything else reads the request.
- ``RateLimits``: per-key and per-address token buckets (``reporting.ratelimit``); 429 with
  ``Retry-After``.

Starlette's error middleware sits between ``RecordMetrics`` and ``RequestLimits``
(``reporting.api``), so even an unexpected error is a problem with the headers above. The ad
server's lane (``reporting.lane``) sits between ``RecordMetrics`` and Starlette's error
middleware: it answers the ad server's two reads itself, applying ``RequestLimits`` and
``RateLimits`` as they would.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from redis.exceptions import NoScriptError
from secure import (
    CacheControl,
    ContentSecurityPolicy,
    CrossOriginResourcePolicy,
    ReferrerPolicy,
    Secure,
    StrictTransportSecurity,
    XContentTypeOptions,
    XFrameOptions,
)
from secure.middleware import SecureASGIMiddleware
from starlette.datastructures import Headers
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reporting.auth import ApiKey, KeyRing
from reporting.errors import RATE_LIMITED, UNAVAILABLE, Problem
from reporting.metrics import ApiMetrics
from reporting.problems import problem_response
from reporting.ratelimit import Rate, RateLimiter, Verdict, address_bucket
from shared_logic.settings import ApiSettings, RateRole

log = logging.getLogger(__name__)

DOCS_PATHS = frozenset({"/docs", "/redoc"})
_NONE = "'none'"


def _policy(csp: ContentSecurityPolicy) -> Secure:
    return Secure(
        cache=CacheControl().no_store(),
        csp=csp.frame_ancestors(_NONE).base_uri(_NONE).form_action(_NONE),
        corp=CrossOriginResourcePolicy().same_origin(),
        hsts=StrictTransportSecurity().max_age(63_072_000).include_subdomains(),
        referrer=ReferrerPolicy().no_referrer(),
        xcto=XContentTypeOptions().nosniff(),
        xfo=XFrameOptions().deny(),
    )


# JSON only: nothing may load, run or frame.
API_POLICY = _policy(ContentSecurityPolicy().default_src(_NONE))
# Swagger UI and ReDoc: their bundles, styles and start-up scripts from this origin
# (``reporting.routes.docs``; nothing from a CDN), inline styles (both set them from script),
# fetches of /openapi.json, ReDoc's web worker.
DOCS_POLICY = _policy(
    ContentSecurityPolicy()
    .default_src(_NONE)
    .script_src("'self'")
    .style_src("'self'", "'unsafe-inline'")
    .img_src("'self'", "data:")
    .font_src("'self'")
    .connect_src("'self'")
    .worker_src("'self'", "blob:")
)
# The console (``reporting.console``): its own script and stylesheet, inline SVG, fetches of its
# JSON, forms posting to itself; no inline script or style.
CONSOLE_PREFIX = "/console"
CONSOLE_POLICY = Secure(
    cache=CacheControl().no_store(),
    csp=ContentSecurityPolicy()
    .default_src(_NONE)
    .script_src("'self'")
    .style_src("'self'")
    .img_src("'self'", "data:")
    .connect_src("'self'")
    .form_action("'self'")
    .frame_ancestors(_NONE)
    .base_uri(_NONE),
    corp=CrossOriginResourcePolicy().same_origin(),
    hsts=StrictTransportSecurity().max_age(63_072_000).include_subdomains(),
    # same-origin, not no-referrer: under no-referrer a browser sends "Origin: null" with the
    # console's own forms, and their origin check would refuse them.
    referrer=ReferrerPolicy().same_origin(),
    xcto=XContentTypeOptions().nosniff(),
    xfo=XFrameOptions().deny(),
)
#: The largest form the console's POSTs may send (sign-in, sign-out), whatever ``max_body_bytes`` says.
CONSOLE_FORM_BYTES = 4096


def _console(path: str) -> bool:
    return path == CONSOLE_PREFIX or path.startswith(CONSOLE_PREFIX + "/")


class _Computed:
    """A policy's headers computed once, for ``SecureASGIMiddleware`` (all it reads of its
    ``Secure`` is ``headers``, once a response; ``Secure.headers`` builds them again on every
    read: 8 us a response on this machine)."""

    __slots__ = ("headers",)

    def __init__(self, policy: Secure) -> None:
        self.headers = dict(policy.headers)


class SecurityHeaders:
    """Apply ``API_POLICY`` to every response, ``DOCS_POLICY`` to the docs pages,
    ``CONSOLE_POLICY`` to the console's."""

    def __init__(self, app: ASGIApp) -> None:
        self.api = SecureASGIMiddleware(app, secure=_Computed(API_POLICY))  # type: ignore[arg-type]
        self.docs = SecureASGIMiddleware(app, secure=_Computed(DOCS_POLICY))  # type: ignore[arg-type]
        self.console = SecureASGIMiddleware(app, secure=_Computed(CONSOLE_POLICY))  # type: ignore[arg-type]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path") or ""
        target = self.docs if path in DOCS_PATHS else self.console if _console(path) else self.api
        await target(scope, receive, send)  # type: ignore[arg-type]  # secure types ASGI messages as object


def route_template(scope: Scope) -> str:
    """The template of the route that served (or would serve) a request; ``unmatched`` for none."""
    route = scope.get("route")
    if route is None:
        app = scope.get("app")
        for candidate in getattr(getattr(app, "router", None), "routes", ()):
            match, _ = candidate.matches(scope)
            if match != Match.NONE:
                route = candidate
                break
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


class RecordMetrics:
    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            labels = (scope["method"], route_template(scope), str(status))
            self.metrics.requests.labels(*labels).inc()
            self.metrics.latency.labels(*labels).observe(time.perf_counter() - started)


class RequestLimits:
    """Refuse what no route of this API needs: a long URL, a large header block, a body."""

    def __init__(self, app: ASGIApp, section: ApiSettings) -> None:
        self.app = app
        self.max_url, self.max_headers, self.max_body = (
            section.max_url_bytes,
            section.max_header_bytes,
            section.max_body_bytes,
        )

    def refusal(self, scope: Scope) -> Problem | None:
        url = len(scope.get("raw_path") or scope["path"].encode()) + len(scope.get("query_string", b""))
        if url > self.max_url:
            return Problem(
                414, f"the path and query string take {url} bytes; at most {self.max_url} are read"
            )
        head = sum(len(name) + len(value) + 4 for name, value in scope["headers"])
        if head > self.max_headers:
            return Problem(431, f"the headers take {head} bytes; at most {self.max_headers} are read")
        headers = Headers(scope=scope)
        if "transfer-encoding" in headers:
            return Problem(411, "a request body must state its Content-Length")
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return Problem(400, "Content-Length must be a number of bytes", parameter="Content-Length")
            limit = self.max_body
            if scope["method"] == "POST" and _console(scope["path"]):
                limit = max(limit, CONSOLE_FORM_BYTES)  # the console's sign-in and sign-out forms
            if int(length) > limit:
                what = "no body" if limit == 0 else f"at most {limit} bytes of body"
                return Problem(413, f"the body takes {int(length)} bytes; this API reads {what}")
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            problem = self.refusal(scope)
            if problem is not None:
                await problem_response(problem, scope["path"])(scope, receive, send)
                return
        await self.app(scope, receive, send)


class LimiterHost(Protocol):
    """What ``RateLimits`` reads from the running API (``reporting.api.State``)."""

    keyring: KeyRing
    limiter: RateLimiter


CALLER = "api_key"  # request.state: the ApiKey (or None) the limiter identified, so it is hashed once
_PAUSE_S = 1.0  # after Redis failed the limiter, skip it this long before asking again


class Refused(Exception):
    """A deferred check's 429 (or 503 failing closed): the route answers ``problem`` instead."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.status)
        self.problem = problem


class RateLimits:
    """429 when the caller's bucket is empty: a valid key's own, else its client address's.

    When Redis cannot answer, the limiter fails open (``api.rate_limit_fail_open``, the default:
    authentication, the cost bound and the store's lock still hold, and a Redis outage should not
    take down the batch reports that do not need it) or closed (503), counts the error, and asks
    Redis again only after a pause, so an outage adds no wait to every request.
    """

    def __init__(
        self,
        app: ASGIApp,
        host: Callable[[], LimiterHost],
        section: ApiSettings,
        rates: dict[RateRole, Rate],
        metrics: ApiMetrics,
    ) -> None:
        self.app, self.host, self.rates, self.metrics = app, host, rates, metrics
        self.enabled = section.rate_limit
        self.fail_open = section.rate_limit_fail_open
        self.timeout_s = section.rate_limit_timeout_ms / 1000
        self._paused_until = 0.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = self.host()
        who = host.keyring.identify(Headers(scope=scope).get("x-api-key"))
        state = scope.setdefault("state", {})
        state[CALLER] = who
        if self.enabled:
            limiter = host.limiter
            problem = await self.check(limiter, who, scope)
            if problem is not None:
                await problem_response(problem, scope["path"])(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def bucket(self, who: ApiKey | None, scope: Scope) -> tuple[RateRole, str]:
        """The role whose rate applies, and the bucket the request draws from."""
        if who is not None:
            return who.role, f"key:{who.sha256}"
        client: Any = scope.get("client")
        return "anonymous", address_bucket(client[0] if client else None)

    def paused(self) -> bool:
        return time.monotonic() < self._paused_until

    async def check(self, limiter: RateLimiter, who: ApiKey | None, scope: Scope) -> Problem | None:
        role, bucket = self.bucket(who, scope)
        if self.paused():
            return self._down()
        try:
            async with asyncio.timeout(self.timeout_s):
                verdict = await limiter.hit(bucket, self.rates[role])
        except Exception as exc:
            return self.failed(exc)
        return self.judge(verdict, role, who)

    def failed(self, exc: BaseException) -> Problem | None:
        """Any failure to read the bucket (refused, timed out, cluster moved) is a limiter outage."""
        self.metrics.rate_limit_errors.inc()
        self._paused_until = time.monotonic() + _PAUSE_S
        log.warning(
            "rate limiter: Redis did not answer (%s); %s",
            type(exc).__name__,
            "serving without limits" if self.fail_open else "refusing with 503",
        )
        return self._down()

    def judge(self, verdict: Verdict, role: RateRole, who: ApiKey | None) -> Problem | None:
        if verdict.allowed:
            return None
        self.metrics.rate_limited.labels(role).inc()
        who_ = "this key" if who is not None else "requests without a valid key from this address"
        return Problem(
            429,
            f"{who_} may send {self.rates[role].per_s:g} requests a second "
            f"(bursts of {self.rates[role].burst}); retry in {verdict.retry_after} s",
            RATE_LIMITED,
            "Too many requests",
            extensions={"retry_after": verdict.retry_after},
            headers={"Retry-After": str(verdict.retry_after)},
        )

    def _down(self) -> Problem | None:
        if self.fail_open:
            return None
        return Problem(
            503,
            "the rate limiter's Redis did not answer",
            UNAVAILABLE,
            "Dependency unavailable",
            headers={"Retry-After": str(int(_PAUSE_S))},
        )


class DeferredLimit:
    """``RateLimits.check`` of a ``GET /v1/answer`` request the answer's lane serves
    (``reporting.lane.AdServerLane``), left to the answer's read: it sends ``command``
    first in the answer's Redis pipeline (``serving.answer.Ahead``) and ``settle`` judges the reply
    exactly as ``check`` would (429, counted; an error counted, the pause, open or closed), raising
    ``Refused`` for a refusal; ``check`` asks on its own, as the middleware would have. Either way
    the bucket is asked once: a NOSCRIPT reply took nothing, and ``check`` then loads the script
    and asks again."""

    __slots__ = ("key", "limiter", "limits", "role", "scope", "settled", "timeout_s", "who")

    def __init__(self, limits: RateLimits, limiter: RateLimiter, who: ApiKey | None, scope: Scope) -> None:
        self.limits, self.limiter, self.who, self.scope = limits, limiter, who, scope
        self.role, self.key = limits.bucket(who, scope)
        self.timeout_s: float | None = limits.timeout_s
        self.settled = False

    async def check(self) -> Problem | None:
        self.settled = True
        return await self.limits.check(self.limiter, self.who, self.scope)

    def command(self) -> tuple[Any, ...] | None:
        self.settled = True
        limits = self.limits
        if limits.paused():
            problem = limits._down()
            if problem is not None:
                raise Refused(problem)
            return None
        return self.limiter.command(self.key, limits.rates[self.role])

    async def settle(self, reply: Any) -> None:
        limits = self.limits
        if isinstance(reply, NoScriptError):  # the script did not run: load it and ask again
            problem = await limits.check(self.limiter, self.who, self.scope)
        elif isinstance(reply, BaseException):
            problem = limits.failed(reply)
        else:
            try:
                verdict = self.limiter.verdict(reply)
            except Exception as exc:
                problem = limits.failed(exc)
            else:
                problem = limits.judge(verdict, self.role, self.who)
        if problem is not None:
            raise Refused(problem)
