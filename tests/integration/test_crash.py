"""A worker killed with SIGKILL mid-replay, restarted on the same input, ends exactly
like an uninterrupted run: same spend, same stats, same ledger."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from redis.asyncio import Redis

from devtools.synthetic import SyntheticConfig, generate
from realtime.keys import Keys
from realtime.ledger import LedgerFlusher, read_ledger, read_stream
from shared_logic.settings import Settings
from storage import open_lake
from tests.helpers import flush, freeze_when, redis_snapshot

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ATTRIBUTION = str(Path(sys.executable).with_name("attribution"))


@pytest.fixture(scope="module")
def traffic_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, int]:
    folder = tmp_path_factory.mktemp("traffic")
    traffic = generate(SyntheticConfig(users=3_000, days=3, cancel_rate=0.15, duplicate_rate=0.02))
    events = folder / "events.jsonl"
    events.write_text("\n".join(traffic.jsonl()) + "\n")
    catalog = folder / "catalog.yaml"
    catalog.write_text(yaml.safe_dump({"campaigns": traffic.catalog.to_records()}))
    return events, catalog, len(traffic.events)


def _replay_cmd(events: Path, catalog: Path, url: str) -> list[str]:
    return [
        ATTRIBUTION,
        "realtime",
        "replay",
        "--jsonl",
        str(events),
        "--catalog",
        str(catalog),
        "--redis-url",
        url,
        "--no-flush-ledger",
        "--no-progress",
    ]


async def _state(url: str) -> dict[str, Any]:
    """Spend, stats, charges and the ledger and budget-events streams (ids dropped) of one database."""
    state = await redis_snapshot(url, "attr:{b*", sort_streams=True)
    return {k: v for k, v in state.items() if ":pace" not in k}  # pacing: timing-dependent control state


def test_sigkill_at_random_points_then_restart_charges_every_order_once(
    speed_redis_url: str, traffic_files: tuple[Path, Path, int]
) -> None:
    """On one server and on a 3-master Redis Cluster. Three replays are killed where they have
    checkpointed 10-90% of the records (each frozen when its state is seen, then SIGKILLed: the
    aim holds on a loaded machine), then a last one runs to the end: the state equals an
    uninterrupted run's."""
    events, catalog, _ = traffic_files
    total = sum(1 for line in events.read_bytes().splitlines() if line.strip())  # the replay's records
    url = speed_redis_url
    env = {**os.environ, "COLUMNS": "200"}
    subprocess.run(_replay_cmd(events, catalog, url), check=True, env=env, capture_output=True, timeout=300)
    expected = asyncio.run(_state(url))
    assert sum(len(v) for k, v in expected.items() if k.endswith(":ledger")) > 200  # every shard's
    flush(url)
    crash_url = url

    rng = random.Random(20261123)
    from realtime.client import is_cluster

    watch: Any = (
        __import__("redis").RedisCluster(host="127.0.0.1", port=int(url.split(",")[0].rsplit(":", 1)[1]))
        if is_cluster(url)
        else __import__("redis").Redis.from_url(url)
    )
    clocks_key = Keys("attr", 256, 1).clocks()

    def consumed() -> int:
        """Records the replay has checkpointed (its partitions' next offsets)."""
        return sum(int(v.split(b"|")[0]) for v in watch.hgetall(clocks_key).values())

    kills: list[int] = []
    # Each kill lands where the replay has checkpointed a random share of the records (it checkpoints
    # after each chunk of 4,000, and charges as it goes): it is frozen (SIGSTOP) when that state is
    # seen, then killed, so it cannot have run past it meanwhile.
    for share in sorted(rng.uniform(0.1, 0.9) for _ in range(3)):
        proc = subprocess.Popen(
            _replay_cmd(events, catalog, crash_url),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # Past the share and past where the last run was killed: each run is killed after progress of its own.
        at = max(share * total, consumed() + 1)
        try:
            kills.append(freeze_when(proc, lambda at=at: (n := consumed()) >= at and n, 120))
        finally:
            proc.kill()
            proc.wait(30)
    partial = asyncio.run(_state(crash_url))
    watch.close()
    subprocess.run(
        _replay_cmd(events, catalog, crash_url), check=True, env=env, capture_output=True, timeout=300
    )
    after = asyncio.run(_state(crash_url))
    assert any(n < total for n in kills), f"every kill came after the last record: {kills} of {total}"
    assert partial != expected  # the kills really interrupted work
    assert after == expected


def test_ledger_flush_killed_between_write_and_commit_redoes_the_same_file(
    redis_url: str, tmp_path: Path, traffic_files: tuple[Path, Path, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    events, catalog, _ = traffic_files
    subprocess.run(_replay_cmd(events, catalog, redis_url), check=True, capture_output=True, timeout=300)
    lake = open_lake(f"file://{tmp_path}/lake")

    async def run() -> tuple[int, int]:
        redis = Redis.from_url(redis_url)
        keys = Keys.of(Settings().keys)  # the layout the replay wrote with
        in_stream = len(await read_stream(redis, keys))
        flusher = LedgerFlusher(redis, keys, lake, batch=200)
        calls = {"n": 0}
        original = redis.pipeline

        def dying_pipeline(*args: Any, **kwargs: Any) -> Any:
            calls["n"] += 1
            if calls["n"] == 3:  # the third commit never happens: the process "dies" after writing files
                raise KeyboardInterrupt
            return original(*args, **kwargs)

        monkeypatch.setattr(redis, "pipeline", dying_pipeline)
        with pytest.raises(KeyboardInterrupt):
            await flusher.flush()
        monkeypatch.setattr(redis, "pipeline", original)
        await LedgerFlusher(redis, keys, lake, batch=200).flush()
        assert [await redis.xlen(keys.ledger(s)) for s in range(keys.budget_shards)] == [
            0
        ] * keys.budget_shards
        await redis.aclose()
        return in_stream, 0

    in_stream, _ = asyncio.run(run())
    days = [p["dt"] for p in lake.partitions("realtime_ledger")]
    rows = read_ledger(lake, days)
    assert len(rows) == in_stream
    assert len({(r.order_id, r.kind) for r in rows}) == in_stream


def test_flushers_racing_on_the_same_shards_write_each_entry_once(
    redis_url: str, tmp_path: Path, traffic_files: tuple[Path, Path, int]
) -> None:
    """Every Kafka worker flushes on a timer: three flushers at once, in small batches, interleaving
    at every await, still land each ledger entry exactly once and empty the streams."""
    events, catalog, _ = traffic_files
    subprocess.run(_replay_cmd(events, catalog, redis_url), check=True, capture_output=True, timeout=300)
    lake = open_lake(f"file://{tmp_path}/lake")
    writes: Counter[str] = Counter()
    put_file = lake.put_file

    def counted(ref: Any, name: str, table: Any) -> None:
        writes[f"{ref.path}/{name}"] += 1
        put_file(ref, name, table)

    lake.put_file = counted  # type: ignore[method-assign]

    async def run() -> tuple[int, list[int]]:
        redis = Redis.from_url(redis_url)
        keys = Keys.of(Settings().keys)  # the layout the replay wrote with
        in_stream = len(await read_stream(redis, keys))
        flushers = [LedgerFlusher(redis, keys, lake, batch=97) for _ in range(3)]
        counts = [0, 0, 0]
        while sum([await redis.xlen(keys.ledger(s)) for s in range(keys.budget_shards)]):
            got = await asyncio.gather(*(f.flush() for f in flushers))
            counts = [a + b for a, b in zip(counts, got, strict=True)]
        await redis.aclose()
        return in_stream, counts

    in_stream, counts = asyncio.run(run())
    assert sum(counts) == in_stream  # each range counted by the one flusher that committed it
    assert max(writes.values()) >= 2  # they really raced: a range written by more than one
    rows = read_ledger(lake, [p["dt"] for p in lake.partitions("realtime_ledger")])
    assert len(rows) == in_stream
    assert len({(r.order_id, r.kind) for r in rows}) == in_stream
