"""An open-loop HTTP load: ``rate`` requests a second for ``seconds``, each sent at its scheduled
time whether or not the earlier ones have been answered, with each request's latency measured from
its scheduled time to the end of its body (so a server that falls behind shows as late answers,
not as a lower send rate: no coordinated omission).

The instrument shares the machine's two cores with the server it measures, so it is kept cheap:
keep-alive HTTP/1.1 connections on asyncio protocols, one request at a time each (a new one opened
when every open one is busy), the request's bytes built once, the response parsed by ``httptools``
(uvicorn's parser). A GET through ``aiohttp`` cost this process several times the CPU, and its own
pauses showed as the server's latency: against a server answering a fixed body, p99 2.3-4.8 ms at
1,000 requests a second with ``aiohttp``.

Run as a second process: ``python -m benchmarks._load URL KEY RATE SECONDS [--client aiohttp]``;
it prints one JSON object: ``latencies_s`` (of the requests after the first second, the warm-up),
``sent``, ``errors`` (non-200 answers and transport errors, with the first few reasons) and
``seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import httptools

WARMUP_S = 1.0
#: Connections open at most (a server that falls behind gets more requests in flight than this
#: only as a queue here, still timed from their scheduled times).
MAX_CONNECTIONS = 256
#: A request unanswered this long is an error (a hung server does not stall the benchmark).
REQUEST_TIMEOUT_S = 30.0


class _Connection(asyncio.Protocol):
    """One keep-alive connection: one request in flight at a time, its answer awaited as a future."""

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[int] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._close()  # the parser stays broken: the connection is not used again
            self._fail(exc)

    def _close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def on_message_complete(self) -> None:
        if not self.parser.should_keep_alive():  # "Connection: close": not handed out again
            self._close()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(self.parser.get_status_code())

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(exc or ConnectionResetError("the server closed the connection"))

    def _fail(self, exc: BaseException) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    async def get(self, request: bytes) -> int:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.waiter


class _Pool:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.idle: list[_Connection] = []
        self.opened = 0
        self.freed = asyncio.Condition()

    async def take(self) -> _Connection:
        while True:
            while self.idle:
                conn = self.idle.pop()
                if not conn.closed:
                    return conn
                self.opened -= 1
            if self.opened < MAX_CONNECTIONS:
                self.opened += 1
                try:
                    _, conn = await asyncio.get_running_loop().create_connection(
                        lambda: _Connection(self), self.host, self.port
                    )
                except BaseException:
                    self.opened -= 1
                    raise
                return conn
            async with self.freed:
                await self.freed.wait()

    async def give(self, conn: _Connection) -> None:
        if conn.closed:
            self.opened -= 1
        else:
            self.idle.append(conn)
        async with self.freed:
            self.freed.notify()


async def _at(due: float) -> None:
    """Return at ``due`` (``time.perf_counter``), never before: the event loop's timers may fire up
    to a millisecond early, and a request sent before its scheduled time would be timed short
    (negative, against a fast server)."""
    for _ in range(1_000):
        delay = due - time.perf_counter()
        if delay <= 0:
            return
        await asyncio.sleep(delay)


async def _schedule(
    one: Callable[[float, bool], Awaitable[None]], rate: float, seconds: float
) -> tuple[int, float]:
    """``one(due, warm)`` started at each scheduled time (``rate`` a second for the warm-up second,
    then ``seconds``; ``warm`` after the warm-up), never waiting for the earlier ones; when every one
    has ended, how many were sent and how long it all took."""
    tasks: set[asyncio.Task[None]] = set()
    start = time.perf_counter()
    n = int(rate * (seconds + WARMUP_S))
    for i in range(n):
        due = start + i / rate
        await _at(due)
        task = asyncio.ensure_future(one(due, i / rate >= WARMUP_S))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    return n, time.perf_counter() - start


def _request(url: str, key: str) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    head = f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nX-API-Key: {key}\r\nAccept: */*\r\n\r\n"
    return host, port, head.encode("latin-1")


async def run(url: str, key: str, rate: float, seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {"latencies_s": [], "errors": [], "sent": 0}
    host, port, request = _request(url, key)
    pool = _Pool(host, port)
    latencies, errors = out["latencies_s"], out["errors"]

    async def one(due: float, warm: bool) -> None:
        try:
            conn = await pool.take()
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT_S):
                    status = await conn.get(request)
            except TimeoutError:  # an OSError, counted below; the answer may still come: not reused
                conn._close()
                raise
            finally:
                await pool.give(conn)
        except (OSError, httptools.HttpParserError) as exc:
            errors.append(repr(exc))
            return
        if status != 200:
            errors.append(f"HTTP {status}")
        elif warm:
            latencies.append(time.perf_counter() - due)

    out["sent"], out["seconds"] = await _schedule(one, rate, seconds)
    for conn in pool.idle:
        if conn.transport is not None:
            conn.transport.close()
    out["error_count"] = len(errors)
    out["errors"] = errors[:5]
    return out


async def run_aiohttp(url: str, key: str, rate: float, seconds: float) -> dict[str, Any]:
    """The same load sent through ``aiohttp`` (the instrument before; ``--client aiohttp``), to
    compare the two instruments against one server."""
    import aiohttp

    out: dict[str, Any] = {"latencies_s": [], "errors": [], "sent": 0}

    async def one(session: aiohttp.ClientSession, due: float, warm: bool) -> None:
        try:
            async with session.get(url) as resp:
                await resp.read()
                if resp.status != 200:
                    out["errors"].append(f"HTTP {resp.status}")
                    return
        except (aiohttp.ClientError, OSError) as exc:
            out["errors"].append(repr(exc))
            return
        if warm:
            out["latencies_s"].append(time.perf_counter() - due)

    connector = aiohttp.TCPConnector(limit=MAX_CONNECTIONS, ttl_dns_cache=None)
    async with aiohttp.ClientSession(connector=connector, headers={"X-API-Key": key}) as session:
        out["sent"], out["seconds"] = await _schedule(
            lambda due, warm: one(session, due, warm), rate, seconds
        )
    out["error_count"] = len(out["errors"])
    out["errors"] = out["errors"][:5]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._load", description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("key")
    parser.add_argument("rate", type=float)
    parser.add_argument("seconds", type=float)
    parser.add_argument("--client", choices=("protocol", "aiohttp"), default="protocol")
    args = parser.parse_args()
    try:
        from uvloop import run as run_loop
    except ImportError:  # pragma: no cover - the API's server brings uvloop where it runs
        run_loop = asyncio.run
    send = run if args.client == "protocol" else run_aiohttp
    print(json.dumps(run_loop(send(args.url, args.key, args.rate, args.seconds))))


if __name__ == "__main__":
    main()
