"""A worker killed with SIGKILL mid-replay, restarted on the same input, ends exactly
like an uninterrupted run: same spend, same stats, same ledger."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from redis.asyncio import Redis

from batch.lake import Lake
from realtime.keys import Keys
from realtime.ledger import LedgerFlusher, read_ledger, read_stream
from shared_logic.synthetic import SyntheticConfig, generate

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
    """Spend, stats and the ledger (stream ids dropped) of one Redis database."""
    r = Redis.from_url(url)
    out: dict[str, Any] = {}
    async for key in r.scan_iter(match="attr:{b*"):
        k = key.decode()
        kind = await r.type(key)
        if kind == b"string":
            out[k] = await r.get(key)
        elif kind == b"hash":
            out[k] = await r.hgetall(key)
    out["ledger"] = sorted(map(repr, await read_stream(r, Keys("attr", 256, 1))))
    await r.aclose()
    return out


def test_sigkill_at_random_points_then_restart_charges_every_order_once(
    redis_server: Any, traffic_files: tuple[Path, Path, int]
) -> None:
    events, catalog, _ = traffic_files
    clean_url = redis_server.url.rsplit("/", 1)[0] + "/1"
    crash_url = redis_server.url.rsplit("/", 1)[0] + "/2"
    for url in (clean_url, crash_url):
        import redis as sync_redis

        sync_redis.Redis.from_url(url).flushdb()
    env = {**os.environ, "COLUMNS": "200"}
    subprocess.run(
        _replay_cmd(events, catalog, clean_url), check=True, env=env, capture_output=True, timeout=300
    )
    expected = asyncio.run(_state(clean_url))
    assert len(expected["ledger"]) > 200

    rng = random.Random(20261123)
    import redis as sync_redis

    watch = sync_redis.Redis.from_url(crash_url)
    ledger_key = Keys("attr", 256, 1).ledger(0)
    kills = 0
    # Kill when the ledger has grown to a random share of its final size: mid-charging, for sure.
    for share in sorted(rng.uniform(0.1, 0.9) for _ in range(3)):
        target = int(share * len(expected["ledger"]))
        proc = subprocess.Popen(
            _replay_cmd(events, catalog, crash_url),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if watch.xlen(ledger_key) >= target:
                proc.send_signal(signal.SIGKILL)
                kills += 1
                break
            time.sleep(0.002)
        proc.wait(30)
    partial = asyncio.run(_state(crash_url))
    watch.close()
    subprocess.run(
        _replay_cmd(events, catalog, crash_url), check=True, env=env, capture_output=True, timeout=300
    )
    after = asyncio.run(_state(crash_url))
    assert kills >= 1, "the replay finished before any kill: make the traffic larger"
    assert partial != expected or kills == 0  # the kills really interrupted work
    assert after == expected


def test_ledger_flush_killed_between_write_and_commit_redoes_the_same_file(
    redis_url: str, tmp_path: Path, traffic_files: tuple[Path, Path, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    events, catalog, _ = traffic_files
    subprocess.run(_replay_cmd(events, catalog, redis_url), check=True, capture_output=True, timeout=300)
    lake = Lake(f"file://{tmp_path}/lake")

    async def run() -> tuple[int, int]:
        redis = Redis.from_url(redis_url)
        keys = Keys("attr", 256, 1)
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
        assert await redis.xlen(keys.ledger(0)) == 0
        await redis.aclose()
        return in_stream, 0

    in_stream, _ = asyncio.run(run())
    days = [p["dt"] for p in lake.partitions("realtime_ledger")]
    rows = read_ledger(lake, days)
    assert len(rows) == in_stream
    assert len({(r.order_id, r.kind) for r in rows}) == in_stream
