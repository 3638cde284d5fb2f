"""API keys: stored hashed (SHA-256 of a 256-bit random token), each with a role.

Roles: ``admin`` (everything), ``advertiser`` (its own campaigns only: another
advertiser's campaign answers as if it did not exist), ``ad_server`` (budget
state only).

The key file is rewritten whole by a rename (``add_key``, ``revoke_keys``), and a
:class:`KeyRing` loaded from it looks again at most every ``reload_s`` seconds
(default 2): a key created or revoked while the API runs is accepted or refused
within that bound, without a restart. A file that no longer parses keeps the
keys it held before (and logs why).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, model_validator

from shared_logic.errors import InvalidInput

Role = Literal["admin", "advertiser", "ad_server"]
log = logging.getLogger(__name__)
#: At most this many seconds between a change of the key file and the API seeing it.
RELOAD_S = 2.0


class ApiKey(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    sha256: str
    role: Role
    advertiser_id: str | None = None

    @model_validator(mode="after")
    def _advertiser_needs_id(self) -> ApiKey:
        if (self.role == "advertiser") != (self.advertiser_id is not None):
            raise ValueError("advertiser_id is required for an advertiser key, and only for one")
        return self


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyRing:
    """The keys the API accepts (only their hashes are kept). Loaded from a file (:meth:`load`), it
    re-reads the file when its stamp (modification time, size, inode) changed, looking at most every
    ``reload_s`` seconds."""

    def __init__(self, keys: list[ApiKey], path: Path | None = None, reload_s: float = RELOAD_S) -> None:
        self._by_hash = {k.sha256: k for k in keys}
        self._path = path
        self._reload_s = reload_s
        self._stamp = _stamp(path) if path is not None else None
        self._checked = time.monotonic()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        self.refresh()
        return len(self._by_hash)

    def refresh(self, force: bool = False) -> None:
        """Re-read the key file if it changed (looked at no more often than every ``reload_s``)."""
        if self._path is None:
            return
        now = time.monotonic()
        if not force and now - self._checked < self._reload_s:
            return
        with self._lock:
            self._checked = now
            stamp = _stamp(self._path)
            if stamp == self._stamp:
                return
            try:
                keys = read_keys(self._path)
            except (OSError, ValueError, yaml.YAMLError) as exc:
                log.warning("key file %s not reloaded, the keys before stay: %s", self._path, exc)
                return
            self._by_hash = {k.sha256: k for k in keys}
            self._stamp = stamp
            log.info("key file %s reloaded: %d keys", self._path, len(keys))

    def identify(self, presented: str | None) -> ApiKey | None:
        if not presented:
            return None
        self.refresh()
        digest = hash_key(presented)
        found = self._by_hash.get(digest)
        # Compare in constant time even on a hit, so timing says nothing about the hash.
        if found is not None and hmac.compare_digest(found.sha256, digest):
            return found
        return None

    @classmethod
    def load(cls, path: str | Path, reload_s: float = RELOAD_S) -> KeyRing:
        p = Path(path)
        return cls(read_keys(p), p, reload_s)


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def read_keys(path: str | Path) -> list[ApiKey]:
    """The keys of a key file (none if it does not exist)."""
    p = Path(path)
    data = yaml.safe_load(p.read_text()) if p.exists() else None
    return [ApiKey.model_validate(k) for k in (data or {}).get("keys", [])]


def _write_keys(path: Path, keys: list[dict[str, Any]]) -> None:
    """The key file rewritten whole by a rename: a reader sees the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(yaml.safe_dump({"keys": keys}, sort_keys=False))
    os.replace(tmp, path)


def add_key(path: str | Path, name: str, role: Role, advertiser_id: str | None = None) -> str:
    """Create a key, store its hash in the key file, and return the key (shown once)."""
    if (role == "advertiser") != (advertiser_id is not None):
        raise InvalidInput(
            "advertiser_id", advertiser_id, "is required for an advertiser key, and only for one"
        )
    key = "ak_" + secrets.token_urlsafe(32)
    p = Path(path)
    keys = [k.model_dump(exclude_none=True) for k in read_keys(p)]
    entry = ApiKey(name=name, sha256=hash_key(key), role=role, advertiser_id=advertiser_id)
    keys.append(entry.model_dump(exclude_none=True))
    _write_keys(p, keys)
    return key


def key_id(key: ApiKey) -> str:
    """A key's short public id: the first 12 hex digits of its hash (the key itself is never kept)."""
    return key.sha256[:12]


def revoke_keys(path: str | Path, *, name: str | None = None, id_prefix: str | None = None) -> list[ApiKey]:
    """Remove the key named ``name``, or the key whose hash starts with ``id_prefix``; return what was
    removed. Exactly one must match: no match, or several (a shared name, a short prefix), is an
    error naming the field, and nothing is removed."""
    if (name is None) == (id_prefix is None):
        raise InvalidInput("name/id", f"{name!r}/{id_prefix!r}", "give exactly one of --name and --id")
    p = Path(path)
    keys = read_keys(p)
    field, value = ("name", name) if name is not None else ("id", id_prefix)
    if id_prefix is not None and len(id_prefix) < 6:
        raise InvalidInput("id", id_prefix, "is too short: give at least 6 hex digits of the key's id")
    hits = [k for k in keys if (k.name == name if name is not None else k.sha256.startswith(id_prefix or ""))]
    if not hits:
        raise InvalidInput(field, value, f"matches no key in {p} (`api-key list` shows them)")
    if len(hits) > 1:
        ids = ", ".join(key_id(k) for k in hits)
        raise InvalidInput(field, value, f"matches {len(hits)} keys ({ids}): revoke one by --id")
    _write_keys(p, [k.model_dump(exclude_none=True) for k in keys if k is not hits[0]])
    return hits
