"""Redis memory of the speed layer at steady state, by record kind: the layout before issue 21
against the current one, on the same events, in the same run.

A generated population is replayed through the real speed layer (``realtime.replay``, in event
time) on a private redis-server for longer than the longest TTL, so every kind of record has
reached its steady state: as many are created per day as expire.

Redis expires keys by its wall clock, and a replay passes weeks of event time in seconds, so
the benchmark applies the TTLs in event time itself. While the replay runs, each step of the
engine records (wall clock, its release bound); after it, each key with a TTL was last written at
wall time ``PEXPIRETIME - ttl`` (the TTL its kind is written with in that layout), which the
timeline turns into the release bound of the step that wrote it (the event time orders were
decided at); a key whose write plus its TTL lies
before the replay's last watermark would have expired in production, and is deleted. A user's
touch set expires with its newest touch: the latest ``arrival watermark + retention of its kind``
over its members (``ti:`` follows its ``t:``). Touches older than their retention were trimmed by
the ingest script already, in event time.

Then every key is read (``SCAN`` + ``MEMORY USAGE``) and summed by kind. Bytes per active user
(touches and their ids), per daily order (pending, claims, cancel markers, charges, settlement
queue, ledger stream) and the campaign-day records (counters, spend, stats, budget events: they
grow with campaigns and days, not users) give the extrapolation to 1M/10M users and 100k/1M
orders a day (``realtime.footprint`` names the kinds). The keys left are copied
(``DUMP``/``RESTORE``) to a 3-master Redis Cluster to measure the busiest node's share.

The ledger is flushed to a lake at the end of the replay, as the worker's flusher does on a
timer: what the stream holds at steady state is one flush interval of entries.

``BENCH_QUICK=1``: a smoke run (fewer users).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import redis as redis_sync

from benchmarks._harness import Row, console, print_table, quick
from devtools.servers import LocalRedis, LocalRedisCluster
from devtools.synthetic import SyntheticConfig, generate
from realtime import codec
from realtime.engine import SpeedLayer
from realtime.footprint import CAMPAIGN_KINDS, ORDER_KINDS, USER_KINDS, Classifier
from realtime.footprint import KINDS as FOOTPRINT_KINDS
from realtime.pacing import STATE_TTL_MS
from realtime.replay import replay
from shared_logic.contract import (
    decision_from_record,
    decision_record,
    parse_touch_member,
)
from shared_logic.rules import TouchKind, touch_retention_ms
from shared_logic.settings import KeySettings, Settings
from shared_logic.timeutil import MS_PER_DAY

KINDS = FOOTPRINT_KINDS
# A capped stream of one key whatever the traffic (``realtime.dead_letter_max_mib``): not spread
# by any layout, and left out of the busiest node's share.
FIXED_KINDS = ("dead letters",)


_CLASSIFIER = Classifier(KeySettings().prefix)


def kind_of(key: str) -> str:
    return _CLASSIFIER.kind_of(key)


@dataclass(frozen=True)
class Layout:
    """One layout under test: its settings, and the TTL each kind of key is written with in it."""

    name: str
    settings: Settings
    touch_retention: Callable[[TouchKind], int]  # ms a touch of each kind is kept after its arrival
    ttls: dict[str, int]  # kind -> TTL (ms) its keys are written with
    frequency_ttl: Callable[[str], int | None]  # a frequency-cap key's TTL (its campaign's window)
    records_v1: bool = False  # the records' encoding before issue 21 (``OldRecords``)


@dataclass
class Measured:
    keys: Counter[str] = field(default_factory=Counter)
    bytes: Counter[str] = field(default_factory=Counter)
    expired: int = 0
    node_keys: list[int] = field(default_factory=list)
    node_bytes: list[int] = field(default_factory=list)
    replay_s: float = 0.0


async def _replay(
    values: list[Any], traffic: Any, layout: Layout, lake: str
) -> tuple[list[tuple[int, int]], float]:
    """Replay, recording after each step of the engine (wall clock in ms, its release bound): every
    key that step wrote was written at or before that wall time, when orders released below that
    bound were decided. redis-server runs on this machine: the wall clock is its clock too."""
    settings = layout.settings.replace(lake_url=f"file://{lake}")
    points: list[tuple[int, int]] = []
    step = SpeedLayer._step

    async def recorded(self: SpeedLayer, now: int, published: Any, *args: Any) -> Any:
        out = await step(self, now, published, *args)
        points.append((int(time.time() * 1000), self.watermark))
        return out

    SpeedLayer._step = recorded  # type: ignore[method-assign]
    start = time.perf_counter()
    try:
        with OldRecords.decisions(layout.records_v1):
            await replay(values, traffic.catalog, settings, flush_ledger=True, show_progress=False)
    finally:
        SpeedLayer._step = step  # type: ignore[method-assign]
    return points, time.perf_counter() - start


class OldRecords:
    """The records' encoding before issue 21 (layout record version 1), kept here to measure it:
    a decision as a JSON object (names and values) in claims, queued settlements and the ledger
    stream, and a user's touch ids holding each whole member (not its score)."""

    @staticmethod
    @contextlib.contextmanager
    def decisions(active: bool) -> Iterator[None]:
        """While active, the speed layer writes and reads decisions as the earlier layout did."""
        if not active:
            yield
            return
        encode, decode = codec.encode_decision, codec.decode_decision
        codec.encode_decision = lambda d: orjson.dumps(decision_record(d))
        codec.decode_decision = lambda raw: decision_from_record(orjson.loads(raw))
        try:
            yield
        finally:
            codec.encode_decision, codec.decode_decision = encode, decode

    @staticmethod
    def touch_ids(r: redis_sync.Redis) -> None:
        """Rewrite every user's touch ids as the earlier layout held them (each field's value the
        whole member, not its score); their TTLs stay."""
        for key in r.scan_iter(count=2_000):
            name = key.decode()
            if kind_of(name) != "touch ids":
                continue
            members = r.zrange(name.replace(":ti:", ":t:", 1), 0, -1)
            by_id = {parse_touch_member(m.decode()).event_id: m for m in members}
            ids = r.hkeys(key)
            r.hset(key, mapping={f: by_id[f.decode()] for f in ids})


def _event_time(points: list[tuple[int, int]], walls: list[int], wall_ms: int) -> int:
    """The release bound of the step that wrote at wall time ``wall_ms``: the first step to end at
    or after it (bounds only grow)."""
    i = bisect.bisect_left(walls, wall_ms)
    return points[min(i, len(points) - 1)][1]


def _expire_in_event_time(
    r: redis_sync.Redis, layout: Layout, points: list[tuple[int, int]], end: int
) -> int:
    """Delete every key that would have expired by ``end`` (the traffic's last event time; the
    replay's drain moves the watermark past every event at the end); returns how many."""
    points = [(w, min(e, end)) for w, e in points]
    walls = [p[0] for p in points]
    doomed: list[bytes] = []
    keys = list(r.scan_iter(count=2_000))
    pipe = r.pipeline(transaction=False)
    for k in keys:
        pipe.pexpiretime(k)
    expiries = pipe.execute()
    touch_sets = [k for k in keys if kind_of(k.decode()) == "touches"]
    pipe = r.pipeline(transaction=False)
    for k in touch_sets:
        pipe.zrange(k, 0, -1)
    touch_expiry: dict[bytes, int] = {}
    for k, members in zip(touch_sets, pipe.execute(), strict=True):
        latest = 0
        for m in members:
            tm = parse_touch_member(m.decode())
            latest = max(latest, tm.arrival_wm + layout.touch_retention(tm.kind))
        touch_expiry[k] = latest
    for k, at in zip(keys, expiries, strict=True):
        name = k.decode()
        kind = kind_of(name)
        if kind in ("touches", "touch ids"):
            zkey = k if kind == "touches" else name.replace(":ti:", ":t:", 1).encode()
            if touch_expiry.get(zkey, 0) <= end:
                doomed.append(k)
            continue
        if at is None or at < 0:
            continue
        ttl = layout.ttls.get(kind)
        if kind == "frequency caps":  # each campaign's cap window plus the lateness
            ttl = layout.frequency_ttl(name)
        elif kind == "pacing" and ":pace-t:" in name:
            ttl = layout.ttls["pacing groups"]
        if ttl is None:
            raise RuntimeError(
                f"key {name!r} of kind {kind!r} has a TTL the layout {layout.name!r} does not name"
            )
        if _event_time(points, walls, at - ttl) + ttl <= end:
            doomed.append(k)
    for i in range(0, len(doomed), 1_000):
        r.delete(*doomed[i : i + 1_000])
    return len(doomed)


def _measure(r: redis_sync.Redis) -> tuple[Counter[str], Counter[str]]:
    keys: Counter[str] = Counter()
    size: Counter[str] = Counter()
    names = list(r.scan_iter(count=2_000))
    pipe = r.pipeline(transaction=False)
    for k in names:
        pipe.memory_usage(k)
    for k, n in zip(names, pipe.execute(), strict=True):
        kind = kind_of(k.decode())
        keys[kind] += 1
        size[kind] += int(n or 0)
    return keys, size


def _on_cluster(source: redis_sync.Redis, cluster: LocalRedisCluster) -> tuple[list[int], list[int]]:
    """Copy every key to a fresh 3-master cluster; each node's keys and bytes."""
    nodes = [redis_sync.Redis(port=n.port) for n in cluster.nodes]
    for n in nodes:
        n.flushall()
    rc = redis_sync.RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)
    names = list(source.scan_iter(count=2_000))
    pipe = source.pipeline(transaction=False)
    for k in names:
        pipe.dump(k)
    dumps = pipe.execute()
    cpipe = rc.pipeline()  # type: ignore[no-untyped-call]  # redis-py leaves RedisCluster.pipeline untyped
    for k, d in zip(names, dumps, strict=True):
        if d is not None:
            cpipe.restore(k, 0, d, replace=True)
    cpipe.execute()
    node_keys, node_bytes = [], []
    for n in nodes:
        ks, sz = _measure(n)
        node_keys.append(sum(v for k, v in ks.items() if k not in FIXED_KINDS))
        node_bytes.append(sum(v for k, v in sz.items() if k not in FIXED_KINDS))
        n.close()
    rc.close()
    return node_keys, node_bytes


def _run_layout(
    values: list[Any], traffic: Any, layout: Layout, cluster: LocalRedisCluster, end: int
) -> Measured:
    out = Measured()
    with LocalRedis() as server, tempfile.TemporaryDirectory() as lake:
        layout = replace(layout, settings=layout.settings.replace(redis_url=server.url))
        points, out.replay_s = asyncio.run(_replay(values, traffic, layout, lake))
        r = redis_sync.Redis.from_url(server.url)
        if layout.records_v1:
            OldRecords.touch_ids(r)
        out.expired = _expire_in_event_time(r, layout, points, end)
        out.keys, out.bytes = _measure(r)
        out.node_keys, out.node_bytes = _on_cluster(r, cluster)
        r.close()
    return out


def _layout(name: str, s: Settings, traffic: Any) -> Layout:
    retention = touch_retention_ms(
        s.rules.policy(), traffic.catalog, s.realtime.touch_retention == "per_kind"
    )
    ttl = s.decision_ttl_ms
    ttls = {"counters": s.realtime.counts_ttl_ms, "trim floors": max(retention.values())}
    ttls |= dict.fromkeys(("claims", "cancel markers", "charges", "spend", "stats"), ttl)
    # pacing: the controller's state (``STATE_TTL_MS``) and its touch groups (a day past the
    # longest window: ``Pacer._flush``) share a kind; both are measured apart below
    policy = s.rules.policy()
    windows = [policy.windows_for(c).longest_ms for c in traffic.catalog]
    ttls["invalid traffic"] = s.realtime.counts_ttl_ms
    ttls["pacing"] = STATE_TTL_MS
    ttls["pacing groups"] = MS_PER_DAY + max(windows, default=MS_PER_DAY)
    lateness = policy.allowed_lateness_ms
    caps = {
        c.campaign_id: c.frequency_cap.window_ms + lateness
        for c in traffic.catalog
        if c.frequency_cap is not None
    }

    def frequency_ttl(key: str) -> int | None:
        return caps.get(key.rsplit(":", 1)[-1])

    return Layout(name, s, retention.__getitem__, ttls, frequency_ttl)


def baseline_layout(settings: Settings, traffic: Any) -> Layout:
    """The layout before issue 21: every touch kept for the longest window plus lateness,
    claims, charges, spend and stats kept 35 days, one budget shard, decisions as JSON objects and
    touch ids holding whole members (``OldRecords``)."""
    before = _layout(
        "before",
        settings.replace(
            realtime_touch_retention="longest", realtime_decision_ttl_ms=35 * MS_PER_DAY, keys_budget_shards=1
        ),
        traffic,
    )
    return replace(before, records_v1=True)


def current_layout(settings: Settings, traffic: Any) -> Layout:
    """The layout of this code, with its default settings."""
    return _layout("after", settings, traffic)


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} TiB"  # pragma: no cover


def run() -> list[Row]:
    users, days = (600, 40) if quick() else (2_000, 40)
    # Ending before today: an event dated ahead of the processing clock is a dead letter.
    start = datetime.now(UTC).date() - timedelta(days=days + 1)
    config = SyntheticConfig(users=users, days=days, start=start, malformed_rate=0.001)
    traffic = generate(config)
    values = [e.payload for e in traffic.events]
    orders = sum(
        1
        for e in traffic.events
        if not e.malformed
        and not e.duplicate
        and isinstance(e.payload, dict)
        and e.payload.get("event_type") == "order"
    )
    orders_per_day = orders / days
    # A replay releases an order once every partition has passed it, so a partition with few events
    # (cancels) holds releases back: one partition per topic keeps that to hours of event time (a
    # worker live releases at the lateness: the wall clock moves idle partitions). Steps of 500
    # records date each write within a few hours. Both errors keep records a little longer than
    # live, in both layouts.
    base = Settings().replace(keys_user_buckets=64, realtime_topic_partitions=1, realtime_batch_size=500)
    layouts = [baseline_layout(base, traffic), current_layout(base, traffic)]
    console.print(
        f"[dim]memory: {len(values):,} events, {users:,} users over {days} days "
        f"({orders_per_day:,.0f} orders a day), each layout replayed on its own redis-server[/dim]"
    )
    results: dict[str, Measured] = {}
    with LocalRedisCluster() as cluster:
        for layout in layouts:
            results[layout.name] = _run_layout(values, traffic, layout, cluster, config.end_ms)
            m = results[layout.name]
            console.print(
                f"[dim]memory: {layout.name}: replayed in {m.replay_s:.1f}s, {m.expired:,} keys expired "
                f"in event time, {sum(m.keys.values()):,} keys left[/dim]"
            )
    before, after = results["before"], results["after"]
    rows: list[Row] = []
    for kind in KINDS:
        if before.bytes[kind] == 0 and after.bytes[kind] == 0:
            continue
        rows.append(
            Row(
                kind,
                after.bytes[kind] / 1024,
                before.bytes[kind] / 1024,
                unit="KiB",
                note=f"{after.keys[kind]:,} vs {before.keys[kind]:,} keys",
            )
        )

    def per(m: Measured, kinds: tuple[str, ...], n: float) -> float:
        return sum(m.bytes[k] for k in kinds) / n

    per_user = (per(after, USER_KINDS, users), per(before, USER_KINDS, users))
    per_order = (per(after, ORDER_KINDS, orders_per_day), per(before, ORDER_KINDS, orders_per_day))
    per_campaigns = (per(after, CAMPAIGN_KINDS, 1), per(before, CAMPAIGN_KINDS, 1))
    rows.append(Row("per active user", *per_user, unit="B", note=" + ".join(USER_KINDS)))
    rows.append(Row("per daily order", *per_order, unit="B", note="claims, charges, pending, queue, ledger"))
    rows.append(
        Row(
            "campaign-days",
            per_campaigns[0] / 1024,
            per_campaigns[1] / 1024,
            unit="KiB",
            note=f"{len(traffic.catalog)} campaigns: counters, spend, stats, budget events",
        )
    )
    for label, pick in (("busiest node: keys", "keys"), ("busiest node: memory", "bytes")):
        shares = []
        for m in (after, before):
            nodes = m.node_keys if pick == "keys" else m.node_bytes
            shares.append(100 * max(nodes) / max(sum(nodes), 1))
        rows.append(
            Row(label, shares[0], shares[1], unit="%", note="of 3 masters; dead letters (capped) left out")
        )
    print_table(
        f"Speed layer Redis memory at steady state ({users:,} users, {orders_per_day:,.0f} orders a day, "
        f"{days} days of event time)",
        rows,
        ours="after",
        baseline="before",
    )
    for n_users, n_orders in ((1_000_000, 100_000), (10_000_000, 1_000_000)):
        a = per_user[0] * n_users + per_order[0] * n_orders + per_campaigns[0]
        b = per_user[1] * n_users + per_order[1] * n_orders + per_campaigns[1]
        console.print(
            f"{n_users:>10,} active users, {n_orders:>9,} orders a day: after {_fmt_bytes(a)}, "
            f"before {_fmt_bytes(b)} ([bold]{b / a:.2f}x[/bold] less)"
        )
    console.print(
        "memory = users x bytes per active user + daily orders x bytes per daily order + the campaign-day "
        "records (these grow with campaigns and days kept, not users: measured here for this catalog). "
        "Redis's MEMORY USAGE of each key, dataset only: add Redis's own overhead and fragmentation"
    )
    return rows


if __name__ == "__main__":
    run()
