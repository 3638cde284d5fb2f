"""The speed layer on a real Kafka-protocol broker (Tansu, see devtools.servers): backlogs decided
exactly as a replay of the same events, whatever the pace of each topic."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections import Counter
from typing import Any

import pytest

from devtools.synthetic import SyntheticConfig, Traffic, generate
from devtools.traffic import produce
from realtime.kafka import KafkaWorker
from realtime.replay import replay
from realtime.routing import route
from shared_logic.settings import Settings
from tests.helpers import read_dead_letter_topic, redis_snapshot

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TRAFFIC = SyntheticConfig(
    users=1_200, days=3, duplicate_rate=0.02, cancel_rate=0.15, late_rate=0.03, malformed_rate=0.002, seed=23
)


def _settings(broker: Any, redis_url: str) -> Settings:
    """Settings of one test: its own topics and consumer group on the shared broker."""
    tag = uuid.uuid4().hex[:8]
    return Settings().replace(
        redis_url=redis_url,
        realtime_broker_url=broker.url,
        realtime_topic_prefix=f"t{tag}",
        realtime_app_id=f"g{tag}",
        realtime_session_timeout_ms=6_000,
        realtime_heartbeat_interval_ms=1_000,
        realtime_timer_interval_s=0.2,
        realtime_ledger_flush_interval_s=0,  # the outcome compared is Redis's, ledger streams included
    )


def _db(url: str, n: int) -> str:
    import redis

    out = url.rsplit("/", 1)[0] + f"/{n}"
    redis.Redis.from_url(out).flushdb()
    return out


async def _outcome(url: str) -> dict[str, Any]:
    """Everything the speed layer decided and charged: touches (with their arrival watermarks),
    counters, claims, charges, spend, stats, the ledger and the budget events, in order. Not the
    consumers' positions (a replay names its partitions apart) nor the dead letters' store."""
    state = await redis_snapshot(url)
    return {k: v for k, v in state.items() if not k.endswith((":clocks", ":dead-letters"))}


def _ends(values: list[Any], settings: Settings) -> Counter[tuple[str, int]]:
    from realtime.routing import partition_for

    cfg = settings.realtime
    ends: Counter[tuple[str, int]] = Counter()
    for v in values:
        etype, key = route(v)
        ends[(cfg.topic(etype), partition_for(key, cfg.topic_partitions))] += 1
    return ends


async def _drain_backlog(
    settings: Settings,
    traffic: Traffic,
    values: list[Any],
    slow_topic: str | None = None,
    produced: Counter[tuple[str, int]] | None = None,
) -> dict[str, int]:
    """Produce every value (unless ``produced`` says what is in the topics already), then run one
    worker over the backlog until all is settled."""
    if produced is None:
        await produce(values, settings.realtime)
    ends = produced if produced is not None else _ends(values, settings)
    worker = KafkaWorker(settings, traffic.catalog)
    await worker.start()
    if slow_topic is not None:
        worker.pause([settings.realtime.topic(slow_topic)])
    task = asyncio.create_task(worker.run())
    engine = worker.engine
    assert engine is not None
    seen: dict[str, int] = {}
    try:
        deadline = time.monotonic() + 240
        if slow_topic is not None:
            orders = settings.realtime.topic("order")
            while True:
                # Read the worker between batches and rebalances (its lock), never in the middle of one.
                async with worker.lock:
                    if all(
                        (c := engine.clocks.parts.get((orders, p))) is not None
                        and c.next_offset == ends[(orders, p)]
                        for p in range(settings.realtime.topic_partitions)
                    ):
                        # Every order is in; the slow topic lags, so its partitions hold the watermark back.
                        seen["released_while_slow"] = int(
                            engine.metrics.value("attribution_decisions_total", outcome="attributed")
                        )
                        seen["pending_while_slow"] = engine.pending
                        break
                assert time.monotonic() < deadline, "the order topic was not consumed"
                await asyncio.sleep(0.1)
            worker.resume([settings.realtime.topic(slow_topic)])
        while True:
            async with worker.lock:
                parts = engine.clocks.parts
                done = len(parts) == len(worker.sources) and all(
                    parts[tp].next_offset == ends[tp] for tp in parts
                )
                if done and engine.pending == 0 and not await engine.redis.exists(engine.keys.queue(0)):
                    seen["processed"] = worker.processed
                    seen["dead_letters"] = int(
                        sum(
                            s.value
                            for f in engine.metrics.registry.collect()
                            for s in f.samples
                            if s.name == "attribution_dead_letters_total"
                        )
                    )
                    break
            assert time.monotonic() < deadline, f"backlog not drained: {engine.pending} pending"
            await asyncio.sleep(0.1)
    finally:
        worker.stop()
        await task
    return seen


@pytest.fixture(scope="module")
def traffic() -> Traffic:
    return generate(TRAFFIC)


@pytest.fixture(scope="module")
def replayed(traffic: Traffic, redis_server: Any) -> dict[str, Any]:
    url = _db(redis_server.url, 5)
    settings = Settings().replace(redis_url=url)
    asyncio.run(replay([e.payload for e in traffic.events], traffic.catalog, settings, show_progress=False))
    return asyncio.run(_outcome(url))


def test_a_backlog_on_the_broker_equals_the_replay(
    broker: Any, redis_server: Any, traffic: Traffic, replayed: dict
) -> None:
    values = [e.payload for e in traffic.events]
    url = _db(redis_server.url, 6)
    settings = _settings(broker, url)
    seen = asyncio.run(_drain_backlog(settings, traffic, values))
    assert seen["processed"] == len(values)
    # Dead letters reach the dead-letter topic with field, value and rule, and the counter moved.
    letters = asyncio.run(read_dead_letter_topic(settings))
    assert len(letters) == seen["dead_letters"] >= sum(e.malformed for e in traffic.events) > 5
    assert all(x["field"] and x["rule"] and x["raw_sha256"] for x in letters)
    assert {x["rule"] for x in letters} & {"is required", "is not valid JSON", "must not be negative"}
    got = asyncio.run(_outcome(url))
    ledger = got["attr:{b0}:ledger"]
    assert len(ledger) > 300
    assert Counter(e[b"kind"] for e in ledger)[b"refund"] > 10
    assert any(e[b"capped"] == b"1" for e in ledger)
    assert got == replayed


def test_a_slow_touch_topic_changes_nothing(
    broker: Any, redis_server: Any, traffic: Traffic, replayed: dict
) -> None:
    """The click topic is paused while every order is consumed: no order is decided before its
    clicks are in, and the result equals the replay exactly."""
    values = [e.payload for e in traffic.events]
    url = _db(redis_server.url, 7)
    seen = asyncio.run(_drain_backlog(_settings(broker, url), traffic, values, slow_topic="click"))
    assert seen["released_while_slow"] == 0
    assert seen["pending_while_slow"] > 100
    assert asyncio.run(_outcome(url)) == replayed


def _worker_env(settings: Settings, catalog_path: str) -> dict[str, str]:

    cfg = settings.realtime
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATTRIBUTION_")}
    return {
        **env,
        "ATTRIBUTION_REDIS_URL": settings.redis.url,
        "ATTRIBUTION_CATALOG_URL": catalog_path,
        "ATTRIBUTION_REALTIME_BROKER_URL": cfg.broker_url,
        "ATTRIBUTION_REALTIME_TOPIC_PREFIX": cfg.topic_prefix,
        "ATTRIBUTION_REALTIME_APP_ID": cfg.app_id,
        "ATTRIBUTION_REALTIME_SESSION_TIMEOUT_MS": str(cfg.session_timeout_ms),
        "ATTRIBUTION_REALTIME_HEARTBEAT_INTERVAL_MS": str(cfg.heartbeat_interval_ms),
        "ATTRIBUTION_REALTIME_TIMER_INTERVAL_S": "0.2",
        "ATTRIBUTION_REALTIME_LEDGER_FLUSH_INTERVAL_S": str(cfg.ledger_flush_interval_s),
        "ATTRIBUTION_REALTIME_BATCH_SIZE": "500",  # small batches: the kill lands mid-stream
    }


def _progress(
    url: str, settings: Settings, ends: Counter[tuple[str, int]]
) -> tuple[dict[tuple[str, int], int], bool]:
    """Records processed per partition (from the checkpoints) and whether everything is settled."""
    import redis

    from realtime.keys import Keys

    r = redis.Redis.from_url(url)
    keys = Keys.of(settings.keys)
    clocks = {k.decode(): int(v.split(b"|")[0]) for k, v in r.hgetall(keys.clocks()).items()}
    done = {(t, p): min(clocks.get(f"{t}/{p}", 0), n) for (t, p), n in ends.items()}
    pending = sum(r.hlen(keys.pending(b)) for b in range(keys.user_buckets))
    settled = sum(done.values()) == sum(ends.values()) and pending == 0 and not r.exists(keys.queue(0))
    r.close()
    return done, settled


def test_two_workers_one_killed_mid_stream_equals_the_replay(
    broker: Any, redis_server: Any, tmp_path: Any
) -> None:
    """Two ``attribution worker`` processes share 12 partitions of each topic; one is killed with SIGKILL
    while both halves of the partitions have work left; the other takes its partitions over (from their
    checkpoints, with their pending orders), and the outcome equals the replay."""
    import signal
    import subprocess
    import sys
    from pathlib import Path

    import orjson
    import yaml

    traffic = generate(
        SyntheticConfig(users=5_000, days=3, duplicate_rate=0.02, cancel_rate=0.15, late_rate=0.02, seed=31)
    )
    values = [e.payload for e in traffic.events]
    replay_url = _db(redis_server.url, 9)
    asyncio.run(
        replay(values, traffic.catalog, Settings().replace(redis_url=replay_url), show_progress=False)
    )
    replayed = asyncio.run(_outcome(replay_url))

    url = _db(redis_server.url, 8)
    settings = _settings(broker, url)
    asyncio.run(produce(values, settings.realtime))
    ends = _ends(values, settings)
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(yaml.safe_dump({"campaigns": traffic.catalog.to_records()}))
    exe = str(Path(sys.executable).with_name("attribution"))
    env = {**_worker_env(settings, str(catalog)), "ATTRIBUTION_REALTIME_BATCH_SIZE": "150"}
    logs = [open(tmp_path / f"worker{i}.log", "wb") for i in range(2)]  # noqa: SIM115 - closed below
    workers = [
        subprocess.Popen([exe, "worker"], env=env, stdout=log, stderr=subprocess.STDOUT) for log in logs
    ]

    def halves_left() -> tuple[bool, bool, int]:
        done, _ = _progress(url, settings, ends)
        left = {tp for tp, n in ends.items() if done[tp] < n}
        return any(p < 6 for _, p in left), any(p >= 6 for _, p in left), sum(done.values())

    try:
        deadline = time.monotonic() + 240
        total = sum(ends.values())
        while (progress := halves_left())[2] < total * 0.2:
            assert time.monotonic() < deadline, (tmp_path / "worker0.log").read_text()[-2000:]
            assert all(w.poll() is None for w in workers)
            time.sleep(0.02)
        low_left, high_left, done = progress
        workers[1].send_signal(signal.SIGKILL)
        workers[1].wait(10)
        assert low_left, "partitions 0..5 were done before the kill: make the traffic larger"
        assert high_left, "partitions 6..11 were done before the kill: make the traffic larger"
        assert done < total
        while not _progress(url, settings, ends)[1]:
            assert time.monotonic() < deadline, (tmp_path / "worker0.log").read_text()[-3000:]
            assert workers[0].poll() is None, (tmp_path / "worker0.log").read_text()[-3000:]
            time.sleep(0.2)
        workers[0].send_signal(signal.SIGTERM)
        assert workers[0].wait(30) == 0
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
        for log in logs:
            log.close()
    assert "assigned 60 partitions" in (tmp_path / "worker0.log").read_text()  # it took the other half over
    got = asyncio.run(_outcome(url))
    charges = [e for e in got["attr:{b0}:ledger"] if e[b"kind"] in (b"charge", b"cancelled")]
    orders = [orjson.loads(e[b"d"])["order_id"] for e in charges]
    assert len(orders) == len(set(orders)) > 500  # every order charged once
    assert got == replayed


class _Killed(BaseException):  # a death: nothing in the worker handles it
    """The worker dies here (no checkpoint, no commit)."""


def test_redelivered_events_after_a_crash_between_effects_and_commit_change_nothing(
    broker: Any, redis_server: Any, traffic: Traffic, replayed: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker dies after the Lua calls of a batch returned but before the batch is checkpointed and
    its offsets committed: the next worker is redelivered those events and they change nothing."""
    from realtime.engine import SpeedLayer

    values = [e.payload for e in traffic.events]
    url = _db(redis_server.url, 10)
    settings = _settings(broker, url).replace(realtime_batch_size=1_000)
    asyncio.run(produce(values, settings.realtime))
    ends = _ends(values, settings)
    original = SpeedLayer._checkpoint
    calls = {"n": 0}

    async def dies_on_the_fourth(self: SpeedLayer, released: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 4:
            raise _Killed
        await original(self, released)

    async def first_worker() -> tuple[int, int]:
        monkeypatch.setattr(SpeedLayer, "_checkpoint", dies_on_the_fourth)
        worker = KafkaWorker(settings, traffic.catalog)
        await worker.start()

        async def no_goodbye() -> None:  # a dead process commits nothing
            assert worker.consumer is not None
            await worker.consumer.stop()
            await worker.redis.aclose()

        monkeypatch.setattr(worker, "_close", no_goodbye)
        with pytest.raises(_Killed):
            await worker.run()
        monkeypatch.setattr(SpeedLayer, "_checkpoint", original)
        assert worker.engine is not None
        applied = sum(c.next_offset for c in worker.engine.clocks.parts.values())
        checkpointed, _ = _progress(url, settings, ends)
        return applied, sum(checkpointed.values())

    applied, checkpointed = asyncio.run(first_worker())
    assert applied > checkpointed  # the last batch's effects are in Redis, its offsets are not
    seen = asyncio.run(_drain_backlog(settings, traffic, [], produced=ends))
    assert seen["processed"] == sum(ends.values()) - checkpointed  # the lost batch came again
    assert asyncio.run(_outcome(url)) == replayed


def test_a_redis_failure_mid_batch_is_rolled_back_and_retried(
    broker: Any, redis_server: Any, traffic: Traffic, replayed: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis fails twice in the middle of batches (after some effects): the worker resumes from the
    checkpoints, nothing is lost or doubled, and the outcome equals the replay."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    from realtime.engine import SpeedLayer

    values = [e.payload for e in traffic.events]
    url = _db(redis_server.url, 11)
    settings = _settings(broker, url).replace(realtime_batch_size=1_000)
    original = SpeedLayer._settle
    calls = {"n": 0}

    async def flaky(self: SpeedLayer, *args: Any) -> None:
        calls["n"] += 1
        if calls["n"] in (3, 4, 9):  # after ingest and claims of those batches
            raise RedisConnectionError("Connection reset by peer (injected)")
        await original(self, *args)

    monkeypatch.setattr(SpeedLayer, "_settle", flaky)
    seen = asyncio.run(_drain_backlog(settings, traffic, values))
    assert calls["n"] > 9
    assert seen["processed"] == len(values)  # every record applied once the failed batches came again
    assert asyncio.run(_outcome(url)) == replayed
