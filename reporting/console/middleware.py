"""``ConsoleSessions``: a console session cookie presented as the key it holds.

On the console's paths and the docs pages, a valid ``console_session`` cookie
(``reporting.console.session``) becomes the request's ``X-API-Key`` header before anything else
reads the request, so the rate limiter, the key check and the docs' access rule see the session's
key as if it had been sent, and nothing downstream has a second way to authenticate. The JSON
routes (``/v1/...``) are not among those paths: they take ``X-API-Key`` only, whatever cookie
comes along.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from starlette.datastructures import Headers
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Receive, Scope, Send

from reporting.console.session import COOKIE, Session, Sessions, console_secret, session_seconds
from shared_logic.settings import Settings

log = logging.getLogger(__name__)

CONSOLE_PREFIX = "/console"
#: Pages a session may open besides the console: the API's docs (their JSON routes are not here).
SESSION_PATHS = frozenset({"/docs", "/redoc", "/openapi.json"})
SESSION = "console_session"  # request.state: the open Session, when there is one
SESSIONS = "console_sessions"  # request.state: the Sessions object


def session_path(path: str) -> bool:
    return path == CONSOLE_PREFIX or path.startswith(CONSOLE_PREFIX + "/") or path in SESSION_PATHS


class ConsoleSessions:
    """Outermost of the app's own middlewares (``reporting.api.create_app``)."""

    def __init__(self, app: ASGIApp, host: Callable[[], Any], settings: Settings) -> None:
        self.app, self.host = app, host
        self._secret = console_secret(settings.api.keys_path)
        self._ttl_s = session_seconds()
        self._prefix = settings.keys.prefix
        self._made: tuple[Any, Sessions] | None = None

    def sessions(self) -> Sessions:
        """One ``Sessions`` per running state (its Redis client)."""
        state = self.host()
        if self._made is None or self._made[0] is not state:
            self._made = (state, Sessions(self._secret, state.redis, self._prefix, self._ttl_s))
        return self._made[1]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not session_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        sessions = self.sessions()
        token = cookie_parser(Headers(scope=scope).get("cookie", "")).get(COOKIE)
        session: Session | None = None
        if token:
            try:
                session = await sessions.open(token)
            except Exception as exc:  # Redis down: no session can be checked, so none is open
                log.warning("console session not checked, Redis did not answer: %s", type(exc).__name__)
        state = scope.setdefault("state", {})
        state[SESSIONS] = sessions
        if session is not None:
            state[SESSION] = session
            headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"x-api-key"]
            headers.append((b"x-api-key", session.key.encode()))
            scope = {**scope, "headers": headers}
        await self.app(scope, receive, send)
