"""The console's sessions: an API key held in an encrypted, signed, expiring cookie.

Signing in posts the key in a form (never in a URL); the answer sets ``console_session``, an
HttpOnly, ``SameSite=Strict`` cookie (``Secure`` over HTTPS) with a ``Max-Age``. Its value is a
Fernet token (AES-CBC and HMAC-SHA256, timestamped): the key, a random session id and nothing
else, readable and forgeable by nobody without the console secret, refused after
``CONSOLE_SESSION_S``. Each request opens the token again and presents the key to the key store's
own check (``KeyRing.identify``), so a revoked key ends its sessions within the store's reload
bound. Signing out records the session id as ended in Redis until the token would have expired,
so a copy of the cookie is refused too.

The secret comes from ``ATTRIBUTION_CONSOLE_SECRET``, else from the file ``console-secret`` beside
the key file (created once, mode 0600), so every API process of one deployment shares it and
sessions outlive a restart.

Forms carry a CSRF token: before sign-in a random value also set as the HttpOnly
``console_csrf`` cookie (double submit), after it an HMAC of the session id. A POST whose
``Origin`` names another site is refused as well.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

COOKIE = "console_session"
CSRF_COOKIE = "console_csrf"
#: How long a session lasts after sign-in (seconds); ``ATTRIBUTION_CONSOLE_SESSION_S`` overrides it.
CONSOLE_SESSION_S = 8 * 3600
SECRET_ENV = "ATTRIBUTION_CONSOLE_SECRET"  # noqa: S105 - the variable's name, not a secret
SESSION_ENV = "ATTRIBUTION_CONSOLE_SESSION_S"


@dataclass(frozen=True, slots=True)
class Session:
    key: str
    sid: str
    expires_at: float


def console_secret(keys_path: str) -> bytes:
    """The console's secret: ``ATTRIBUTION_CONSOLE_SECRET``, else ``console-secret`` beside the key file."""
    given = os.environ.get(SECRET_ENV)
    if given:
        return given.encode()
    path = Path(keys_path).with_name("console-secret")
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fresh = secrets.token_urlsafe(32).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another worker wrote it first: use that one
        return path.read_bytes().strip()
    with os.fdopen(fd, "wb") as f:
        f.write(fresh)
    return fresh


def session_seconds() -> int:
    raw = os.environ.get(SESSION_ENV)
    if raw is None:
        return CONSOLE_SESSION_S
    if not raw.isdigit() or not 60 <= int(raw) <= 7 * 86_400:
        raise ValueError(f"{SESSION_ENV} = {raw!r}: must be a whole number of seconds from 60 to 604800")
    return int(raw)


def _derive(secret: bytes, label: bytes) -> bytes:
    """A 32-byte key for one use, derived from the console secret."""
    return hmac.new(secret, label, hashlib.sha256).digest()


class Sessions:
    """Issues and opens session cookies; ``redis`` keeps the ids of sessions signed out."""

    def __init__(self, secret: bytes, redis: Any, prefix: str, ttl_s: int) -> None:
        self._fernet = Fernet(base64.urlsafe_b64encode(_derive(secret, b"console-session")))
        self._csrf_key = _derive(secret, b"console-csrf")
        self._redis, self._prefix, self.ttl_s = redis, prefix, ttl_s

    def _ended_key(self, sid: str) -> str:
        return f"{self._prefix}:console:ended:{sid}"

    def issue(self, key: str) -> tuple[str, Session]:
        sid = secrets.token_urlsafe(16)
        now = time.time()
        token = self._fernet.encrypt_at_time(json.dumps({"k": key, "s": sid}).encode(), int(now))
        return token.decode(), Session(key, sid, now + self.ttl_s)

    async def open(self, token: str | None) -> Session | None:
        """The session of a cookie value; None when it is forged, expired or signed out."""
        if not token:
            return None
        try:
            raw = self._fernet.decrypt(token.encode(), ttl=self.ttl_s)
            issued = self._fernet.extract_timestamp(token.encode())
            data = json.loads(raw)
            session = Session(str(data["k"]), str(data["s"]), issued + self.ttl_s)
        except (InvalidToken, ValueError, KeyError, TypeError):
            return None
        if await self._redis.exists(self._ended_key(session.sid)):
            return None
        return session

    async def end(self, session: Session) -> None:
        left = max(1, int(session.expires_at - time.time()) + 1)
        await self._redis.set(self._ended_key(session.sid), b"1", ex=left)

    def csrf(self, session: Session) -> str:
        return hmac.new(self._csrf_key, session.sid.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, session: Session, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(self.csrf(session), presented)
