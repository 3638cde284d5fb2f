"""An open-loop HTTP load: ``rate`` requests a second for ``seconds``, each sent at its scheduled
time whether or not the earlier ones have been answered, with each request's latency measured from
its scheduled time to the end of its body (so a server that falls behind shows as late answers,
not as a lower send rate: no coordinated omission).

Run as a second process: ``python -m benchmarks._load URL KEY RATE SECONDS``; it prints one JSON
object: ``latencies_s`` (of the requests after the first second, the warm-up), ``sent``,
``errors`` (non-200 answers and transport errors, with the first few reasons) and ``seconds``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import aiohttp

WARMUP_S = 1.0


async def _one(session: aiohttp.ClientSession, url: str, due: float, out: dict[str, Any]) -> None:
    try:
        async with session.get(url) as resp:
            await resp.read()
            if resp.status != 200:
                out["errors"].append(f"HTTP {resp.status}")
                return
    except (aiohttp.ClientError, OSError) as exc:
        out["errors"].append(repr(exc))
        return
    if due - out["start"] >= WARMUP_S:
        out["latencies_s"].append(time.perf_counter() - due)


async def run(url: str, key: str, rate: float, seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {"latencies_s": [], "errors": [], "sent": 0}
    connector = aiohttp.TCPConnector(limit=256, ttl_dns_cache=None)
    async with aiohttp.ClientSession(connector=connector, headers={"X-API-Key": key}) as session:
        tasks: set[asyncio.Task[None]] = set()
        out["start"] = start = time.perf_counter()
        n = int(rate * (seconds + WARMUP_S))
        for i in range(n):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(_one(session, url, due, out))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            out["sent"] += 1
        await asyncio.gather(*tasks)
        out["seconds"] = time.perf_counter() - start
    del out["start"]
    out["error_count"] = len(out["errors"])
    out["errors"] = out["errors"][:5]
    return out


def main() -> None:
    url, key, rate, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
    try:
        from uvloop import run as run_loop
    except ImportError:  # pragma: no cover - the API's server brings uvloop where it runs
        run_loop = asyncio.run
    print(json.dumps(run_loop(run(url, key, rate, seconds))))


if __name__ == "__main__":
    main()
