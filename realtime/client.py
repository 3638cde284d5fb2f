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

import asyncio
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlparse

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ResponseError

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


def exchanges(redis: Any) -> bool:
    """Whether ``Exchange`` may send for ``redis``: a one-server client (``connect``'s), not a
    cluster's, nor a wrapper, encoding as ``Packed`` commands are (UTF-8)."""
    if type(redis) is not Redis or redis.single_connection_client:
        return False
    encoding = str(redis.connection_pool.connection_kwargs.get("encoding", "utf-8"))
    return encoding.lower().replace("-", "") == "utf8"


class Packed(bytes):
    """A command already in the Redis protocol's form (RESP, its arguments UTF-8), which ``Exchange``
    sends as is: a caller that sends the same arguments again and again (the answer's ``MGET`` of
    three keys a candidate) keeps them packed instead of packing 150 arguments a request."""

    __slots__ = ()

    @classmethod
    def argument(cls, arg: str) -> bytes:
        """One argument's RESP form (a bulk string), to join into a ``Packed`` command."""
        raw = arg.encode()
        return b"$%d\r\n%b\r\n" % (len(raw), raw)

    @classmethod
    def of(cls, name: bytes, arguments: Sequence[bytes], count: int) -> Packed:
        """The command ``name`` with ``count`` arguments, already in RESP form (``argument``'s),
        joined in ``arguments``."""
        return cls(b"*%d\r\n$%d\r\n%b\r\n%b" % (count + 1, len(name), name, b"".join(arguments)))


class LeadFailed(Exception):
    """A round trip with a lead command failed after the lead's reply had arrived: ``reply`` is that
    reply, ``__cause__`` the failure of the rest."""

    def __init__(self, reply: Any) -> None:
        super().__init__("the round trip failed after its first reply")
        self.reply = reply


class Exchange:
    """Sends ``commands`` in one round trip on one server (``connect``'s client) and answers their
    replies as ``redis.pipeline(transaction=False)`` and ``execute(raise_on_error=False)`` do (a
    reply error in its place; the connection's retry policy, disconnecting before each retry; the
    raw replies, which is what the pipeline answers for commands without a response callback, such
    as ``MGET`` and ``EVALSHA``), without the pipeline's per-call machinery (its object, its
    observability hooks, its HIMPORT preparation) nor, for up to ``idle`` connections a round trip
    left fully read, the pool's checkout (its condition, lock and hooks: the pool's own health
    check, ``ensure_connection``, still runs before each use, and a connection the server asked to
    reconnect goes back through the pool). An ad request's read: about 190 to 130 us of CPU. The
    connections kept stay the pool's (closed with it).

    ``lead_within`` (seconds): the first command is the caller's own (the API's rate limit), sent
    once and never again (no retry), and only its reply is awaited under that deadline; a failure
    after its reply arrived is ``LeadFailed`` carrying the reply."""

    def __init__(self, redis: Redis, idle: int = 8) -> None:
        self.pool, self.idle = redis.connection_pool, idle
        self._idle: list[AbstractConnection] = []

    async def __call__(
        self, commands: Sequence[tuple[Any, ...] | Packed], lead_within: float | None = None
    ) -> list[Any]:
        pool, idle = self.pool, self._idle
        conn = None
        while idle and conn is None:
            conn = idle.pop()
            if conn.should_reconnect():  # type: ignore[no-untyped-call]
                await _release(pool, conn)
                conn = None
        if conn is not None:
            try:
                await pool.ensure_connection(conn)
            except BaseException:
                await _release(pool, conn)
                raise
        else:
            conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        replies: list[Any] = []

        async def read() -> Any:
            try:
                return await conn.read_response()
            except ResponseError as e:
                return e

        def packed() -> list[bytes]:
            out: list[bytes] = []
            for command in commands:
                if isinstance(command, Packed):
                    out.append(command)
                else:
                    out += conn.pack_command(*command)
            return out

        async def send() -> list[Any]:
            replies.clear()
            await conn.send_packed_command(packed())
            for _ in commands:
                replies.append(await read())  # noqa: PERF401 - what was read stays read on a failure
            return replies

        async def failed(error: Exception) -> None:
            await conn.disconnect()

        done = False
        try:
            if lead_within is None:
                await conn.retry.call_with_retry(send, failed)
            else:
                await conn.send_packed_command(packed())
                async with asyncio.timeout(lead_within):
                    replies.append(await read())
                try:
                    for _ in commands[1:]:
                        replies.append(await read())  # noqa: PERF401 - as above
                except Exception as exc:
                    raise LeadFailed(replies[0]) from exc
            done = True
        finally:
            if done and len(idle) < self.idle:
                idle.append(conn)  # every reply read: ready for the next round trip
            else:
                await _release(pool, conn)
        return replies


async def _release(pool: Any, conn: AbstractConnection) -> None:
    """Back to the pool, even when the caller is being cancelled (a release cut off while it waits
    for the pool's lock would lose the connection's slot for good)."""
    await asyncio.shield(pool.release(conn))
