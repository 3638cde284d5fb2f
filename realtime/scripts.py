"""The Lua scripts of the speed layer: their source, their contract header, running them.

Redis runs each script atomically but never rolls one back, so every script reads and checks
first and writes last (below a ``-- writes below`` line). The record encodings a script shares
with Python are named in its header (``-- contract: name = value``), and a test holds each
header equal to ``shared_logic.contract.LUA_CONTRACT``.

Calls are queued with ``execute_command("EVALSHA", …)``, which works in the pipelines of both
``Redis`` and ``RedisCluster`` (redis-py's ``Script`` objects cannot be queued in a cluster
pipeline), and a call answered NOSCRIPT (a node restarted, a failover) is loaded again and sent
again, alone: it had not run.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from importlib import resources
from typing import Any

from redis.exceptions import NoScriptError

NAMES = ("ingest", "claim", "settle", "flush")
WRITES_BELOW = "-- writes below"
_HEADER = re.compile(r"^-- contract: (\w+) = (.+)$", re.MULTILINE)

Call = tuple[str, Sequence[Any], Sequence[Any]]  # script name, keys, args
Command = tuple[Any, ...]  # a plain command, e.g. ("HGETALL", key)


def source(name: str) -> str:
    return resources.files("realtime").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


def contract_header(name: str) -> dict[str, str]:
    """The encodings a script says it uses, from its ``-- contract:`` lines."""
    return {m.group(1): m.group(2).strip() for m in _HEADER.finditer(source(name))}


class Scripts:
    """The scripts of the speed layer on one client."""

    def __init__(self) -> None:
        self.text = {name: source(name) for name in NAMES}
        self.sha = {name: hashlib.sha1(text.encode()).hexdigest() for name, text in self.text.items()}  # noqa: S324 - Redis names scripts by SHA-1

    async def load(self, redis: Any) -> None:
        """Load every script (on every primary of a cluster)."""
        for text in self.text.values():
            await redis.script_load(text)

    def _queue(self, pipe: Any, call: Call) -> None:
        name, keys, args = call
        pipe.execute_command("EVALSHA", self.sha[name], len(keys), *keys, *args)

    async def run(self, redis: Any, calls: Sequence[Call], tail: Sequence[Command] = ()) -> list[Any]:
        """Run script calls, then plain commands, in one pipeline; results in order.

        A call that failed comes back as its exception (one bucket's failure is not the batch's);
        a NOSCRIPT is loaded again and re-sent once.
        """
        async with redis.pipeline(transaction=False) as pipe:
            for call in calls:
                self._queue(pipe, call)
            for command in tail:
                pipe.execute_command(*command)
            results: list[Any] = await pipe.execute(raise_on_error=False)
        missing = [i for i, r in enumerate(results[: len(calls)]) if isinstance(r, NoScriptError)]
        if missing:
            await self.load(redis)
            async with redis.pipeline(transaction=False) as pipe:
                for i in missing:
                    self._queue(pipe, calls[i])
                for i, r in zip(missing, await pipe.execute(raise_on_error=False), strict=True):
                    results[i] = r
        for r in results[len(calls) :]:
            if isinstance(r, Exception):
                raise r
        return results
