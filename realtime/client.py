"""The speed layer's Redis client, from the ``redis`` settings section: one server or a Redis Cluster.

- ``redis://host:port/db`` (or ``rediss://``): one server.
- ``redis+cluster://host:port[,host:port…]`` (or ``rediss+cluster://``): a Redis Cluster; every
  listed node is a startup node. Every key carries a hash tag and every script's keys share a
  slot (``realtime.keys``), so the cluster client routes each script call to one node.

Code that uses the client stays on the API both clients share: pipelines with
``transaction=False`` (``True`` only for one slot), scripts queued with ``execute_command``
(``realtime.scripts``), ``scan_iter`` and single-key commands.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from shared_logic.errors import InvalidSetting
from shared_logic.settings import RedisSettings

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
#: Connections a process keeps to one Redis server at most, and how long a command waits for one.
MAX_CONNECTIONS = 100
POOL_WAIT_S = 5.0


_hiredis_pack: Callable[[tuple[Any, ...]], bytes] | None
try:
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # pragma: no cover - the api extra alone installs redis without hiredis
    _hiredis_pack = None

#: Argument types whose RESP form hiredis's packer writes exactly as redis-py's encoder does
#: (``str`` as UTF-8, ``int`` in decimal); anything else (floats, memoryviews) takes redis-py's.
_PLAIN = frozenset((str, bytes, int))


class _HiredisPacking:
    """A connection that packs commands with hiredis (C) instead of redis-py's asyncio packer.

    redis-py's asyncio connection packs in Python, argument by argument: an ad request's answer
    (a command of 150 keys for 50 candidates) spent more time packing than on the wire.
    The sync client already packs with hiredis; this does the same for a command whose arguments
    are all ``str``, ``bytes`` or ``int`` under UTF-8 (the same bytes either way; anything else
    is packed as before)."""

    def pack_command(self, *args: Any) -> list[bytes]:
        encoder = self.encoder  # type: ignore[attr-defined]
        if (
            _hiredis_pack is None
            or encoder.encoding.lower().replace("-", "") != "utf8"
            or encoder.encoding_errors != "strict"
            or not _PLAIN.issuperset(map(type, args))
        ):
            return super().pack_command(*args)  # type: ignore[misc, no-any-return]
        first = args[0]
        if isinstance(first, str):  # 'CONFIG GET' is two arguments, as redis-py splits it
            args = (*first.encode().split(), *args[1:])
        elif b" " in first:
            args = (*first.split(), *args[1:])
        return [_hiredis_pack(args)]


_PACKING: dict[type[AbstractConnection], type[AbstractConnection]] = {}


def _packing(base: type[AbstractConnection]) -> type[AbstractConnection]:
    """``base`` (TCP, TLS or Unix socket, as the URL chose) packing with hiredis (one class each)."""
    if base not in _PACKING:
        _PACKING[base] = type(base.__name__, (_HiredisPacking, base), {})
    return _PACKING[base]


def is_cluster(url: str) -> bool:
    return urlparse(url).scheme in CLUSTER_SCHEMES


def connect(section: RedisSettings) -> Any:
    """An asyncio client for ``section.url`` (``Redis`` or ``RedisCluster``)."""
    url = section.url
    if not is_cluster(url):
        # A burst of concurrent requests (the API at 1,000 ad requests a second) waits for one of
        # the pool's connections instead of failing: redis-py's default pool raises
        # MaxConnectionsError past 100, which the API answered as 503.
        pool = BlockingConnectionPool.from_url(url, max_connections=MAX_CONNECTIONS, timeout=POOL_WAIT_S)
        pool.connection_class = _packing(pool.connection_class)
        return Redis.from_pool(pool)
    parsed = urlparse(url)
    nodes = []
    for part in parsed.netloc.rsplit("@", 1)[-1].split(","):
        host, _, port = part.rpartition(":")
        if not host or not port.isdigit():
            raise InvalidSetting(
                "ATTRIBUTION_REDIS_URL", url, "a cluster URL lists host:port nodes, comma-separated"
            )
        nodes.append(ClusterNode(host, int(port)))
    if parsed.path not in ("", "/", "/0"):
        raise InvalidSetting("ATTRIBUTION_REDIS_URL", url, "Redis Cluster has one database: give none, or /0")
    # Every script and command of the speed layer is idempotent, so a retried pipeline is safe.
    return RedisCluster(
        startup_nodes=nodes,
        ssl=parsed.scheme.startswith("rediss"),
        username=parsed.username,
        password=parsed.password,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 3),
    )
