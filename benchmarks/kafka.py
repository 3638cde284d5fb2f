"""The speed layer end to end through a Kafka-protocol broker: produce, consume, Redis.

All on this machine: a Tansu broker (``devtools.servers.LocalBroker``, in memory), a private
redis-server, the producer (this process) and the workers (``attribution worker`` processes).

- ours, one worker and two workers: events/s from the first produced event until every event
  is processed and every order settled (read from the workers' checkpoints in Redis), the
  workers having joined their group beforehand;
- baseline, in the same run: the textbook Faust agent that awaits Redis once per event
  (``benchmarks.naive_faust``), on the same broker and Redis, measured the same way;
- one worker draining a backlog of 1M events produced beforehand (its group join included,
  and without it);
- the invalid-traffic rules: one worker end to end with every rule enforced against every rule
  off, side by side in the same run, on traffic whose touches carry agents and addresses (1% of
  users in each fraud scene, ``devtools.fraud``), alternate runs, best of each (target: at least
  90% of the speed without rules);
- the release rule (``realtime.release``): two workers under ``group`` (the default, correct
  whatever partitioner or key each producer uses) against ``partition`` (the worker's own
  watermark, correct only with co-partitioned producers), side by side: events/s end to end,
  and the decision latency on live traffic stamped now (from an order's release time, its event
  time plus the allowed lateness, to its charge in the ledger stream).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import redis
import yaml

from benchmarks._harness import Row, best_of, console, print_table, quick
from devtools.servers import LocalBroker, LocalRedis
from devtools.synthetic import SyntheticConfig, generate
from devtools.traffic import encode, produce
from realtime.broker import ensure_topics
from realtime.keys import Keys
from realtime.routing import partition_for, route
from shared_logic.settings import Settings

EVENTS_PER_USER_DAY = 3.9  # the default traffic's mean


def _traffic(events: int, seed: int) -> tuple[list[Any], Any]:
    users = max(50, int(events / (3 * EVENTS_PER_USER_DAY)))
    traffic = generate(SyntheticConfig(users=users, days=3, seed=seed, malformed_rate=0.0005))
    return [e.payload for e in traffic.events], traffic.catalog


def _ends(values: list[Any], settings: Settings) -> Counter[str]:
    cfg = settings.realtime
    ends: Counter[str] = Counter()
    for v in values:
        etype, key = route(v)
        ends[f"{cfg.topic(etype)}/{partition_for(key, cfg.topic_partitions)}"] += 1
    return ends


def _settled(client: redis.Redis, settings: Settings, ends: Counter[str]) -> tuple[int, bool]:
    keys = Keys.of(settings.keys)
    clocks = {k.decode(): int(v.split(b"|")[0]) for k, v in client.hgetall(keys.clocks()).items()}
    done = sum(min(clocks.get(tp, 0), n) for tp, n in ends.items())
    if done < sum(ends.values()):
        return done, False
    pending = sum(client.hlen(keys.pending(b)) for b in range(keys.user_buckets))
    return done, pending == 0 and not client.exists(keys.queue(0))


class Workers:
    """``n`` worker processes of one group, started and joined before the clock starts."""

    def __init__(
        self, n: int, settings: Settings, catalog_path: str, folder: str, extra: dict[str, str] | None = None
    ) -> None:
        cfg = settings.realtime
        env = {k: v for k, v in os.environ.items() if not k.startswith("ATTRIBUTION_")}
        env.update(
            ATTRIBUTION_REDIS_URL=settings.redis.url,
            ATTRIBUTION_CATALOG_URL=catalog_path,
            ATTRIBUTION_REALTIME_BROKER_URL=cfg.broker_url,
            ATTRIBUTION_REALTIME_TOPIC_PREFIX=cfg.topic_prefix,
            ATTRIBUTION_REALTIME_APP_ID=cfg.app_id,
            ATTRIBUTION_REALTIME_SESSION_TIMEOUT_MS="6000",
            ATTRIBUTION_REALTIME_HEARTBEAT_INTERVAL_MS="1000",
            ATTRIBUTION_KEYS_USER_BUCKETS=str(settings.keys.user_buckets),
            ATTRIBUTION_LAKE_URL=f"file://{Path(folder, 'lake').resolve()}",  # the ledger flushes there
            ATTRIBUTION_REALTIME_RELEASE=cfg.release,
            **(extra or {}),
        )
        exe = str(Path(sys.executable).with_name("attribution"))
        self.logs = [Path(folder, f"{cfg.app_id}-{i}.log") for i in range(n)]
        self.procs = [
            subprocess.Popen([exe, "worker"], env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
            for log in self.logs
        ]

    def wait_joined(self, partitions: int, timeout_s: float = 120) -> float:
        """Seconds until every worker logged its share of the partitions."""
        started = time.perf_counter()
        share = partitions // len(self.procs)
        while time.perf_counter() - started < timeout_s:
            texts = [log.read_text(errors="replace") if log.exists() else "" for log in self.logs]
            if all(f"assigned {share} partitions" in t for t in texts):
                return time.perf_counter() - started
            if any(p.poll() is not None for p in self.procs):
                raise RuntimeError("a worker exited: " + " | ".join(t[-500:] for t in texts))
            time.sleep(0.05)
        raise RuntimeError("the workers did not join")

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


def _settings(broker: LocalBroker, server: LocalRedis, db: int) -> Settings:
    tag = uuid.uuid4().hex[:6]
    url = server.url.rsplit("/", 1)[0] + f"/{db}"
    return Settings().replace(
        redis_url=url,
        realtime_broker_url=broker.url,
        realtime_topic_prefix=f"b{tag}",
        realtime_app_id=f"bench-{tag}",
        keys_user_buckets=256,
    )


def _run_ours(
    workers: int,
    values: list[Any],
    catalog_path: str,
    broker: LocalBroker,
    server: LocalRedis,
    folder: str,
    db: int,
    release: str = "group",
    extra: dict[str, str] | None = None,
) -> tuple[float, float]:
    """(events/s end to end, seconds to join) for ``workers`` worker processes (``extra``: more
    settings for them, as environment variables)."""
    settings = _settings(broker, server, db).replace(realtime_release=release)
    asyncio.run(ensure_topics(settings.realtime))
    ends = _ends(values, settings)
    procs = Workers(workers, settings, catalog_path, folder, extra)
    client = redis.Redis.from_url(settings.redis.url)
    try:
        joined = procs.wait_joined(5 * settings.realtime.topic_partitions)
        started = time.perf_counter()
        asyncio.run(produce(values, settings.realtime))
        while not _settled(client, settings, ends)[1]:
            if time.perf_counter() - started > 900:
                raise RuntimeError("not drained in 15 minutes")
            time.sleep(0.05)
        return len(values) / (time.perf_counter() - started), joined
    finally:
        procs.stop()
        client.close()


IVT_RULES = ("BOT_USER_AGENT", "DATACENTER_IP", "CLICK_INJECTION", "CLICK_FLOODING", "HYPER_ENGAGEMENT")


def _rules_cost(n: int, broker: LocalBroker, server: LocalRedis, folder: str) -> tuple[Row, float]:
    """(the row, the ratio) of one worker's events/s end to end with every invalid-traffic rule
    enforced against every rule off, on the same fraud-labelled traffic: alternate runs, each on
    its own Redis database and topics, best of ``runs`` each."""
    from devtools.fraud import DATACENTER_RANGES

    users = max(50, int(n / (3 * EVENTS_PER_USER_DAY)))
    traffic = generate(SyntheticConfig(users=users, days=3, seed=19, fraud_rate=0.01))
    values = [e.payload for e in traffic.events]
    catalog_path = str(Path(folder, "catalog-ivt.yaml"))
    Path(catalog_path).write_text(yaml.safe_dump({"campaigns": traffic.catalog.to_records()}))
    ranges = Path(folder, "datacenter.txt")
    ranges.write_text("\n".join(DATACENTER_RANGES) + "\n")
    runs = 1 if quick() else 3
    best = {"enforce": 0.0, "off": 0.0}
    db = 10
    for _ in range(runs):
        for mode in ("off", "enforce"):
            console.print(f"[dim]kafka bench: one worker, rules {mode}, {len(values):,} events[/dim]")
            extra = {f"ATTRIBUTION_RULES_IVT_{r}": mode for r in IVT_RULES}
            extra["ATTRIBUTION_RULES_IVT_DATACENTER_RANGES"] = str(ranges)
            rate, _ = _run_ours(1, values, catalog_path, broker, server, folder, db=db, extra=extra)
            db += 1
            best[mode] = max(best[mode], rate)
    ratio = best["enforce"] / best["off"]
    row = Row(
        "1 worker, invalid-traffic rules enforced vs off",
        best["enforce"],
        best["off"],
        "events/s",
        f"{len(values):,} events, fraud_rate 0.01, best of {runs}; the baseline here is rules off",
        True,
    )
    return row, ratio


def _run_live_latency(
    release: str, broker: LocalBroker, server: LocalRedis, folder: str, db: int, seconds: float, rate: float
) -> tuple[float, float, int]:
    """(p50 ms, p99 ms, charges) from an order's release time to its charge, two workers under
    ``release``, live traffic stamped now at ``rate`` events/s for ``seconds`` (lateness 1 s)."""
    from devtools.livetraffic import LiveTraffic, live_catalog

    lateness_ms = 1_000
    settings = _settings(broker, server, db).replace(
        realtime_release=release, rules_allowed_lateness_ms=lateness_ms, realtime_timer_interval_s=0.2
    )
    asyncio.run(ensure_topics(settings.realtime))
    catalog = live_catalog(2_000, 7, rate)
    catalog_path = str(Path(folder, f"live-{release}.yaml"))
    Path(catalog_path).write_text(yaml.safe_dump({"campaigns": catalog.to_records()}))
    extra = {
        "ATTRIBUTION_RULES_ALLOWED_LATENESS_MS": str(lateness_ms),
        "ATTRIBUTION_REALTIME_TIMER_INTERVAL_S": "0.2",
    }
    procs = Workers(2, settings, catalog_path, folder, extra)
    client = redis.Redis.from_url(settings.redis.url)
    try:
        procs.wait_joined(5 * settings.realtime.topic_partitions)
        traffic = LiveTraffic(settings.realtime, rate=rate, users=2_000, seed=7)

        async def paced() -> None:
            stop = asyncio.Event()
            task = asyncio.create_task(traffic.run(stop))
            await asyncio.sleep(seconds)
            stop.set()
            await task

        asyncio.run(paced())
        time.sleep(lateness_ms / 1000 + 3)  # the last orders come due and settle
        keys = Keys.of(settings.keys)
        latencies = sorted(
            int(entry_id.split(b"-")[0]) - int(fields[b"due"])
            for shard in range(keys.budget_shards)
            for entry_id, fields in client.xrange(keys.ledger(shard))
            if fields[b"kind"] == b"charge"
        )
    finally:
        procs.stop()
        client.close()
    if not latencies:
        raise RuntimeError(f"no charge under release={release}")
    return latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)], len(latencies)


def _run_naive(values: list[Any], broker: LocalBroker, server: LocalRedis, db: int) -> float:
    prefix = f"n{uuid.uuid4().hex[:6]}"
    settings = Settings().replace(realtime_broker_url=broker.url, realtime_topic_prefix=prefix)
    asyncio.run(ensure_topics(settings.realtime))
    url = server.url.rsplit("/", 1)[0] + f"/{db}"
    env = {**os.environ, "BENCH_BROKER": broker.url, "BENCH_REDIS": url, "BENCH_PREFIX": prefix}
    with tempfile.TemporaryDirectory() as cwd:
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.naive_faust"],
            env={**env, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(url)
        try:
            deadline = time.perf_counter() + 120
            # Warm-up: one event, so the clock starts once the agent has joined and consumes.
            asyncio.run(produce(values[:1], settings.realtime))
            while int(client.get("naive:processed") or 0) < 1:
                if time.perf_counter() > deadline or proc.poll() is not None:
                    raise RuntimeError("the naive agent did not start")
                time.sleep(0.05)
            started = time.perf_counter()
            asyncio.run(produce(values[1:], settings.realtime))
            while int(client.get("naive:processed") or 0) < len(values):
                if time.perf_counter() - started > 900:
                    raise RuntimeError("the naive agent did not finish in 15 minutes")
                time.sleep(0.05)
            return (len(values) - 1) / (time.perf_counter() - started)
        finally:
            proc.terminate()
            proc.wait(30)
            client.close()


def _run_backlog(
    values: list[Any], catalog_path: str, broker: LocalBroker, server: LocalRedis, folder: str, db: int
) -> tuple[float, float]:
    """(seconds from start, seconds from assignment) for one worker to drain a produced backlog."""
    settings = _settings(broker, server, db)
    asyncio.run(produce(values, settings.realtime))
    ends = _ends(values, settings)
    client = redis.Redis.from_url(settings.redis.url)
    started = time.perf_counter()
    procs = Workers(1, settings, catalog_path, folder)
    try:
        joined = procs.wait_joined(5 * settings.realtime.topic_partitions)
        last = -1
        while True:
            done, settled = _settled(client, settings, ends)
            if settled:
                break
            if done != last:
                last = done
                console.print(f"[dim]  kafka bench: backlog {done:,} / {len(values):,}[/dim]", end="\r")
            time.sleep(0.1)
        console.print()  # end the progress line
        total = time.perf_counter() - started
        return total, total - joined
    finally:
        procs.stop()
        client.close()


def _run_sink(
    values: list[Any], broker: LocalBroker, server: LocalRedis, folder: str, roll_age_s: float = 0.5
) -> tuple[float, float, int]:
    """(events/s, seconds) for one lake sink to land a produced backlog, from its assignment until
    every record is landed and committed; and (events/s) for ``storage.raw.land`` of the same bytes in
    one call, no broker: the writer alone."""
    from realtime.lakesink import LakeSink
    from storage import open_lake
    from storage.raw import land

    settings = _settings(broker, server, db=5).replace(
        lake_url=f"file://{Path(folder, 'sink-lake').resolve()}", sink_roll_age_s=roll_age_s
    )
    asyncio.run(produce(values, settings.realtime))

    async def drain() -> float:
        sink = LakeSink(settings, open_lake(settings.lake.url))
        await sink.start()
        task = asyncio.create_task(sink.run())
        assert sink.consumer is not None
        while not sink.consumer.assignment():  # noqa: ASYNC110  # polling the consumer's own state
            await asyncio.sleep(0.01)
        started = time.perf_counter()
        while (sink.metrics.registry.get_sample_value("lake_sink_records_total") or 0) < len(values):
            if task.done():
                task.result()
            await asyncio.sleep(0.02)
        seconds = time.perf_counter() - started
        sink.stop()
        await task
        return seconds

    seconds = asyncio.run(drain())
    encoded = [(encode(v), int(time.time() * 1000)) for v in values]
    alone, _ = best_of(
        lambda: land(open_lake(f"file://{Path(folder, 'land-lake').resolve()}"), encoded, "b"), 1
    )
    files = sum(1 for _ in Path(folder, "sink-lake", "raw").rglob("*.parquet"))
    return len(values) / seconds, len(values) / alone, files


def run() -> list[Row]:
    n, n_naive, n_backlog = (30_000, 3_000, 100_000) if quick() else (300_000, 20_000, 1_000_000)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as folder, LocalBroker() as broker, LocalRedis() as server:
        values, catalog = _traffic(n, seed=41)
        catalog_path = str(Path(folder, "catalog.yaml"))
        Path(catalog_path).write_text(yaml.safe_dump({"campaigns": catalog.to_records()}))
        console.print(f"[dim]kafka bench: naive Faust agent on {n_naive:,} events[/dim]")
        naive = _run_naive(values[:n_naive], broker, server, db=1)
        console.print(f"[dim]kafka bench: one worker, {len(values):,} events end to end[/dim]")
        one, join1 = _run_ours(1, values, catalog_path, broker, server, folder, db=2)
        console.print(f"[dim]kafka bench: two workers, {len(values):,} events end to end[/dim]")
        two, _ = _run_ours(2, values, catalog_path, broker, server, folder, db=3)
        rows.append(
            Row(
                "1 worker, end to end",
                one,
                naive,
                "events/s",
                f"{len(values):,} events; joined in {join1:.1f}s",
                True,
            )
        )
        rows.append(
            Row(
                "2 workers, end to end (sum)",
                two,
                naive,
                "events/s",
                f"{two / 2:,.0f} events/s per worker",
                True,
            )
        )
        rules_row, rules_ratio = _rules_cost(n, broker, server, folder)
        rows.append(rules_row)
        console.print(f"[dim]kafka bench: two workers, release=partition, {len(values):,} events[/dim]")
        two_partition, _ = _run_ours(
            2, values, catalog_path, broker, server, folder, db=6, release="partition"
        )
        rows.append(
            Row(
                "2 workers, release=group vs partition (events/s)",
                two,
                two_partition,
                "events/s",
                "the baseline here is release=partition (co-partitioned producers only)",
                True,
            )
        )
        live_s, live_rate = (8.0, 1_000.0) if quick() else (20.0, 2_000.0)
        lat: dict[str, tuple[float, float, int]] = {}
        for i, release in enumerate(("group", "partition")):
            console.print(f"[dim]kafka bench: decision latency, release={release}, {live_s:.0f}s live[/dim]")
            lat[release] = _run_live_latency(release, broker, server, folder, 7 + i, live_s, live_rate)
        for q, name in ((0, "p50"), (1, "p99")):
            rows.append(
                Row(
                    f"2 workers, release to charge {name}, group vs partition",
                    lat["group"][q],
                    lat["partition"][q],
                    "ms",
                    f"{lat['group'][2]:,} / {lat['partition'][2]:,} charges; "
                    f"{live_rate:,.0f} events/s stamped now",
                )
            )
        del values
        console.print(f"[dim]kafka bench: one worker draining a backlog of {n_backlog:,} events[/dim]")
        backlog, _ = _traffic(n_backlog, seed=43)
        total, after_join = _run_backlog(backlog, catalog_path, broker, server, folder, db=4)
        rows.append(
            Row(
                f"drain a backlog of {len(backlog):,} events, 1 worker",
                len(backlog) / after_join,
                naive,
                "events/s",
                f"{total:.1f}s from start ({after_join:.1f}s after its group join)",
                True,
            )
        )
        console.print(f"[dim]kafka bench: the lake sink landing a backlog of {len(backlog):,} events[/dim]")
        sink, writer, files = _run_sink(backlog, broker, server, folder)
        rows.append(
            Row(
                f"lake sink: land a backlog of {len(backlog):,} events",
                sink,
                writer,
                "events/s",
                f"{files:,} files; vs storage.raw.land of the same bytes in one call (the writer "
                "alone, no broker)",
                True,
            )
        )
    print_table(
        "Speed layer through a Kafka-protocol broker (Tansu), Redis and the producer on this machine",
        rows,
        baseline="naive Faust agent",
    )
    console.print(
        f"targets: >= 25,000 events/s per worker (one worker: {one:,.0f}; two: {two / 2:,.0f} each) "
        f"and >= 20x the naive agent ({one / naive:.1f}x)"
    )
    console.print(
        f"throughput with every invalid-traffic rule enforced: {rules_row.ours:,.0f} events/s, "
        f"without: {rules_row.baseline:,.0f} events/s ([bold]{rules_ratio:.1%}[/bold] of the speed "
        "without rules; target >= 90%)"
    )
    return rows


if __name__ == "__main__":
    run()
