"""The HTTP API: ROAS reports for advertisers, budget state for the ad server.

ROAS rows come from the batch view for days up to the last complete batch run
and from the speed layer after it, never both for one day; each row says which
(``source``) and carries the model and the windows used. Every route needs an
``X-API-Key`` (the docs and ``/metrics`` too, unless a setting makes them public).

Limits (``api`` settings): per-key and per-address rate limits (429), a cost bound per ROAS
request (422), URL, header and body sizes (414, 431, 413). Every error is an RFC 9457 problem
(``reporting.problems``); every response carries ``Cache-Control: no-store`` and the security
headers (``reporting.middleware``). Blocking store queries run in a worker thread, so a heavy
report never holds up the event loop (``/health``, budget reads).

``create_app`` assembles the app: the middlewares, the error handlers, one router per concern
(``reporting.routes``) and the lifespan that opens the ``State`` (``reporting.state``) the routes
read.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp

from reporting.console import ROUTERS as CONSOLE_ROUTERS
from reporting.console import ConsoleSessions
from reporting.lane import AdServerLane
from reporting.metrics import ApiMetrics
from reporting.middleware import RateLimits, RecordMetrics, RequestLimits, SecurityHeaders
from reporting.problems import as_problem_media_type, install
from reporting.ratelimit import rates
from reporting.routes import ROUTERS
from reporting.state import State
from shared_logic.settings import Settings, load_settings

TITLE = "Attribution engine API"
VERSION = "0.1.0"


class _Api(FastAPI):
    """FastAPI with the security headers and the request metrics outside Starlette's error
    middleware (so a 500 has them too), the ad server's lane between them and the rest
    (``reporting.lane``), and problem details as the media type of its errors."""

    settings: Settings
    metrics: ApiMetrics
    #: Freeze the collector's view of what the start-up allocated (``app_from_env``: the server's
    #: own process, not an app a test builds in its process).
    freeze_gc = False

    def build_middleware_stack(self) -> ASGIApp:
        lane = AdServerLane(super().build_middleware_stack(), self)
        return SecurityHeaders(RecordMetrics(lane, self.metrics))

    def openapi(self) -> dict[str, Any]:
        fresh = self.openapi_schema is None
        schema = super().openapi()
        return as_problem_media_type(schema) if fresh else schema


@asynccontextmanager
async def lifespan(app: _Api) -> AsyncIterator[None]:
    """The app's ``State`` (catalog, lake, store, Redis, keys) for as long as it serves."""
    app.state.core = State(app.settings)
    if app.freeze_gc:
        # The modules, the app and the catalog (about 140k objects with FastAPI, pydantic
        # and pyarrow) are never garbage: a full collection that scans them all is a pause of
        # tens of ms in some request. Frozen, the collector scans what requests allocate only.
        gc.collect()
        gc.freeze()
    yield
    await app.state.core.aclose()


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API over ``settings`` (default: the environment's); nothing is opened before its lifespan."""
    settings = settings or load_settings()
    app = _Api(
        title=TITLE,
        version=VERSION,
        lifespan=lifespan,
        description="ROAS per advertiser, campaign, day and model; real-time budget state. "
        "Errors are RFC 9457 problem details (application/problem+json).",
        docs_url=None,  # served by reporting.routes.docs, behind a key unless api.docs_public
        redoc_url=None,
        openapi_url=None,
    )
    app.settings, app.metrics = settings, ApiMetrics()
    install(app)
    # Added innermost first: sizes are checked before a key is hashed or Redis is asked.
    app.add_middleware(
        RateLimits,
        host=lambda: app.state.core,
        section=settings.api,
        rates=rates(settings.api),
        metrics=app.metrics,
    )
    app.add_middleware(RequestLimits, section=settings.api)
    # Outermost: a console session becomes its key before the limiter reads X-API-Key.
    app.add_middleware(ConsoleSessions, host=lambda: app.state.core, settings=settings)
    for router in (*ROUTERS, *CONSOLE_ROUTERS):
        app.include_router(router)
    return app


def app_from_env() -> FastAPI:
    """Uvicorn factory: ``uvicorn --factory reporting.api:app_from_env``."""
    app = create_app(load_settings())
    app.freeze_gc = True  # type: ignore[attr-defined]
    return app
