"""README promises that had no test, each held by a test that fails on a mutant of the code that keeps
it (the docstrings name the mutants; each was applied once and seen to fail the test):

- events dated in the future are dead letters in the speed layer and in landing (``attribution land``);
- hour markers are never written early;
- the worker refuses an input topic with another partition count;
- the Redis dead-letter stream is capped by count and by memory;
- SIGTERM makes a worker finish its batch, commit and leave the group, and its partitions move to
  the other worker, on a Redis Cluster, with every order charged once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import pytest
import yaml

from realtime.codec import decode_decision
from shared_logic.contract import DEAD_LETTERS, RAW
from shared_logic.policy import FUTURE_RULE
from shared_logic.settings import Settings
from storage import open_lake, partition
from tests.factories import MIN, campaign, catalog
from tests.helpers import product_env, wait_for

pytestmark = [pytest.mark.integration]
EXE = str(Path(sys.executable).with_name("attribution"))


@contextmanager
def _process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """One ``attribution`` process, its output appended to ``log``; killed if the test leaves it running."""
    fh: IO[bytes] = log.open("ab")
    proc = subprocess.Popen([EXE, *args], env=env, stdout=fh, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait(10)
        fh.close()


def _base_env() -> dict[str, str]:
    return product_env()


def _click(eid: str, t: int, cid: str = "ad1", user: str = "u1") -> dict[str, Any]:
    return {"event_id": eid, "event_type": "click", "event_time": t, "user_id": user, "campaign_id": cid}


# Future-dated events ---------------------------------------------------------------------------


def test_the_speed_layer_dead_letters_future_events_and_they_move_no_watermark(redis_url: str) -> None:
    """A click dated one millisecond past ``rules.max_future_ms`` after the processing clock is a dead
    letter (``event_time``, ``is in the future``); one dated exactly at the bound is an event. The
    partition's watermark stays at the greatest accepted time, so an order before it stays pending.

    Mutants killed: ``realtime.codec`` accepting every date (``in_future`` always false: the click
    is no dead letter, the watermark jumps ahead and the order is released at once), and the bound
    taken as inclusive (``>=``: the click at the bound becomes a dead letter)."""
    from realtime.client import connect
    from realtime.deadletters import MemoryDeadLetters
    from realtime.engine import SpeedLayer
    from shared_logic.settings import RedisSettings

    now = int(time.time() * 1000)
    settings = Settings().replace(redis_url=redis_url, rules_max_future_ms=5 * MIN)
    bound = now + settings.rules.max_future_ms
    cat = catalog(campaign("ad1"), campaign("ad2"))
    order = {
        "event_id": "eo1",
        "event_type": "order",
        "event_time": now - 5 * MIN,
        "user_id": "u1",
        "order_id": "o1",
        "merchant_id": "m1",
        "amount_minor": 5_000,
        "currency": "USD",
    }

    async def run() -> tuple[list[Any], int, int, int, list[Any], int]:
        dead = MemoryDeadLetters()
        engine = SpeedLayer(connect(RedisSettings(url=redis_url)), cat, settings, dead, clock=lambda: now)
        await engine.start()
        await engine.process([_click("c1", now - 10 * MIN), _click("c2", bound + 1, "ad2"), order])
        first = list(dead.letters)
        watermark, pending = engine.clocks.parts[engine.source].watermark, engine.pending
        await engine.process([_click("c3", bound, "ad2")])
        second = dead.letters[len(first) :]
        after = engine.clocks.parts[engine.source].watermark
        await engine.redis.aclose()
        return first, watermark, pending, after, second, len(dead.letters)

    first, watermark, pending, after, second, _ = asyncio.run(run())
    assert [(x.field, x.value, x.rule) for x in first] == [("event_time", str(bound + 1), FUTURE_RULE)]
    assert watermark == now - 5 * MIN  # the order's time: the future click moved nothing
    assert pending == 1  # so the order waits for its lateness
    assert second == []  # exactly at the bound: an event
    assert after == bound


def test_attribution_land_dead_letters_future_events_by_the_setting(tmp_path: Path) -> None:
    """``attribution land --arrived-at A`` with ``ATTRIBUTION_RULES_MAX_FUTURE_MS=60000``: a click dated
    A + 60,001 ms is a dead letter (``event_time``, ``is in the future``) in ``dead_letters/``, one
    dated A + 60,000 ms lands in ``raw/`` with the click of an hour before.

    Mutants killed: ``storage.raw.land`` accepting every date (the future click lands in raw/), the
    bound taken as inclusive (the click at the bound is a dead letter), and ``cli/lake.py`` landing
    with the default bound (5 min) instead of the setting (the click at A + 60,001 ms lands)."""
    arrival = int(datetime(2026, 11, 3, 12, tzinfo=UTC).timestamp() * 1000)
    max_future = 60_000
    events = [
        _click("past", arrival - 60 * MIN),
        _click("at-bound", arrival + max_future),
        _click("future", arrival + max_future + 1),
    ]
    jsonl = tmp_path / "events.jsonl"
    jsonl.write_text("".join(json.dumps(e) + "\n" for e in events))
    lake = open_lake(f"file://{tmp_path}/lake")
    env = {**_base_env(), "ATTRIBUTION_RULES_MAX_FUTURE_MS": str(max_future), "COLUMNS": "200"}
    done = subprocess.run(
        [EXE, "land", "--jsonl", str(jsonl), "--lake-url", lake.url, "--arrived-at", str(arrival)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    raw = [
        lake.read([partition(RAW, event_type="click", **v)]).column("event_id").to_pylist()
        for v in lake.partitions(RAW.at(event_type="click"), depth=2)
    ]
    assert sorted(i for ids in raw for i in ids) == ["at-bound", "past"]
    dead = [lake.read([partition(DEAD_LETTERS, **v)]).to_pylist() for v in lake.partitions(DEAD_LETTERS.at())]
    rows = [r for rs in dead for r in rs]
    assert [(r["field"], r["value"], r["rule"]) for r in rows] == [
        ("event_time", str(arrival + max_future + 1), FUTURE_RULE)
    ]
    assert '"future"' in rows[0]["raw"]


# Hour markers ------------------------------------------------------------------------------------


async def _until(what: str, check: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"{what}: timed out after {timeout_s:.0f}s"
        await asyncio.sleep(0.05)


async def _produce_batch(cfg: Any, topic: str, p: int, values: list[dict[str, Any]]) -> None:
    """``values`` as one record batch to partition ``p`` of ``topic``."""
    from realtime import broker as kafka

    producer = kafka.producer(cfg, acks=1)
    await producer.start()
    try:
        batch = producer.create_batch()
        for v in values:
            assert batch.append(key=v["user_id"].encode(), value=json.dumps(v).encode(), timestamp=None)
        batch.close()
        await (await producer.send_batch(batch, topic, partition=p))
    finally:
        await producer.stop()


def test_hour_markers_wait_for_every_partition_past_the_hours_end_plus_the_lateness(
    broker: Any, tmp_path: Path
) -> None:
    """A lake sink holds ten partitions (five topics, two each). Nine are empty, so idle at their end
    offset: the wall clock moves them to now. The tenth (clicks, partition 0) has landed a roll whose
    latest event is at 10:00:30 of day D, and holds four more records it has not landed (a roll is five
    records): it lags, so its watermark stays at 10:00:30 however long the test takes. With the
    allowed lateness of 60 s, hours 00..08 of D are marked and no other, whatever the number of
    marking rounds. Once the fifth record lands the partition is idle and all 24 hours are marked.

    Mutants killed: in ``realtime/lakesink.py`` ``_mark_hours``, an hour marked once its start is
    past the bound (``start + i * hour``: 09 marked early), the bound without the lateness
    (``min(marks)``: 09 marked early), the maximum of the partitions instead of the minimum (all 24
    marked early); in ``realtime/clock.py``, the wall clock moving a partition with lag (``tick``
    without ``idle``: all 24 marked early)."""
    from realtime.broker import ensure_topics
    from realtime.lakesink import LakeSink
    from storage.raw import HOURS, landed_hours
    from tests.factories import HOUR

    day = (datetime.now(UTC) - timedelta(days=2)).date()
    start = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)
    tag = uuid.uuid4().hex[:8]
    settings = Settings().replace(
        lake_url=f"file://{tmp_path}/lake",
        realtime_broker_url=broker.url,
        realtime_topic_prefix=f"t{tag}",
        realtime_app_id=f"g{tag}",
        realtime_topic_partitions=2,
        rules_allowed_lateness_ms=60_000,
        sink_roll_records=5,
        sink_roll_age_s=3_600,  # no roll by age while the test runs
        sink_marker_interval_s=0.2,
    )
    cfg = settings.realtime
    topic = cfg.topic("click")
    landed = [_click(f"a{i}", start + 9 * HOUR + i * 10 * MIN) for i in range(4)]
    landed.append(_click("a4", start + 10 * HOUR + 30_000))  # the partition's watermark: 10:00:30
    held = [_click(f"b{i}", start + 15 * HOUR) for i in range(4)]
    lake = open_lake(settings.lake.url)

    async def run() -> tuple[list[str], int]:
        await ensure_topics(cfg)
        await _produce_batch(cfg, topic, 0, landed)
        await _produce_batch(cfg, topic, 0, held)
        sink = LakeSink(settings, lake)
        rounds = {"n": 0}
        mark_hours = sink._mark_hours

        def counted() -> None:
            rounds["n"] += 1
            mark_hours()

        sink._mark_hours = counted  # type: ignore[method-assign]  # a spy: counts marking rounds
        await sink.start()
        task = asyncio.create_task(sink.run())
        try:
            await _until("hours 00..08 marked", lambda: set(landed_hours(lake, day)) >= set(HOURS[:9]), 60)
            async with sink.lock:  # the premise: the partition landed five records and lags by four
                clock = sink.clocks.parts[(topic, 0)]
                assert (clock.next_offset, clock.end_offset, clock.idle) == (5, 9, False)
            seen = rounds["n"]
            await _until("three more marking rounds", lambda: rounds["n"] >= seen + 3, 30)
            early = landed_hours(lake, day)
            await _produce_batch(cfg, topic, 0, [_click("b4", start + 15 * HOUR)])
            await _until("all 24 hours marked", lambda: landed_hours(lake, day) == list(HOURS), 60)
        finally:
            sink.stop()
            await task
        return early, rounds["n"]

    early, _ = asyncio.run(run())
    assert early == list(HOURS[:9])


# The dead-letter stream's cap ------------------------------------------------------------------


def test_the_redis_dead_letter_stream_keeps_the_newest_up_to_its_count(redis_url: str) -> None:
    """The embedded default's dead-letter sink (``redis://``, opened as the engine opens it) with
    ``realtime.dead_letter_maxlen=25``: after 60 dead letters in three batches the stream holds exactly
    the newest 25.

    Mutants killed: ``RedisDeadLetters.send_many`` without ``maxlen`` (60 kept), and ``from_url``
    ignoring the setting (the default 100,000: 60 kept)."""
    from redis.asyncio import Redis

    from realtime.deadletters import DEAD_LETTERS as SINKS
    from realtime.keys import Keys

    settings = Settings().replace(redis_url=redis_url, realtime_dead_letter_maxlen=25)

    async def run() -> tuple[int, list[str]]:
        redis = Redis.from_url(redis_url)
        keys = Keys.of(settings.keys)
        sink: Any = SINKS.open("redis://", redis=redis, keys=keys, settings=settings)
        for batch in range(3):
            await sink.send_many(
                [
                    (f"bad {batch * 20 + i}", {"field": "<payload>", "value": "", "rule": "r"})
                    for i in range(20)
                ]
            )
        length = await redis.xlen(keys.dead_letters())
        kept = [row["raw"] for row in await sink.read(count=1000)]
        await redis.aclose()
        return length, kept

    length, kept = asyncio.run(run())
    assert length == 25
    assert kept == [f"bad {i}" for i in range(35, 60)]


def test_the_redis_dead_letter_stream_stays_under_its_memory_cap(redis_url: str) -> None:
    """``realtime.dead_letter_max_mib=1`` and a count cap far above it: 600 dead letters of 4 KiB
    (2.4 MB of payload, in batches of 50) leave a stream whose exact size (``MEMORY USAGE`` with
    every node counted) is at most 1 MiB, holding the newest entries, in order, with none lost
    between the oldest kept and the last.

    Mutants killed: ``from_url`` ignoring the setting (the default 256 MiB: all 600 kept, about
    2.5 MB), and no trim after the write (the same)."""
    from redis.asyncio import Redis

    from realtime.deadletters import DEAD_LETTERS as SINKS
    from realtime.keys import Keys

    settings = Settings().replace(
        redis_url=redis_url, realtime_dead_letter_maxlen=100_000, realtime_dead_letter_max_mib=1
    )
    sent = [f"{i:05d} " + "x" * 5000 for i in range(600)]

    async def run() -> tuple[int, list[str]]:
        redis = Redis.from_url(redis_url)
        keys = Keys.of(settings.keys)
        await redis.delete(keys.dead_letters())
        sink: Any = SINKS.open("redis://", redis=redis, keys=keys, settings=settings)
        for start in range(0, len(sent), 50):
            await sink.send_many(
                [(raw, {"field": "<payload>", "value": "", "rule": "r"}) for raw in sent[start : start + 50]]
            )
        used = await redis.memory_usage(keys.dead_letters(), samples=0)
        kept = [row["raw"][:5] for row in await sink.read(count=1000)]
        await redis.aclose()
        return int(used or 0), kept

    used, kept = asyncio.run(run())
    assert 0 < used <= 1024 * 1024
    assert 50 <= len(kept) < 600
    assert kept == [f"{i:05d}" for i in range(600 - len(kept), 600)]


# The partition count -------------------------------------------------------------------------


def test_the_worker_refuses_an_input_topic_with_another_partition_count(
    broker: Any, redis_url: str, tmp_path: Path
) -> None:
    """Another team created the order topic with 3 partitions; ``attribution worker`` with
    ``ATTRIBUTION_REALTIME_TOPIC_PARTITIONS=2`` creates the missing topics, then stops at start with a
    message naming the setting and the topic, and joins no group.

    Mutant killed: ``realtime.broker.ensure_topics`` without the count check (the worker starts and
    is assigned partitions)."""
    from aiokafka.admin import NewTopic

    from realtime.broker import admin

    tag = uuid.uuid4().hex[:8]
    cfg = Settings().replace(realtime_broker_url=broker.url, realtime_topic_prefix=f"t{tag}").realtime

    async def create() -> None:
        client = admin(cfg)
        await client.start()
        await client.create_topics([NewTopic(cfg.topic("order"), 3, 1)])
        await client.close()

    asyncio.run(create())
    cat = tmp_path / "catalog.yaml"
    cat.write_text(yaml.safe_dump({"campaigns": catalog(campaign("ad1")).to_records()}))
    env = {
        **_base_env(),
        "COLUMNS": "200",
        "ATTRIBUTION_CATALOG_URL": str(cat),
        "ATTRIBUTION_REDIS_URL": redis_url,  # a worker that started would run
        "ATTRIBUTION_REALTIME_BROKER_URL": broker.url,
        "ATTRIBUTION_REALTIME_TOPIC_PREFIX": cfg.topic_prefix,
        "ATTRIBUTION_REALTIME_APP_ID": f"g{tag}",
        "ATTRIBUTION_REALTIME_TOPIC_PARTITIONS": "2",
    }
    log = tmp_path / "worker.log"
    with _process(["worker"], env, log) as worker:
        wait_for(
            "the worker stops (or joins its group)",
            lambda: worker.poll() is not None or "assigned" in log.read_text(),
            60,
        )
        assert worker.poll() not in (None, 0), log.read_text()
    text = " ".join(log.read_text().split())
    assert "ATTRIBUTION_REALTIME_TOPIC_PARTITIONS" in text, text
    assert f"topic {cfg.topic('order')} has 3 partitions" in text, text


# SIGTERM: finish the batch, commit, leave; the partitions move to the other worker ------------


def _sync_redis(url: str) -> Any:
    import redis

    from realtime.client import is_cluster

    if is_cluster(url):
        host, _, port = url.split("://", 1)[1].split(",")[0].rpartition(":")
        return redis.RedisCluster(host=host, port=int(port))
    return redis.Redis.from_url(url)


def _checkpoints(url: str, settings: Settings) -> dict[tuple[str, int], int]:
    from realtime.keys import Keys

    r = _sync_redis(url)
    try:
        raw = r.hgetall(Keys.of(settings.keys).clocks())
    finally:
        r.close()
    out = {}
    for k, v in raw.items():
        topic, _, p = k.decode().rpartition("/")
        out[(topic, int(p))] = int(v.split(b"|")[0])
    return out


def _settled(url: str, settings: Settings, ends: dict[tuple[str, int], int]) -> bool:
    from realtime.keys import Keys

    done = _checkpoints(url, settings)
    if any(done.get(tp, 0) < n for tp, n in ends.items()):
        return False
    keys = Keys.of(settings.keys)
    r = _sync_redis(url)
    try:
        pending = sum(r.hlen(keys.pending(b)) for b in range(keys.user_buckets))
        return pending == 0 and not r.exists(keys.queue(0))
    finally:
        r.close()


async def _committed(settings: Settings, group: str) -> dict[tuple[str, int], int]:
    """The offsets the broker holds committed for ``group`` (-1: none)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from realtime.broker import client_options, input_topics

    cfg = settings.realtime
    consumer = AIOKafkaConsumer(**client_options(cfg), group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        committed = {}
        for topic in input_topics(cfg):
            for p in range(cfg.topic_partitions):
                got = await consumer.committed(TopicPartition(topic, p))
                committed[(topic, p)] = -1 if got is None else got
        return committed
    finally:
        await consumer.stop()


class _Member:
    """A consumer of ``settings``'s group in a thread of its own, polling until ``leave()``: a member
    whose joining and leaving make the group rebalance (moving its generation past 0)."""

    def __init__(self, settings: Settings) -> None:
        import threading

        self.settings = settings
        self.assigned = threading.Event()
        self._leave = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()

    async def _run(self) -> None:
        from realtime.broker import group_consumer, input_topics

        cfg = self.settings.realtime
        consumer = group_consumer(cfg, cfg.app_id, 10)
        consumer.subscribe(input_topics(cfg))
        await consumer.start()
        try:
            while not self._leave.is_set():
                await consumer.getmany(timeout_ms=100)
                if consumer.assignment():
                    self.assigned.set()
        finally:
            await consumer.stop()  # commits nothing; leaves the group

    def leave(self) -> None:
        self._leave.set()
        self._thread.join(30)


@pytest.mark.slow
def test_sigterm_finishes_the_batch_commits_and_leaves_and_the_partitions_move_on_a_cluster(
    redis_server: Any, redis_cluster: Any, tmp_path: Path
) -> None:
    """An ``attribution worker`` drains a backlog on a 3-master Redis Cluster, reaching the broker
    through a front that records every request. Frozen with work left, it is sent SIGTERM and
    continued: it exits 0, the offsets the broker holds committed for its group equal its checkpoints
    in Redis for every partition (the batch in hand finished, then committed), and its last request
    to the broker is a LeaveGroup. A second worker takes every partition over, with the pending orders
    the first left in Redis, and the outcome equals a replay of the same events: every order charged
    once. (A partition moved by a SIGKILL takeover, two workers at once, is
    ``tests/integration/test_kafka.py``'s; this one moves by a graceful leave, on a cluster.)

    Tansu numbers a group's first generation 0, and aiokafka sends LeaveGroup only from generation 1
    on (``GroupCoordinator._maybe_leave_group``): a member that never saw a rebalance cannot leave a
    Tansu group, it expires. So another member joins the group first and leaves once the worker is
    in: the worker is then in generation 2, as any member of a group that has rebalanced is.

    Mutants killed: ``realtime.broker.serve`` without its SIGTERM handler (the worker dies by the
    signal: exit -15), and ``KafkaWorker._close`` without ``consumer.stop()`` (no LeaveGroup sent)."""
    from devtools.servers import InnerBroker, free_port
    from devtools.synthetic import SyntheticConfig, generate
    from devtools.traffic import produce
    from realtime.replay import replay
    from realtime.routing import partition_for, route
    from tests.helpers import LEAVE_GROUP, CommitHold, flush, freeze_when, ledger_entries, redis_snapshot

    traffic = generate(SyntheticConfig(users=800, days=2, duplicate_rate=0.02, cancel_rate=0.15, seed=67))
    values = [e.payload for e in traffic.events]
    replay_url = redis_server.url.rsplit("/", 1)[0] + "/12"
    flush(replay_url)
    asyncio.run(
        replay(values, traffic.catalog, Settings().replace(redis_url=replay_url), show_progress=False)
    )

    def outcome(url: str) -> dict[str, Any]:
        state = asyncio.run(redis_snapshot(url))
        return {  # pacing keys: the controller's timing-dependent state, not an outcome
            k: v
            for k, v in state.items()
            if not k.endswith((":clocks", ":dead-letters")) and ":pace" not in k
        }

    expected = outcome(replay_url)
    url = redis_cluster.url
    flush(url)
    tag = uuid.uuid4().hex[:8]
    front_port = free_port()
    inner = InnerBroker(advertised_port=front_port)
    front = CommitHold(inner.port, port=front_port)
    settings = Settings().replace(
        redis_url=url,
        realtime_broker_url=f"kafka://127.0.0.1:{front_port}",
        realtime_topic_prefix=f"t{tag}",
        realtime_app_id=f"g{tag}",
        realtime_session_timeout_ms=6_000,
        realtime_heartbeat_interval_ms=1_000,
    )
    cfg = settings.realtime
    ends: dict[tuple[str, int], int] = {}
    for v in values:
        etype, key = route(v)
        tp = (cfg.topic(etype), partition_for(key, cfg.topic_partitions))
        ends[tp] = ends.get(tp, 0) + 1
    asyncio.run(produce(values, cfg))
    cat = tmp_path / "catalog.yaml"
    cat.write_text(yaml.safe_dump({"campaigns": traffic.catalog.to_records()}))
    env = {
        **_base_env(),
        "ATTRIBUTION_REDIS_URL": url,
        "ATTRIBUTION_CATALOG_URL": str(cat),
        "ATTRIBUTION_REALTIME_BROKER_URL": cfg.broker_url,
        "ATTRIBUTION_REALTIME_TOPIC_PREFIX": cfg.topic_prefix,
        "ATTRIBUTION_REALTIME_APP_ID": cfg.app_id,
        "ATTRIBUTION_REALTIME_SESSION_TIMEOUT_MS": "6000",
        "ATTRIBUTION_REALTIME_HEARTBEAT_INTERVAL_MS": "1000",
        "ATTRIBUTION_REALTIME_TIMER_INTERVAL_S": "0.2",
        "ATTRIBUTION_REALTIME_LEDGER_FLUSH_INTERVAL_S": "0",
        "ATTRIBUTION_REALTIME_BATCH_SIZE": "100",
    }
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    total = sum(ends.values())

    def work_left(at_least: float) -> int | None:
        done = _checkpoints(url, settings)
        got = sum(min(done.get(tp, 0), n) for tp, n in ends.items())
        return got if got >= at_least * total else None

    try:
        # Tansu numbers a group's first generation 0, and aiokafka sends LeaveGroup only from generation
        # 1 on: another member joins first and leaves once A is in, so A is in generation 2.
        other = _Member(settings)
        wait_for("another member joins", other.assigned.is_set, 60)
        with _process(["worker"], env, logs[0]) as a:
            wait_for(
                "A joins beside it", lambda: "assigned 30 partitions" in logs[0].read_text(), 90, alive=(a,)
            )
            other.leave()
            wait_for(
                "A holds every partition",
                lambda: "assigned 60 partitions" in logs[0].read_text(),
                90,
                alive=(a,),
            )
            done = freeze_when(a, lambda: work_left(0.0), 120)
            assert done < total, "the backlog was drained before SIGTERM: make the traffic larger"
            sent = len(front.requests)
            a.send_signal(signal.SIGTERM)
            os.kill(a.pid, signal.SIGCONT)
            assert a.wait(30) == 0, logs[0].read_text()[-3000:]
        assert front.requests[sent:][-1:] == [LEAVE_GROUP]  # its last word to the broker: it leaves
        committed = asyncio.run(_committed(settings, cfg.app_id))
        checkpoints = _checkpoints(url, settings)
        assert committed == {tp: checkpoints.get(tp, -1) for tp in committed}  # the batch in hand, committed
        assert sum(checkpoints.values()) < total  # B has work of A's to take over
        with _process(["worker"], env, logs[1]) as b:
            wait_for(
                "B takes every partition over",
                lambda: "assigned 60 partitions" in logs[1].read_text(),
                90,
                alive=(b,),
            )
            wait_for(
                "B settles everything",
                lambda: _settled(url, settings, ends),
                120,
                interval_s=0.2,
                alive=(b,),
                logs=tuple(logs),
            )
            b.send_signal(signal.SIGTERM)
            assert b.wait(30) == 0, logs[1].read_text()[-3000:]
    finally:
        front.stop()
        inner.stop()
    got = outcome(url)
    charges = [e for e in ledger_entries(got) if e[b"kind"] in (b"charge", b"cancelled")]
    orders = [decode_decision(e[b"d"]).order_id for e in charges]
    assert len(orders) == len(set(orders)) > 50  # every order charged once
    assert got == expected
