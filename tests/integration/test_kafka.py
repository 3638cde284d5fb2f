"""The speed layer on a real Kafka-protocol broker (Tansu, see devtools.servers): backlogs decided
exactly as a replay of the same events, whatever the pace of each topic."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from devtools.synthetic import SyntheticConfig, Traffic, generate
from devtools.traffic import produce
from realtime.clock import tp_name
from realtime.codec import decode_decision
from realtime.kafka import KafkaWorker
from realtime.replay import replay
from realtime.routing import route
from shared_logic.contract import Checkpoint
from shared_logic.events import EVENT_TYPES
from shared_logic.settings import Settings
from tests.helpers import ledger_entries, product_env, read_dead_letter_topic, redis_snapshot

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
    # Pacing keys are the controller's state, stepped when a batch's watermark passes an interval
    # (timing, not outcome): decisions and charges never read them.
    return {
        k: v for k, v in state.items() if not k.endswith((":clocks", ":dead-letters")) and ":pace" not in k
    }


def _ends(values: list[Any], settings: Settings) -> Counter[tuple[str, int]]:
    from realtime.routing import partition_for

    cfg = settings.realtime
    ends: Counter[tuple[str, int]] = Counter()
    for v in values:
        etype, key = route(v)
        ends[(cfg.topic(etype), partition_for(key, cfg.topic_partitions))] += 1
    return ends


def _total(engine: Any, name: str) -> int:
    """A counter's value summed over its labels."""
    return int(sum(s.value for f in engine.metrics.registry.collect() for s in f.samples if s.name == name))


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
                    seen["dead_letters"] = _total(engine, "attribution_dead_letters_total")
                    seen["log_lost"] = _total(engine, "attribution_partition_log_lost_total")
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
    ledger = ledger_entries(got)
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
    env = product_env()
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


def _client(url: str) -> Any:
    """A synchronous client of a Redis or a Redis Cluster (every node reached through the first)."""
    import redis

    from realtime.client import is_cluster

    if is_cluster(url):
        host, _, port = url.split("://", 1)[1].split(",")[0].rpartition(":")
        return redis.RedisCluster(host=host, port=int(port))
    return redis.Redis.from_url(url)


def _progress(
    url: str, settings: Settings, ends: Counter[tuple[str, int]]
) -> tuple[dict[tuple[str, int], int], bool]:
    """Records processed per partition (from the checkpoints) and whether everything is settled."""
    from realtime.keys import Keys

    r = _client(url)
    keys = Keys.of(settings.keys)
    clocks = {k.decode(): Checkpoint.parse(v).offset for k, v in r.hgetall(keys.clocks()).items()}
    done = {tp: min(clocks.get(tp_name(tp), 0), n) for tp, n in ends.items()}
    pending = sum(r.hlen(keys.pending(b)) for b in range(keys.user_buckets))
    settled = sum(done.values()) == sum(ends.values()) and pending == 0 and not r.exists(keys.queue(0))
    r.close()
    return done, settled


def _pending_partitions(url: str, settings: Settings) -> Counter[tuple[str, int]]:
    """The orders and cancels waiting in Redis for their release, per input partition (each pending
    record's payload names the partition it came from, ``tp``)."""
    import orjson

    from realtime.keys import Keys

    r = _client(url)
    keys = Keys.of(settings.keys)
    out: Counter[tuple[str, int]] = Counter()
    for b in range(keys.user_buckets):
        for record in r.hvals(keys.pending(b)):
            topic, _, partition = orjson.loads(record[record.index(b"{") :])["tp"].rpartition("/")
            out[(topic, int(partition))] += 1
    r.close()
    return out


_ASSIGNED = re.compile(r"assigned (\d+) partitions: (.*)$")
_RANGE = re.compile(r"^(\S+): (\d+)\.\.(\d+) \((\d+)\)$")


def _assignments(log: str) -> list[frozenset[tuple[str, int]]]:
    """Every assignment a worker logged, in order, as sets of (topic, partition). The log names
    each topic's partitions as ``first..last (count)``: a range only when count = last - first + 1
    (the Range assignor's contiguous ranges), which is checked."""
    out = []
    for line in log.splitlines():
        m = _ASSIGNED.search(line)
        if not m:
            continue
        tps: set[tuple[str, int]] = set()
        for part in m.group(2).split("; "):
            r = _RANGE.match(part.strip())
            assert r, f"unreadable assignment: {line!r}"
            first, last, count = int(r.group(2)), int(r.group(3)), int(r.group(4))
            assert count == last - first + 1, f"not a contiguous range, the log cannot name the set: {line!r}"
            tps |= {(r.group(1), p) for p in range(first, last + 1)}
        assert len(tps) == int(m.group(1)), line
        out.append(frozenset(tps))
    return out


TAKEOVER_LATENESS_MS = 2 * 3_600_000  # orders wait 2 h of event time: many are pending at the kill
TAKEOVER_TRAFFIC = SyntheticConfig(
    users=5_000, days=3, duplicate_rate=0.02, cancel_rate=0.15, late_rate=0.02, seed=31,
    allowed_lateness_ms=TAKEOVER_LATENESS_MS,
)  # fmt: skip


@pytest.fixture(scope="module")
def takeover(redis_server: Any) -> tuple[Traffic, dict[str, Any]]:
    """The takeover test's traffic and its replay's outcome (on one server: the key layout and
    every value are the same on a Redis Cluster)."""
    traffic = generate(TAKEOVER_TRAFFIC)
    url = _db(redis_server.url, 9)
    settings = Settings().replace(redis_url=url, rules_allowed_lateness_ms=TAKEOVER_LATENESS_MS)
    asyncio.run(replay([e.payload for e in traffic.events], traffic.catalog, settings, show_progress=False))
    return traffic, asyncio.run(_outcome(url))


def _wait(
    what: str, check: Any, timeout_s: float, alive: list[Any], logs: list[Any], every_s: float = 0.02
) -> Any:
    """Poll ``check()`` until it returns something truthy and return it; fail naming ``what``, with
    the logs' tails, when ``timeout_s`` passes or a process of ``alive`` exits."""
    deadline = time.monotonic() + timeout_s
    while not (got := check()):
        dead = [p.args for p in alive if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            tails = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in logs)
            raise AssertionError(f"{what}: {f'exited: {dead}' if dead else 'timed out'}\n{tails}")
        time.sleep(every_s)
    return got


@pytest.mark.parametrize("backend", ["server", "cluster"])
def test_two_workers_one_killed_its_partitions_move_to_the_other_and_equal_the_replay(
    broker: Any, redis_server: Any, request: pytest.FixtureRequest, tmp_path: Any, takeover: Any, backend: str
) -> None:
    """Two ``attribution worker`` processes share 12 partitions of each topic. Once each holds its half
    (their logs' assignments are disjoint and cover all 60) and the one to be killed has processed a tenth
    of its orders (it takes batches of 20 records, the survivor of 150), it is frozen (SIGSTOP: what it
    did and left undone is fixed, whatever the machine's load) and killed with SIGKILL while its
    partitions have records left and Redis holds orders of theirs still to be released. The survivor's
    next assignment is exactly its own half plus the dead one's (read from its log after the kill); it
    takes them from their checkpoints to their ends with their pending orders, every order is charged
    once, and the outcome equals the replay. On one server and on a 3-master Redis Cluster.

    Fails on: a survivor that never takes the partitions over (they stay at their checkpoints: the
    wait times out), or takes other ones; a takeover that loses the pending orders or ignores the
    checkpoints (the outcome differs from the replay, or an order is charged twice)."""
    import signal
    import subprocess
    import sys

    import yaml

    from tests.helpers import flush

    traffic, replayed = takeover
    values = [e.payload for e in traffic.events]
    if backend == "server":
        url = _db(redis_server.url, 8)
    else:
        url = request.getfixturevalue("redis_cluster").url
        flush(url)
    settings = _settings(broker, url).replace(rules_allowed_lateness_ms=TAKEOVER_LATENESS_MS)
    asyncio.run(produce(values, settings.realtime))
    ends = _ends(values, settings)
    every = frozenset(ends)
    assert len(every) == 5 * settings.realtime.topic_partitions
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(yaml.safe_dump({"campaigns": traffic.catalog.to_records()}))
    exe = str(Path(sys.executable).with_name("attribution"))
    env = {
        **_worker_env(settings, str(catalog)),
        "ATTRIBUTION_RULES_ALLOWED_LATENESS_MS": str(TAKEOVER_LATENESS_MS),
    }
    paths = [tmp_path / f"worker{i}.log" for i in range(2)]
    logs = [open(p, "wb") for p in paths]  # noqa: SIM115 - closed below
    # The victim takes small batches: it is still far from its ends when it has done a tenth of its
    # orders, however fast the machine (it may take a topic's whole backlog before the orders).
    # Batching must not change the outcome, so the two workers' batch sizes differ on purpose.
    workers = [
        subprocess.Popen(
            [exe, "worker"], env={**env, "ATTRIBUTION_REALTIME_BATCH_SIZE": size}, stdout=log,
            stderr=subprocess.STDOUT,
        )
        for size, log in zip(("150", "20"), logs, strict=True)
    ]  # fmt: skip
    survivor, victim = workers
    try:

        def halves() -> tuple[frozenset[tuple[str, int]], frozenset[tuple[str, int]]] | None:
            held = [_assignments(p.read_text()) for p in paths]
            if not all(held):
                return None
            mine, theirs = held[0][-1], held[1][-1]
            return (
                (mine, theirs) if mine and theirs and not mine & theirs and mine | theirs == every else None
            )

        _, victims = _wait("two workers holding a half each", halves, 120, workers, paths)
        victim_orders = {tp for tp in victims if tp[0] == settings.realtime.topic("order")}

        from realtime.keys import Keys

        keys = Keys.of(settings.keys)
        clocks, tenth = _client(url), sum(ends[tp] for tp in victim_orders) // 10
        names = [tp_name(tp) for tp in victim_orders]

        def victim_tenth() -> bool:  # the checkpoints only: one HMGET, polled every 2 ms
            saved = clocks.hmget(keys.clocks(), names)
            return sum(Checkpoint.parse(v).offset for v in saved if v) >= tenth

        try:
            _wait("the victim did a tenth of its orders", victim_tenth, 180, workers, paths, every_s=0.002)
        finally:
            clocks.close()
        victim.send_signal(signal.SIGSTOP)
        _wait("the victim stopped", lambda: _is_stopped(victim.pid), 10, [victim], paths, every_s=0.005)
        assert halves() == (every - victims, victims)  # no rebalance meanwhile
        pending = _pending_partitions(url, settings)
        at_kill, _ = _progress(url, settings, ends)
        survivor_log_at_kill = len(paths[0].read_bytes())
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        # The victim held orders still to be released, and its partitions have records left.
        assert sum(n for tp, n in pending.items() if tp in victims) > 0, pending
        left = {tp for tp in victims if at_kill[tp] < ends[tp]}
        assert left

        _wait(
            "the survivor finished every partition, the victim's included",
            lambda: _progress(url, settings, ends)[1],
            240,
            [survivor],
            paths,
            every_s=0.2,
        )
        survivor.send_signal(signal.SIGTERM)
        assert survivor.wait(30) == 0
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
        for log in logs:
            log.close()
    text = paths[0].read_bytes()
    before, after = (
        _assignments(text[:survivor_log_at_kill].decode()),
        _assignments(text[survivor_log_at_kill:].decode()),
    )
    assert after, "the survivor logged no assignment after the kill"
    assert before[-1] == every - victims
    assert after[-1] == every  # its own half and the victim's, exactly
    assert after[-1] - before[-1] == victims
    # The victim's partitions went from their checkpoints at the kill to their ends: the survivor's work.
    done, _ = _progress(url, settings, ends)
    assert all(done[tp] == ends[tp] > at_kill[tp] for tp in left)
    got = asyncio.run(_outcome(url))
    ledger = [e for key, stream in got.items() if key.endswith(":ledger") for e in stream]
    charges = [e for e in ledger if e[b"kind"] in (b"charge", b"cancelled")]
    orders = [decode_decision(e[b"d"]).order_id for e in charges]
    assert len(orders) == len(set(orders)) > 500  # every order charged once
    assert got == replayed


def _is_stopped(pid: int) -> bool:
    """Whether a process is stopped (SIGSTOP): state ``T`` in ``/proc/<pid>/stat``."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2] == "T"


class _Killed(BaseException):  # a death: nothing in the worker handles it
    """The worker dies here (no checkpoint, no commit)."""


def test_a_checkpoint_past_the_log_end_resumes_at_the_log_start(broker: Any, redis_server: Any) -> None:
    """The broker lost records the engine had applied (a broker restarted without its log, a
    topic recreated): Redis's checkpoints name offsets past the end of every partition's log, which
    now holds only new records. The worker, on assignment, finds each checkpoint past its log's
    end, says so (an error line and ``attribution_partition_log_lost_total``), resumes at the log's
    start, and decides the new records exactly as a replay of them does.

    Mutant killed: resuming at the checkpoint (the redelivery check then skips every new record
    until the log passes the old offset: nothing is decided)."""
    import redis as redis_sync

    from realtime.clock import tp_name
    from realtime.keys import Keys
    from shared_logic.contract import Checkpoint

    small = generate(SyntheticConfig(users=500, days=1, cancel_rate=0.15, seed=41))
    values = [e.payload for e in small.events]
    replay_url = _db(redis_server.url, 12)
    asyncio.run(replay(values, small.catalog, Settings().replace(redis_url=replay_url), show_progress=False))
    expected = asyncio.run(_outcome(replay_url))

    url = _db(redis_server.url, 13)
    settings = _settings(broker, url)
    cfg = settings.realtime
    ahead = Checkpoint(50_000, 0).encode()
    with redis_sync.Redis.from_url(url) as r:
        r.hset(
            Keys.of(settings.keys).clocks(),
            mapping={
                tp_name((cfg.topic(t), p)): ahead for t in EVENT_TYPES for p in range(cfg.topic_partitions)
            },
        )
    seen = asyncio.run(_drain_backlog(settings, small, values))
    assert seen["log_lost"] == len(EVENT_TYPES) * cfg.topic_partitions
    got = asyncio.run(_outcome(url))
    assert len(ledger_entries(got)) > 10
    assert got == expected


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
    calls = {"n": 0, "checkpointed": 0}

    async def dies_on_the_fourth(self: SpeedLayer, released: Any) -> None:
        # Dies at the fourth checkpoint that has new offsets to record (a timer's step releasing
        # orders with no new records checkpoints too; dying there would leave nothing to redeliver).
        applied = sum(c.next_offset for c in self.clocks.parts.values())
        if applied > calls["checkpointed"]:
            calls["n"] += 1
            if calls["n"] == 4:
                raise _Killed
        await original(self, released)
        calls["checkpointed"] = applied

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
