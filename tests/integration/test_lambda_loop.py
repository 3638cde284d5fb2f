"""The production loop on a real Kafka-protocol broker: ``attribution worker`` and ``attribution
lake-sink`` as processes, two days of traffic in the topics, the sink killed with SIGKILL mid-stream
and restarted; then the nightly job over what the sink landed, reconciled with the ledger the worker
flushed on its timer, and the sink's lake compared with ``attribution land`` of the same file."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
import yaml

from batch.job import run_day
from batch.reconcile import reconcile_day
from devtools.servers import free_port
from devtools.synthetic import SyntheticConfig, generate
from devtools.traffic import produce
from realtime.keys import Keys
from realtime.routing import partition_for, route
from shared_logic.contract import DEAD_LETTERS, RAW
from shared_logic.events import EVENT_TYPES
from shared_logic.settings import Settings
from shared_logic.timeutil import utc_hour
from storage import Lake, open_lake, partition
from storage.raw import HOURS, landed_hours
from tests.helpers import product_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FIRST = datetime.now(UTC).date() - timedelta(days=3)
DAYS = [FIRST, FIRST + timedelta(days=1)]
TRAFFIC = SyntheticConfig(
    users=3_000, days=2, start=FIRST, duplicate_rate=0.02, cancel_rate=0.15, malformed_rate=0.003, seed=41
)
EXE = str(Path(sys.executable).with_name("attribution"))


@contextmanager
def _process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """One ``attribution`` process; killed if the test leaves it running."""
    fh: IO[bytes] = log.open("ab")
    proc = subprocess.Popen([EXE, *args], env=env, stdout=fh, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        fh.close()


def _event_ids(lake: Lake) -> dict[tuple[str, str, str], Counter[str]]:
    """Event ids per raw hour partition (type, day, hour), with how many rows hold each."""
    out: dict[tuple[str, str, str], Counter[str]] = {}
    for etype in EVENT_TYPES:
        for values in lake.partitions(RAW.at(event_type=etype), depth=2):
            ref = partition(RAW, event_type=etype, **values)
            ids = lake.read([ref], columns=["event_id"]).column("event_id").to_pylist()
            out[(etype, values["dt"], values["hour"])] = Counter(ids)
    return out


def _dead_letter_rows(lake: Lake) -> int:
    return sum(lake.read([partition(DEAD_LETTERS, **v)]).num_rows for v in lake.partitions(DEAD_LETTERS.at()))


def _sink_offsets(lake: Lake, group: str) -> dict[str, int]:
    folder = Path(lake.path(f"raw/_sink/{group}/progress"))
    return (
        {f.stem: json.loads(f.read_text())["offset"] for f in folder.glob("*.json")}
        if folder.exists()
        else {}
    )


async def _committed(settings: Settings, group: str) -> dict[tuple[str, int], int]:
    """The offsets the broker holds committed for ``group``, of the partitions it committed."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from realtime.broker import client_options, input_topics

    cfg = settings.realtime
    consumer = AIOKafkaConsumer(**client_options(cfg), group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        out = {}
        for topic in input_topics(cfg):
            for p in range(cfg.topic_partitions):
                got = await consumer.committed(TopicPartition(topic, p))
                if got is not None and got > 0:
                    out[(topic, p)] = got
        return out
    finally:
        await consumer.stop()


def _wait(what: str, check: Any, timeout_s: float, *alive: subprocess.Popen[bytes], logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        tails = "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}" for p in logs if p.exists()
        )
        assert time.monotonic() < deadline, f"{what}: timed out\n{tails}"
        assert all(p.poll() is None for p in alive), f"{what}: a process died\n{tails}"
        time.sleep(0.2)


def test_worker_and_lake_sink_feed_the_nightly_job_which_reconciles_at_zero(
    broker: Any, redis_server: Any, spark: Any, tmp_path: Path
) -> None:
    import redis

    traffic = generate(TRAFFIC)
    values = [e.payload for e in traffic.events]
    events = tmp_path / "events.jsonl"
    events.write_text("".join(line + "\n" for line in traffic.jsonl()))
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(yaml.safe_dump({"campaigns": traffic.catalog.to_records()}))

    tag = uuid.uuid4().hex[:8]
    redis_url = redis_server.url.rsplit("/", 1)[0] + "/11"
    redis.Redis.from_url(redis_url).flushdb()
    lake_url = f"file://{tmp_path}/lake"
    settings = Settings().replace(
        redis_url=redis_url,
        lake_url=lake_url,
        catalog_url=str(catalog),
        realtime_broker_url=broker.url,
        realtime_topic_prefix=f"t{tag}",
        realtime_app_id=f"g{tag}",
    )
    cfg = settings.realtime
    asyncio.run(produce(values, cfg))
    ends: Counter[tuple[str, int]] = Counter()
    for v in values:
        etype, key = route(v)
        ends[(cfg.topic(etype), partition_for(key, cfg.topic_partitions))] += 1
    total = sum(ends.values())

    sink_metrics, worker_metrics = free_port(), free_port()
    env = product_env()
    env.update(
        ATTRIBUTION_REDIS_URL=redis_url,
        ATTRIBUTION_LAKE_URL=lake_url,
        ATTRIBUTION_CATALOG_URL=str(catalog),
        ATTRIBUTION_REALTIME_BROKER_URL=broker.url,
        ATTRIBUTION_REALTIME_TOPIC_PREFIX=cfg.topic_prefix,
        ATTRIBUTION_REALTIME_APP_ID=cfg.app_id,
        ATTRIBUTION_REALTIME_SESSION_TIMEOUT_MS="6000",
        ATTRIBUTION_REALTIME_HEARTBEAT_INTERVAL_MS="1000",
        ATTRIBUTION_REALTIME_TIMER_INTERVAL_S="0.2",
        ATTRIBUTION_REALTIME_LEDGER_FLUSH_INTERVAL_S="1",
        ATTRIBUTION_REALTIME_METRICS_PORT=str(worker_metrics),
        ATTRIBUTION_SINK_ROLL_RECORDS="150",  # many small ranges: the kill lands between some
        ATTRIBUTION_SINK_ROLL_AGE_S="1",
        ATTRIBUTION_SINK_MARKER_INTERVAL_S="0.5",
        ATTRIBUTION_SINK_METRICS_PORT=str(sink_metrics),
    )
    lake = open_lake(lake_url)
    group = f"{cfg.app_id}-{settings.sink.group_suffix}"
    logs = [tmp_path / "worker.log", tmp_path / "sink.log"]
    keys = Keys.of(settings.keys)
    client = redis.Redis.from_url(redis_url)

    def settled() -> bool:
        clocks = {k.decode(): int(v.split(b"|")[0]) for k, v in client.hgetall(keys.clocks()).items()}
        consumed = sum(min(clocks.get(f"{t}/{p}", 0), n) for (t, p), n in ends.items())
        pending = sum(client.hlen(keys.pending(b)) for b in range(keys.user_buckets))
        return consumed == total and pending == 0 and not client.exists(keys.queue(0))

    def landed() -> bool:
        done = sum(_sink_offsets(lake, group).values()) == total
        return done and all(set(landed_hours(lake, d)) >= set(HOURS) for d in DAYS)

    with _process(["worker"], env, logs[0]) as worker:
        with _process(["lake-sink"], env, logs[1]) as sink:
            _wait(
                "the sink lands a fifth",
                lambda: sum(_sink_offsets(lake, group).values()) >= total // 5,
                120,
                sink,
                logs=logs,
            )
            sink.send_signal(signal.SIGKILL)
            sink.wait(10)
        killed_at = sum(_sink_offsets(lake, group).values())
        with _process(["lake-sink"], env, logs[1]) as sink:
            _wait("the restarted sink lands everything", landed, 240, sink, worker, logs=logs)
            _wait("the worker settles everything", settled, 240, worker, logs=logs)
            _wait(
                "the worker flushes its ledger",
                lambda: all(client.xlen(keys.ledger(s)) == 0 for s in range(keys.budget_shards)),
                60,
                worker,
                logs=logs,
            )
            sink_page = httpx.get(f"http://127.0.0.1:{sink_metrics}/metrics", timeout=10).text
            worker_page = httpx.get(f"http://127.0.0.1:{worker_metrics}/metrics", timeout=10).text
            sink.send_signal(signal.SIGTERM)
            worker.send_signal(signal.SIGTERM)
            assert sink.wait(30) == 0
            assert worker.wait(30) == 0
    client.close()
    assert killed_at < total, "the sink was done before the kill"

    # Metrics people scrape: the sink's landed records and lag, the worker's decisions and lag.
    assert re.search(r"^lake_sink_records_total [1-9]", sink_page, re.M)
    assert "lake_sink_consumer_lag{" in sink_page
    assert re.search(r'^attribution_decisions_total\{outcome="attributed"\} [1-9]', worker_page, re.M)
    assert "attribution_consumer_lag{" in worker_page
    assert re.search(r"^attribution_ledger_flushed_total [1-9]", worker_page, re.M)

    # Every partition landed to its end (the sink's progress and the broker's committed offsets), and
    # exactly once: the lake equals the backfill below, no id in more rows than it was delivered.
    progress = {
        (k.rsplit("-", 1)[0], int(k.rsplit("-", 1)[1])): v for k, v in _sink_offsets(lake, group).items()
    }
    assert {tp: n for tp, n in progress.items() if n} == dict(ends)
    assert asyncio.run(_committed(settings, group)) == dict(ends)

    # The lake equals a backfill of the same file through `attribution land` (as sets of event ids
    # per raw hour), nothing doubled (no id in more rows than it was delivered), dead letters alike.
    backfill = open_lake(f"file://{tmp_path}/backfill")
    done = subprocess.run(
        [EXE, "land", "--jsonl", str(events), "--lake-url", backfill.url],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    sunk, landed_from_file = _event_ids(lake), _event_ids(backfill)
    assert {k: set(v) for k, v in sunk.items()} == {k: set(v) for k, v in landed_from_file.items()}
    deliveries = Counter(v["event_id"] for v in values if isinstance(v, dict) and "event_id" in v)
    for ids in sunk.values():
        assert all(n <= deliveries[i] for i, n in ids.items())
    malformed = sum(e.malformed for e in traffic.events)
    assert _dead_letter_rows(lake) == _dead_letter_rows(backfill) == malformed > 0

    # The nightly job over what the sink landed, then reconciliation with the worker's ledger.
    for day in DAYS:
        run_day(spark, lake, traffic.catalog, day, settings)
    for day in DAYS:
        rec = reconcile_day(spark, lake, traffic.catalog, day, settings)
        assert rec.orders > 100, day
        assert rec.discrepancy_pct == 0.0, (day, rec.summary())
        assert rec.batch_spend_minor
        assert rec.realtime_spend_minor == rec.batch_spend_minor


class _Killed(BaseException):
    """The sink dies here: nothing in it handles this."""


def test_a_sink_killed_between_its_files_and_its_commit_lands_the_same_range_again(
    broker: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The third roll's files are written, then the sink dies before committing its offsets: the next
    sink finds the intent at its committed offsets and lands exactly those ranges again, into the
    same files (same name, same rows); every partition is committed to its end, every event once."""
    from realtime.lakesink import LakeSink

    # No duplicates from the producer: every event id is then one record at one offset, and a row
    # doubled by the kill (a range landed twice under two names) shows as an id counted twice. (The
    # producer's own duplicates land once per roll that holds them; the nightly job drops them.)
    traffic = generate(SyntheticConfig(users=300, days=1, start=FIRST, seed=5, duplicate_rate=0.0))
    values = [e.payload for e in traffic.events]
    valid_ids = [e.payload["event_id"] for e in traffic.events if not e.malformed]  # type: ignore[index]
    assert len(set(valid_ids)) == len(valid_ids)
    tag = uuid.uuid4().hex[:8]
    settings = Settings().replace(
        lake_url=f"file://{tmp_path}/lake",
        realtime_broker_url=broker.url,
        realtime_topic_prefix=f"t{tag}",
        realtime_app_id=f"g{tag}",
        realtime_topic_partitions=2,
        realtime_session_timeout_ms=6_000,
        realtime_heartbeat_interval_ms=1_000,
        sink_roll_records=40,
        sink_roll_age_s=0.5,
        sink_marker_interval_s=0.5,
    )
    asyncio.run(produce(values, settings.realtime))
    lake = open_lake(settings.lake.url)
    group = f"{settings.realtime.app_id}-{settings.sink.group_suffix}"
    written: list[tuple[str, bytes]] = []

    async def first_sink() -> None:
        sink = LakeSink(settings, lake)
        await sink.start()
        assert sink.consumer is not None
        commit, calls = sink.consumer.commit, {"n": 0}

        async def dies_on_the_third(offsets: Any) -> None:
            calls["n"] += 1
            if calls["n"] == 3:
                written.extend(_files(lake))
            if calls["n"] >= 3:  # dead: no commit goes out after this, not even on the way out
                raise _Killed
            await commit(offsets)

        monkeypatch.setattr(sink.consumer, "commit", dies_on_the_third)
        with pytest.raises(_Killed):
            await sink.run()
        await sink.consumer.stop()  # a dead process commits nothing more

    async def second_sink() -> None:
        # Restarted with smaller rolls: the interrupted range is still landed whole, as it was named.
        sink = LakeSink(settings.replace(sink_roll_records=25), lake)
        await sink.start()
        task = asyncio.create_task(sink.run())
        deadline = time.monotonic() + 120
        while sum(_sink_offsets(lake, group).values()) < len(values):
            assert time.monotonic() < deadline, _sink_offsets(lake, group)
            assert not task.done(), task
            await asyncio.sleep(0.2)
        sink.stop()
        await task

    asyncio.run(first_sink())
    intents = list(Path(lake.path(f"raw/_sink/{group}/rolls")).glob("*.json"))
    assert len(intents) == 1, "no intent left by the dead sink"
    asyncio.run(second_sink())
    assert not list(Path(lake.path(f"raw/_sink/{group}/rolls")).glob("*.json")), "an intent left behind"
    ends = Counter((settings.realtime.topic(route(v)[0]), partition_for(route(v)[1], 2)) for v in values)
    assert asyncio.run(_committed(settings, group)) == dict(ends)
    # The files the dead sink wrote are still there, rewritten with the same rows.
    now = dict(_files(lake))
    assert len(written) > 2
    for rel, data in written:
        assert _rows(now[rel]).equals(_rows(data)), rel
    ids = Counter(i for c in _event_ids(lake).values() for i in c.elements())
    valid = {e.payload["event_id"] for e in traffic.events if not e.malformed}  # type: ignore[index]
    assert set(ids) == valid
    assert [i for i, n in ids.items() if n != 1] == []


def _files(lake: Lake) -> list[tuple[str, bytes]]:
    """Every raw Parquet file (relative path, bytes)."""
    root = Path(lake.path("raw"))
    return [(str(f.relative_to(root)), f.read_bytes()) for f in sorted(root.rglob("*.parquet"))]


def _rows(data: bytes) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pq.read_table(pa.BufferReader(data)).sort_by("event_id")


def test_a_backlog_lands_in_one_file_per_event_hour_per_roll_each_event_once(
    broker: Any, tmp_path: Path
) -> None:
    """A sink started on a backlog (two days, five topics of four partitions) whose rolls are larger
    than it: it lands it as one roll, one file per event type and hour (not one per partition per
    hour, over twice as many), every partition committed to its end, every event in the lake
    once, no intent left. A second sink group on the same topics with ``roll_records`` a third of the
    backlog: three or four rolls, at most one file per event type and hour each, every event once."""
    from realtime.lakesink import LakeSink

    traffic = generate(SyntheticConfig(users=400, days=2, start=FIRST, seed=7, duplicate_rate=0.0))
    values = [e.payload for e in traffic.events]
    valid = {e.payload["event_id"] for e in traffic.events if not e.malformed}  # type: ignore[index]
    assert len(valid) == sum(not e.malformed for e in traffic.events)
    tag = uuid.uuid4().hex[:8]
    settings = Settings().replace(
        lake_url=f"file://{tmp_path}/lake",
        realtime_broker_url=broker.url,
        realtime_topic_prefix=f"t{tag}",
        realtime_app_id=f"g{tag}",
        realtime_topic_partitions=4,
        sink_roll_age_s=1.0,  # caught up, the tail lands within a second
        sink_marker_interval_s=0.5,
    )
    cfg = settings.realtime
    lake = open_lake(settings.lake.url)
    group = f"{cfg.app_id}-{settings.sink.group_suffix}"
    ends = Counter((cfg.topic(route(v)[0]), partition_for(route(v)[1], 4)) for v in values)

    async def drain(config: Settings, total: int) -> Any:
        sink = LakeSink(config, lake)
        await sink.start()
        task = asyncio.create_task(sink.run())
        deadline = time.monotonic() + 120
        while sum(_sink_offsets(lake, group).values()) < total:
            assert time.monotonic() < deadline, _sink_offsets(lake, group)
            assert not task.done(), task
            await asyncio.sleep(0.2)
        sink.stop()
        await task
        return sink.metrics.registry

    def cells() -> tuple[set[tuple[str, str, str]], set[tuple[str, int, str, str]]]:
        """(event type, day, hour) and (topic, partition, day, hour) of the valid events."""
        by_type: set[tuple[str, str, str]] = set()
        by_part: set[tuple[str, int, str, str]] = set()
        for e in traffic.events:
            if not e.malformed:
                dt, hour = utc_hour(e.payload["event_time"])  # type: ignore[index]
                etype = e.payload["event_type"]  # type: ignore[index]
                by_type.add((etype, dt, hour))
                by_part.add((cfg.topic(etype), partition_for(route(e.payload)[1], 4), dt, hour))
        return by_type, by_part

    asyncio.run(produce(values, cfg))
    registry = asyncio.run(drain(settings, len(values)))
    raw = list(Path(lake.path("raw")).rglob("*.parquet"))
    by_type, by_part = cells()
    assert registry.get_sample_value("lake_sink_rolls_total") == 1
    assert len(raw) == len(by_type) < len(by_part) / 2
    assert asyncio.run(_committed(settings, group)) == dict(ends)
    ids = Counter(i for c in _event_ids(lake).values() for i in c.elements())
    assert set(ids) == valid
    assert [i for i, n in ids.items() if n != 1] == []
    assert not list(Path(lake.path(f"raw/_sink/{group}/rolls")).glob("*.json"))

    # Rolls of a third of the backlog: each at most one file per event type and hour.
    settings = settings.replace(
        lake_url=f"file://{tmp_path}/lake3", realtime_app_id=f"h{tag}", sink_roll_records=len(values) // 3
    )
    lake, group = open_lake(settings.lake.url), f"h{tag}-{settings.sink.group_suffix}"
    registry = asyncio.run(drain(settings, len(values)))
    rolls = registry.get_sample_value("lake_sink_rolls_total")
    raw = list(Path(lake.path("raw")).rglob("*.parquet"))
    assert 3 <= rolls <= 4
    assert len(by_type) < len(raw) <= rolls * len(by_type)
    assert asyncio.run(_committed(settings, group)) == dict(ends)
    ids = Counter(i for c in _event_ids(lake).values() for i in c.elements())
    assert set(ids) == valid
    assert [i for i, n in ids.items() if n != 1] == []
