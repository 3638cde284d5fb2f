"""Real faults under real processes, instead of exceptions patched in: a ``redis-server`` stopped and
restarted, then hung (SIGSTOP) past the socket timeout, under a running ``attribution worker`` and
``attribution api``; an ``attribution lake-sink`` SIGKILLed between writing a range's files and
committing its offset; the broker restarted under a running worker.

Each fault is aimed at a state observed while the process it hits is stopped (``freeze_when``), and
every wait is a condition with a deadline (a log line, a checkpoint, a file, a held request)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import pytest
import yaml

from devtools.servers import InnerBroker, free_port
from devtools.synthetic import SyntheticConfig, generate
from devtools.traffic import produce
from realtime.codec import decode_decision
from realtime.routing import partition_for, route
from shared_logic.contract import RAW
from shared_logic.events import EVENT_TYPES
from shared_logic.settings import Settings
from storage import Lake, open_lake, partition
from tests.helpers import CommitHold, freeze_when, ledger_entries, product_env, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]
EXE = str(Path(sys.executable).with_name("attribution"))


@contextmanager
def _process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """One ``attribution`` process, its output appended to ``log``; killed if the test leaves it running
    (continued first, in case a test left it stopped)."""
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


# The lake sink SIGKILLed between its files and its commit --------------------------------------


def _files_of(lake: Lake, name: str) -> dict[str, bytes]:
    """The files of one roll (raw hours and dead letters), by path under the lake."""
    root = Path(lake.path(""))
    return {str(f.relative_to(root)): f.read_bytes() for f in root.rglob(f"{name}.parquet")}


def _event_ids(lake: Lake) -> Counter[str]:
    ids: Counter[str] = Counter()
    for etype in EVENT_TYPES:
        for values in lake.partitions(RAW.at(event_type=etype), depth=2):
            ref = partition(RAW, event_type=etype, **values)
            ids.update(lake.read([ref], columns=["event_id"]).column("event_id").to_pylist())
    return ids


def _rows(data: bytes) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(pa.BufferReader(data))
    return table.sort_by("event_id") if "event_id" in table.column_names else table


async def _committed(settings: Settings, group: str) -> dict[tuple[str, int], int]:
    """The offsets the broker holds committed for ``group`` (-1: none)."""
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
                out[(topic, p)] = -1 if got is None else got
        return out
    finally:
        await consumer.stop()


def test_a_lake_sink_sigkilled_between_its_files_and_its_commit_lands_the_range_once(tmp_path: Path) -> None:
    """``attribution lake-sink`` runs behind a front that lets its first two commits through and holds
    the third: the sink has written the roll's intent and files and sent the commit, which never
    reaches the broker. Seen so (the held request, the files on disk, the broker's committed offsets
    still at the roll's first offsets), the sink is SIGKILLed. A new sink process restarts at the
    committed offsets, finds the intent, lands exactly those ranges again under the same name: the
    dead sink's files hold the same rows, every partition is committed to its end, no intent is
    left, every event is in the lake once and none is missing."""
    first_day = datetime.now(UTC).date() - timedelta(days=2)
    # No producer duplicates: an event id then sits at one offset, so an id counted twice is a double.
    traffic = generate(SyntheticConfig(users=300, days=1, start=first_day, seed=5, duplicate_rate=0.0))
    values = [e.payload for e in traffic.events]
    valid = {e.payload["event_id"] for e in traffic.events if not e.malformed}  # type: ignore[index]
    assert len(valid) == sum(not e.malformed for e in traffic.events)

    front_port = free_port()
    tag = uuid.uuid4().hex[:8]
    with InnerBroker(advertised_port=front_port) as inner, CommitHold(inner.port, port=front_port) as front:
        settings = Settings().replace(
            lake_url=f"file://{tmp_path}/lake",
            realtime_broker_url=f"kafka://127.0.0.1:{front.port}",
            realtime_topic_prefix=f"t{tag}",
            realtime_app_id=f"g{tag}",
            realtime_topic_partitions=2,
        )
        cfg = settings.realtime
        asyncio.run(produce(values, cfg))
        lake = open_lake(settings.lake.url)
        group = f"{cfg.app_id}-{settings.sink.group_suffix}"
        env = {
            **_base_env(),
            "ATTRIBUTION_LAKE_URL": settings.lake.url,
            "ATTRIBUTION_REALTIME_BROKER_URL": cfg.broker_url,
            "ATTRIBUTION_REALTIME_TOPIC_PREFIX": cfg.topic_prefix,
            "ATTRIBUTION_REALTIME_APP_ID": cfg.app_id,
            "ATTRIBUTION_REALTIME_TOPIC_PARTITIONS": "2",
            "ATTRIBUTION_REALTIME_SESSION_TIMEOUT_MS": "2000",
            "ATTRIBUTION_REALTIME_HEARTBEAT_INTERVAL_MS": "300",
            "ATTRIBUTION_SINK_ROLL_RECORDS": "40",
            "ATTRIBUTION_SINK_ROLL_AGE_S": "0.5",
            "ATTRIBUTION_SINK_MARKER_INTERVAL_S": "0.5",
        }
        log = tmp_path / "sink.log"
        intents = Path(lake.path(f"raw/_sink/{group}/rolls"))

        def between_files_and_commit() -> tuple[str, dict[tuple[str, int], int], dict[str, bytes]] | None:
            """The roll whose files are written and whose commit is held, the broker still at its start."""
            if not front.held.is_set():
                return None
            committed = asyncio.run(_committed(settings, group))
            for path in intents.glob("*.json"):
                ranges = {(t, p): last for t, p, _, last in json.loads(path.read_text())["ranges"]}
                files = _files_of(lake, path.stem)
                if files and any(committed[tp] < last + 1 for tp, last in ranges.items()):
                    return path.stem, ranges, files
            return None

        front.hold_after = 2
        with _process(["lake-sink"], env, log) as sink:
            name, ranges, written = wait_for(
                "the sink's third commit is held after its files",
                between_files_and_commit,
                60,
                alive=(sink,),
                logs=(log,),
            )
            sink.send_signal(signal.SIGKILL)
            sink.wait(10)
        front.release()
        held = asyncio.run(_committed(settings, group))
        assert any(held[tp] < last + 1 for tp, last in ranges.items())  # the commit never landed

        total = len(values)

        def landed_everything() -> bool:
            folder = Path(lake.path(f"raw/_sink/{group}/progress"))
            offsets = [json.loads(f.read_text())["offset"] for f in folder.glob("*.json")]
            return sum(offsets) == total

        # Restarted with smaller rolls: the interrupted range is landed whole, as its intent names it.
        with _process(["lake-sink"], {**env, "ATTRIBUTION_SINK_ROLL_RECORDS": "25"}, log) as sink:
            wait_for("the restarted sink lands everything", landed_everything, 90, alive=(sink,), logs=(log,))
            sink.send_signal(signal.SIGTERM)
            assert sink.wait(30) == 0, log.read_text()[-3000:]

        ends = Counter((cfg.topic(route(v)[0]), partition_for(route(v)[1], 2)) for v in values)
        committed = asyncio.run(_committed(settings, group))

    # The interrupted roll was landed again whole, under the same name, with the same rows.
    now = _files_of(lake, name)
    assert set(now) == set(written)
    for rel, data in written.items():
        assert _rows(now[rel]).equals(_rows(data)), rel
    assert not list(intents.glob("*.json")), "an intent left behind"
    # Every partition committed to its end, and every event in the lake once.
    assert {tp: n for tp, n in committed.items() if n >= 0} == dict(ends)
    ids = _event_ids(lake)
    assert set(ids) == valid
    assert [i for i, n in ids.items() if n != 1] == []


# Redis stopped, restarted and hung under a running worker and API ----------------------------


def _db(url: str, n: int) -> str:
    import redis

    out = url.rsplit("/", 1)[0] + f"/{n}"
    redis.Redis.from_url(out).flushdb()
    return out


async def _outcome(url: str) -> dict[str, Any]:
    """Everything the speed layer decided and charged (touches, counters, claims, charges, spend, stats,
    the ledger and the budget events, in order); not the consumers' positions, the dead letters' store,
    nor the API's rate-limit buckets."""
    from tests.helpers import redis_snapshot

    state = await redis_snapshot(url)
    return {
        k: v
        for k, v in state.items()
        if not k.endswith((":clocks", ":dead-letters")) and ":ratelimit:" not in k and ":pace" not in k
    }


def _progress(url: str, settings: Settings, ends: Counter[tuple[str, int]]) -> tuple[int, bool]:
    """Records the worker has checkpointed, and whether everything is settled."""
    import redis

    from realtime.keys import Keys

    r = redis.Redis.from_url(url)
    try:
        keys = Keys.of(settings.keys)
        clocks = {k.decode(): int(v.split(b"|")[0]) for k, v in r.hgetall(keys.clocks()).items()}
        done = sum(min(clocks.get(f"{t}/{p}", 0), n) for (t, p), n in ends.items())
        pending = sum(r.hlen(keys.pending(b)) for b in range(keys.user_buckets))
        return done, done == sum(ends.values()) and pending == 0 and not r.exists(keys.queue(0))
    finally:
        r.close()


def _ends(values: list[Any], settings: Settings) -> Counter[tuple[str, int]]:
    from realtime.routing import partition_for, route

    cfg = settings.realtime
    ends: Counter[tuple[str, int]] = Counter()
    for v in values:
        etype, key = route(v)
        ends[(cfg.topic(etype), partition_for(key, cfg.topic_partitions))] += 1
    return ends


def _errorstats(url: str) -> dict[str, int]:
    import redis

    r = redis.Redis.from_url(url)
    try:
        return {k: int(v["count"]) for k, v in r.info("errorstats").items()}
    finally:
        r.close()


def _settle_and_stop(worker: subprocess.Popen[bytes], log: Path, settled: Any) -> None:
    """Wait until ``settled()`` (everything produced is consumed and settled), then SIGTERM: the
    worker must leave cleanly."""
    wait_for("the worker settles everything", settled, 120, interval_s=0.2, alive=(worker,), logs=(log,))
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0, log.read_text()[-3000:]


def test_redis_stopped_restarted_then_hung_under_a_running_worker_and_api(
    broker: Any, redis_server: Any, tmp_path: Path
) -> None:
    """A private ``redis-server`` (AOF, its data in a folder of the test) under one ``attribution worker``
    draining a backlog and one ``attribution api``; ``socket_timeout=1`` on the URL, as the README says.

    1. With the worker frozen a quarter into the backlog, Redis is stopped (SIGTERM: the AOF keeps the
       data; the script cache is gone). The worker logs the failed batch and its retries and keeps
       running; the API keeps answering (the limiter fails open and counts its errors), ``/v1/budget``
       is a 503 problem. Redis is started again on the same port and folder: the worker resumes from
       its checkpoints (NOSCRIPT answered, the scripts loaded again), and the limiter counts again
       after its pause (an advertiser key is refused with 429 once its burst is spent).
    2. With the worker frozen past half the backlog, redis-server is stopped with SIGSTOP: the worker
       logs a ``TimeoutError`` batch and retries; the API answers ``/v1/budget`` with a 503 within
       seconds and ``/health`` with 200. SIGCONT: the worker resumes from its checkpoints.

    Then every order is charged once: the whole state equals a replay of the same events."""
    import httpx
    import redis

    from devtools.servers import LocalRedis
    from realtime.replay import replay
    from realtime.scripts import Scripts
    from reporting.auth import add_key
    from tests.helpers import running_api

    traffic = generate(
        SyntheticConfig(users=800, days=2, duplicate_rate=0.02, cancel_rate=0.15, late_rate=0.02, seed=53)
    )
    values = [e.payload for e in traffic.events]
    replay_url = _db(redis_server.url, 13)
    asyncio.run(
        replay(values, traffic.catalog, Settings().replace(redis_url=replay_url), show_progress=False)
    )
    expected = asyncio.run(_outcome(replay_url))

    data = tmp_path / "redis-data"
    data.mkdir()
    persist = ("--dir", str(data), "--appendfsync", "always")
    server = LocalRedis(appendonly=True, extra=persist)
    port = server.port
    url = f"{server.url}?socket_timeout=1&socket_connect_timeout=1"
    tag = uuid.uuid4().hex[:8]
    settings = Settings().replace(
        redis_url=url,
        realtime_broker_url=broker.url,
        realtime_topic_prefix=f"t{tag}",
        realtime_app_id=f"g{tag}",
    )
    cfg = settings.realtime
    asyncio.run(produce(values, cfg))
    ends = _ends(values, settings)
    total = sum(ends.values())

    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(yaml.safe_dump({"campaigns": traffic.catalog.to_records()}))
    keys_path = tmp_path / "keys.yaml"
    admin = add_key(keys_path, "ops", "admin")
    ads = add_key(keys_path, "ads", "ad_server")
    adv_id = next(iter(traffic.catalog)).advertiser_id
    advertiser = add_key(keys_path, "adv", "advertiser", adv_id)
    campaigns = [c.campaign_id for c in traffic.catalog][:3]
    env = {
        **_base_env(),
        "ATTRIBUTION_REDIS_URL": url,
        "ATTRIBUTION_CATALOG_URL": str(catalog),
        "ATTRIBUTION_LAKE_URL": f"file://{tmp_path}/lake",
        "ATTRIBUTION_REALTIME_BROKER_URL": broker.url,
        "ATTRIBUTION_REALTIME_TOPIC_PREFIX": cfg.topic_prefix,
        "ATTRIBUTION_REALTIME_APP_ID": cfg.app_id,
        "ATTRIBUTION_REALTIME_SESSION_TIMEOUT_MS": "6000",
        "ATTRIBUTION_REALTIME_HEARTBEAT_INTERVAL_MS": "1000",
        "ATTRIBUTION_REALTIME_TIMER_INTERVAL_S": "0.2",
        "ATTRIBUTION_REALTIME_LEDGER_FLUSH_INTERVAL_S": "0",  # the outcome compared is Redis's
        "ATTRIBUTION_REALTIME_BATCH_SIZE": "100",  # many batches: each fault lands mid-backlog
    }
    api_env = {
        **env,
        "ATTRIBUTION_API_KEYS_PATH": str(keys_path),
        "ATTRIBUTION_API_RATE_ADVERTISER_BURST": "3",
        "ATTRIBUTION_API_RATE_ADVERTISER_PER_S": "0.001",  # no token comes back during the test
    }
    log = tmp_path / "worker.log"

    def get(base: str, path: str, key: str, **params: Any) -> httpx.Response:
        return httpx.get(base + path, headers={"X-API-Key": key}, params=params, timeout=30)

    def scripts_loaded() -> bool:
        client = redis.Redis(port=port)
        try:
            return bool(client.script_exists(*Scripts().sha.values()) == [True] * 4)
        finally:
            client.close()

    def consumed(at_least: float) -> int | None:
        done, _ = _progress(url, settings, ends)
        return done if done >= at_least * total else None

    try:
        with running_api(api_env) as api:
            # Checked before the worker starts: a slow answer on a loaded machine must not let the
            # worker drain the backlog before the first fault.
            assert get(api, "/v1/budget", ads, campaign_id=campaigns).status_code == 200
            assert [get(api, "/health", advertiser).status_code for _ in range(2)] == [200, 200]
            with _process(["worker"], env, log) as worker:
                # 1. Stopped, then restarted on the same port and folder.
                done = freeze_when(worker, lambda: consumed(0.25), 120)
                assert done < total, "the backlog was drained before the fault: make the traffic larger"
                server.stop()
                os.kill(worker.pid, signal.SIGCONT)
                wait_for(
                    "the worker reports the lost connection and retries",
                    lambda: (
                        re.search(r"batch failed \(\w*ConnectionError", log.read_text())
                        and "cannot resume yet" in log.read_text()
                    ),
                    60,
                    alive=(worker,),
                    logs=(log,),
                )
                budget = get(api, "/v1/budget", ads, campaign_id=campaigns)
                assert budget.status_code == 503, budget.text
                assert "Redis" in budget.json()["detail"]
                assert get(api, "/health", advertiser).status_code == 200  # fails open
                metrics = get(api, "/metrics", admin).text
                assert re.search(r"^attribution_api_rate_limit_errors_total [1-9]", metrics, re.M), metrics
                assert worker.poll() is None
                server = LocalRedis(port, appendonly=True, extra=persist)
                # Run in slices until it has resumed and loaded its scripts again, then held stopped while
                # the API is checked: the backlog is not drained behind the test's back.
                freeze_when(
                    worker,
                    lambda: (
                        "resumed 60 partitions from their checkpoints" in log.read_text() and scripts_loaded()
                    ),
                    60,
                )
                assert _errorstats(server.url).get("errorstat_NOSCRIPT", 0) >= 1  # it was told, and reloaded
                # The limiter asks Redis again after its pause; the bucket kept its two tokens spent (AOF).
                refused = wait_for(
                    "the rate limiter counts again",
                    lambda: (r := get(api, "/health", advertiser)).status_code == 429 and r,
                    30,
                    interval_s=0.2,
                )
                assert int(refused.headers["retry-after"]) >= 1
                assert get(api, "/v1/budget", ads, campaign_id=campaigns).status_code == 200

                # 2. Hung past the socket timeout, then continued.
                done = freeze_when(worker, lambda: consumed(0.6), 120)  # in slices from where it was held
                assert done < total, "the backlog was drained before the fault: make the traffic larger"
                os.kill(server.process.pid, signal.SIGSTOP)
                os.kill(worker.pid, signal.SIGCONT)
                started = time.monotonic()
                budget = get(api, "/v1/budget", ads, campaign_id=campaigns)
                assert budget.status_code == 503, budget.text
                assert time.monotonic() - started < 10
                started = time.monotonic()
                assert get(api, "/health", admin).status_code == 200
                assert time.monotonic() - started < 5
                wait_for(
                    "the worker reports the timeout and retries",
                    lambda: re.search(r"batch failed \(\w*TimeoutError", log.read_text()),
                    60,
                    alive=(worker,),
                    logs=(log,),
                )
                os.kill(server.process.pid, signal.SIGCONT)
                wait_for(
                    "the worker resumes again",
                    lambda: log.read_text().count("resumed 60 partitions from their checkpoints") >= 2,
                    60,
                    alive=(worker,),
                    logs=(log,),
                )
                _settle_and_stop(worker, log, lambda: _progress(url, settings, ends)[1])
        got = asyncio.run(_outcome(url))
    finally:
        if server.process.poll() is None:
            os.kill(server.process.pid, signal.SIGCONT)
        server.stop()
    charges = [e for e in ledger_entries(got) if e[b"kind"] in (b"charge", b"cancelled")]
    orders = [decode_decision(e[b"d"]).order_id for e in charges]
    assert len(orders) == len(set(orders)) > 50  # every order charged once
    assert got == expected


# The broker restarted under a running worker ---------------------------------------------------


def test_a_worker_survives_a_broker_restart_and_resumes_at_its_checkpoints(
    redis_server: Any, tmp_path: Path
) -> None:
    """The broker (Tansu, behind a TCP front the worker reaches it through) is stopped under an
    ``attribution worker`` frozen a third into a backlog; the worker, continued, keeps running while
    its reconnections are refused. A new broker takes the old one's place.

    What Tansu cannot do here: keep anything across a restart (it holds topics, the log, the group
    and its committed offsets in memory). So the new broker's log is the old one's produced again,
    the same records at the same offsets, as a broker that keeps its log would serve them (the
    worker is held stopped meanwhile, so it never sees the log half-written); its group and
    committed offsets are gone. The worker rejoins the new group, resumes every partition at its
    checkpoint in Redis (not at a committed offset: there is none), and the outcome equals a replay
    of the same events: nothing lost, nothing applied twice. (What a restart that loses the log does
    to a worker is not tested here: see the report of issue 20.)"""
    from realtime.replay import replay
    from tests.helpers import stop_process

    traffic = generate(SyntheticConfig(users=500, days=2, duplicate_rate=0.02, cancel_rate=0.15, seed=59))
    values = [e.payload for e in traffic.events]
    replay_url = _db(redis_server.url, 14)
    asyncio.run(
        replay(values, traffic.catalog, Settings().replace(redis_url=replay_url), show_progress=False)
    )
    expected = asyncio.run(_outcome(replay_url))

    url = _db(redis_server.url, 15)
    front_port = free_port()
    tag = uuid.uuid4().hex[:8]
    settings = Settings().replace(
        redis_url=url,
        realtime_broker_url=f"kafka://127.0.0.1:{front_port}",
        realtime_topic_prefix=f"t{tag}",
        realtime_app_id=f"g{tag}",
    )
    cfg = settings.realtime
    ends = _ends(values, settings)
    total = sum(ends.values())
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(yaml.safe_dump({"campaigns": traffic.catalog.to_records()}))
    env = {
        **_base_env(),
        "ATTRIBUTION_REDIS_URL": url,
        "ATTRIBUTION_CATALOG_URL": str(catalog),
        "ATTRIBUTION_REALTIME_BROKER_URL": cfg.broker_url,
        "ATTRIBUTION_REALTIME_TOPIC_PREFIX": cfg.topic_prefix,
        "ATTRIBUTION_REALTIME_APP_ID": cfg.app_id,
        "ATTRIBUTION_REALTIME_SESSION_TIMEOUT_MS": "6000",
        "ATTRIBUTION_REALTIME_HEARTBEAT_INTERVAL_MS": "1000",
        "ATTRIBUTION_REALTIME_TIMER_INTERVAL_S": "0.2",
        "ATTRIBUTION_REALTIME_LEDGER_FLUSH_INTERVAL_S": "0",
        "ATTRIBUTION_REALTIME_BATCH_SIZE": "100",
    }
    log = tmp_path / "worker.log"
    assigned = "assigned 60 partitions"
    inner = InnerBroker(advertised_port=front_port)
    stack = ExitStack()
    try:
        with CommitHold(inner.port, port=front_port) as front:
            asyncio.run(produce(values, cfg))  # a backlog before the worker starts (no partition idle)
            worker = stack.enter_context(_process(["worker"], env, log))
            done = freeze_when(
                worker, lambda: (d := _progress(url, settings, ends)[0]) >= total / 3 and d, 120
            )
            assert done < total, "the backlog was drained before the fault: make the traffic larger"
            inner.stop()
            os.kill(worker.pid, signal.SIGCONT)
            refused = front.refused
            wait_for(
                "the worker tries to reconnect to the stopped broker",
                lambda: front.refused >= refused + 3,
                60,
                alive=(worker,),
                logs=(log,),
            )
            # The operator sees it: the Kafka client's own warnings are not silenced after the start.
            wait_for(
                "the worker logs the lost broker",
                lambda: re.search(r"^(WARNING|ERROR) aiokafka", log.read_text(), re.M),
                60,
                alive=(worker,),
                logs=(log,),
            )
            stop_process(worker.pid)
            inner = InnerBroker(advertised_port=front_port)
            front.upstream = inner.port
            asyncio.run(produce(values, cfg))  # the same log again: same records, same offsets
            os.kill(worker.pid, signal.SIGCONT)
            wait_for(
                "the worker rejoins the new broker's group",
                lambda: log.read_text().count(assigned) >= 2,
                60,
                alive=(worker,),
                logs=(log,),
            )
            _settle_and_stop(worker, log, lambda: _progress(url, settings, ends)[1])
    finally:
        stack.close()
        inner.stop()
    got = asyncio.run(_outcome(url))
    charges = [e for e in ledger_entries(got) if e[b"kind"] in (b"charge", b"cancelled")]
    orders = [decode_decision(e[b"d"]).order_id for e in charges]
    assert len(orders) == len(set(orders)) > 30  # every order charged once
    assert got == expected
