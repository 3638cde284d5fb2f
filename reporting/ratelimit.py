"""Per-key and per-address rate limits: token buckets kept in Redis, shared by every API process.

Each bucket is one Redis key updated by one Lua script (``lua/gcra.lua``: GCRA, the token bucket
written as a single timestamp on Redis's clock). One key per call and no MULTI, so it runs
unchanged on a Redis Cluster client. No library fitted: ``limits`` (and ``slowapi`` over it) has
no token bucket, ``throttled-py`` builds its own client from a URL instead of taking the one the
API holds, and the Redis-backed token buckets of ``redis-limiters`` wait for a token instead of
refusing.

A valid key draws from its own bucket at its role's rate (``api.rate_<role>_per_s`` and
``_burst``); a request without a valid key draws from its client address's bucket
(``anonymous``; an IPv6 address counts by its /64), so floods of wrong keys are throttled too.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from importlib import resources
from typing import Any

from realtime.client import exchanges
from shared_logic.settings import ApiSettings, RateRole

SOURCE = resources.files("reporting").joinpath("lua", "gcra.lua").read_text(encoding="utf-8")
ROLES: tuple[RateRole, ...] = ("admin", "advertiser", "ad_server", "anonymous")


@dataclass(frozen=True, slots=True)
class Rate:
    """``per_s`` requests a second on average, ``burst`` at once."""

    per_s: float
    burst: int

    @property
    def interval_us(self) -> int:
        return max(1, round(1_000_000 / self.per_s))


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    remaining: int
    retry_after_s: float

    @property
    def retry_after(self) -> int:
        """Whole seconds for ``Retry-After`` (at least 1: waiting less could still be refused)."""
        return max(1, math.ceil(self.retry_after_s))


def rates(section: ApiSettings) -> dict[RateRole, Rate]:
    return {role: Rate(*section.rate(role)) for role in ROLES}


def address_bucket(host: str | None) -> str:
    """The bucket of a client address: the address itself, or its /64 for IPv6 (one subscriber's)."""
    if not host:
        return "ip:unknown"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return f"ip:{host[:64]}"
    if ip.version == 6:
        return f"ip:{ipaddress.ip_network(f'{ip}/64', strict=False).network_address}/64"
    return f"ip:{ip}"


class RateLimiter:
    """Token buckets on ``redis`` (any redis-py asyncio client: ``Redis`` or ``RedisCluster``)."""

    def __init__(self, redis: Any, prefix: str) -> None:
        self.redis = redis
        self._script = redis.register_script(SOURCE)
        self.prefix = prefix
        #: Whether ``command`` may ride in another round trip of ``redis``: one server's client,
        #: which sends it once (``realtime.client.Exchange``; a Redis Cluster pipeline may send its
        #: commands again, and this script is not idempotent).
        self.pipelined = exchanges(redis)

    def key(self, bucket: str) -> str:
        return f"{self.prefix}:ratelimit:{bucket}"

    async def hit(self, bucket: str, rate: Rate, cost: int = 1) -> Verdict:
        """Take ``cost`` tokens from ``bucket`` if it holds them; a refusal takes nothing."""
        _check_cost(rate, cost)
        return self.verdict(
            await self._script(keys=[self.key(bucket)], args=[rate.interval_us, rate.burst, cost])
        )

    def command(self, bucket: str, rate: Rate, cost: int = 1) -> tuple[Any, ...]:
        """``hit`` as one command, to send in a pipeline of the same client (its reply to ``verdict``;
        a NOSCRIPT reply took nothing: ``hit`` loads the script and asks again)."""
        _check_cost(rate, cost)
        return ("EVALSHA", self._script.sha, 1, self.key(bucket), rate.interval_us, rate.burst, cost)

    @staticmethod
    def verdict(reply: Any) -> Verdict:
        allowed, left, wait_us = reply
        return Verdict(bool(allowed), int(left), int(wait_us) / 1_000_000)


def _check_cost(rate: Rate, cost: int) -> None:
    if not 1 <= cost <= rate.burst:
        raise ValueError(f"cost = {cost}: must be between 1 and the burst ({rate.burst})")
