"""API keys: stored hashed (SHA-256 of a 256-bit random token), each with a role.

Roles: ``admin`` (everything), ``advertiser`` (its own campaigns only: another
advertiser's campaign answers as if it did not exist), ``ad_server`` (budget
state only).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, model_validator

from shared_logic.errors import InvalidInput

Role = Literal["admin", "advertiser", "ad_server"]


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
    """The keys the API accepts (only their hashes are kept)."""

    def __init__(self, keys: list[ApiKey]) -> None:
        self._by_hash = {k.sha256: k for k in keys}

    def __len__(self) -> int:
        return len(self._by_hash)

    def identify(self, presented: str | None) -> ApiKey | None:
        if not presented:
            return None
        digest = hash_key(presented)
        found = self._by_hash.get(digest)
        # Compare in constant time even on a hit, so timing says nothing about the hash.
        if found is not None and hmac.compare_digest(found.sha256, digest):
            return found
        return None

    @classmethod
    def load(cls, path: str | Path) -> KeyRing:
        p = Path(path)
        data = yaml.safe_load(p.read_text()) if p.exists() else None
        return cls([ApiKey.model_validate(k) for k in (data or {}).get("keys", [])])


def add_key(path: str | Path, name: str, role: Role, advertiser_id: str | None = None) -> str:
    """Create a key, store its hash in the key file, and return the key (shown once)."""
    if (role == "advertiser") != (advertiser_id is not None):
        raise InvalidInput(
            "advertiser_id", advertiser_id, "is required for an advertiser key, and only for one"
        )
    key = "ak_" + secrets.token_urlsafe(32)
    p = Path(path)
    data = yaml.safe_load(p.read_text()) if p.exists() else None
    keys = list((data or {}).get("keys", []))
    entry = ApiKey(name=name, sha256=hash_key(key), role=role, advertiser_id=advertiser_id)
    keys.append(entry.model_dump(exclude_none=True))
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(yaml.safe_dump({"keys": keys}, sort_keys=False))
    return key
