"""Redis lost under the speed layer, and ``attribution realtime rebuild`` (issue 19, item 3).

The speed layer's idempotence lives in Redis: charge records, first-writer-wins claims and
each partition's checkpoint. A worker that resumes on an emptied Redis (FLUSHALL, a failover
without persistence, a fresh server) has none of them, so the window the broker redelivers
(everything after the last committed offset, at least one commit window under
at-least-once) would be decided and charged again, and spend would restart at 0. These tests
run the replay driver (the same engine and Lua scripts a Kafka worker runs, on in-memory
channels): the first half of a day is processed, its ledger flushed and its raw events landed
(as the lake sink lands them); then Redis is emptied and rebuilt from the lake
(``realtime.rebuild``); then the rest is processed from a redelivered window on. The result must
equal a run that kept its Redis: the same ledger, spend and decisions, no order charged twice, no
cap passed; on a single Redis and on a Redis Cluster.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from devtools.synthetic import SyntheticConfig, generate
from realtime.client import connect
from realtime.rebuild import RebuildReport, rebuild
from realtime.replay import REPLAY_PREFIX, replay
from shared_logic import Catalog
from shared_logic.contract import REALTIME_LEDGER
from shared_logic.settings import Settings
from storage import open_lake, partition
from storage.raw import land
from tests.helpers import flush, redis_snapshot

pytestmark = [pytest.mark.integration]

CONFIG = SyntheticConfig(users=1500, days=1, cancel_rate=0.1, duplicate_rate=0.0, malformed_rate=0.0)
#: Events the broker redelivers to the resumed worker (after its last committed offset).
REDELIVERED = 1500


def _ledger(folder: Path) -> list[dict[str, Any]]:
    """The lake's flushed realtime ledger, without the stream ids (which differ between runs)."""
    lake = open_lake(f"file://{folder}")
    refs = [partition(REALTIME_LEDGER, **v) for v in lake.partitions(REALTIME_LEDGER.path)]
    return [{k: v for k, v in r.items() if k != "stream_id"} for r in lake.read(refs).to_pylist()]


def _charges(folder: Path) -> Counter[str]:
    """Charge lines per order in the lake's flushed realtime ledger."""
    return Counter(r["order_id"] for r in _ledger(folder) if r["kind"] == "charge")


def _two_runs(
    folder: Path, redis_url: str, lose_redis: bool, rebuild_it: bool = False
) -> tuple[Counter[str], Catalog, RebuildReport | None]:
    """The first part of the stream processed, its ledger flushed and its raw events landed; then
    (``lose_redis``) Redis emptied, and (``rebuild_it``) rebuilt from the lake; then the rest, from
    a redelivered window on, processed and flushed."""
    traffic = generate(CONFIG)
    values: list[Any] = [e.payload for e in traffic.events]
    arrivals = [e.arrival_ms for e in traffic.events]
    settings = Settings().replace(redis_url=redis_url, lake_url=f"file://{folder}")
    cut = len(values) // 2
    report: RebuildReport | None = None

    async def go() -> None:
        nonlocal report
        await replay(values[:cut], traffic.catalog, settings, True, False, arrivals=arrivals[:cut])
        lake = open_lake(settings.lake.url)
        land(lake, zip(values[:cut], arrivals[:cut], strict=True), "first-half")
        if lose_redis:
            flush(redis_url)
        if rebuild_it:
            redis = connect(settings.redis)
            try:
                report = await rebuild(settings, traffic.catalog, lake, redis, prefix=REPLAY_PREFIX)
            finally:
                await redis.aclose()
        rest = slice(cut - REDELIVERED, None)
        await replay(values[rest], traffic.catalog, settings, True, False, arrivals=arrivals[rest])

    asyncio.run(go())
    return _charges(folder), traffic.catalog, report


def _state(redis_url: str) -> dict[str, Any]:
    """Spend (lifetime and per budget day) and claims (decisions) in Redis."""
    spend = asyncio.run(redis_snapshot(redis_url, match="attr:*:spend:*"))
    claims = asyncio.run(redis_snapshot(redis_url, match="attr:*:d:*"))
    return {"spend": spend, "claims": claims}


def test_with_redis_kept_a_redelivered_window_charges_no_order_twice(redis_url: str, tmp_path: Path) -> None:
    charges, _, _ = _two_runs(tmp_path, redis_url, lose_redis=False)
    assert sum(charges.values()) > 20
    assert max(charges.values()) == 1


def test_after_flushall_without_a_rebuild_a_redelivered_window_charges_orders_twice(
    redis_url: str, tmp_path: Path
) -> None:
    """What the rebuild is for: without it, the redelivered window's orders are charged again."""
    charges, _, _ = _two_runs(tmp_path, redis_url, lose_redis=True)
    assert max(charges.values()) == 2


def test_after_flushall_and_a_rebuild_the_run_equals_one_that_kept_redis(
    speed_redis_url: str, tmp_path: Path
) -> None:
    kept_charges, catalog, _ = _two_runs(tmp_path / "kept", speed_redis_url, lose_redis=False)
    kept_ledger, kept_state = _ledger(tmp_path / "kept"), _state(speed_redis_url)
    flush(speed_redis_url)
    charges, _, report = _two_runs(tmp_path / "lost", speed_redis_url, lose_redis=True, rebuild_it=True)
    assert report is not None
    assert report.restored["charge_records"] > 20
    assert report.restored["claims"] > 20
    assert report.restored["lifetime_spend"] > 0
    assert report.restored["events_refed"] > 0
    assert sum(charges.values()) > 20
    twice = sorted(o for o, n in charges.items() if n > 1)
    assert not twice, f"{len(twice)} orders charged twice, e.g. {twice[:5]}"
    assert charges == kept_charges

    def key(r: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(sorted((k, str(v)) for k, v in r.items()))

    assert sorted(_ledger(tmp_path / "lost"), key=key) == sorted(kept_ledger, key=key)
    state = _state(speed_redis_url)
    assert state["spend"] == kept_state["spend"]
    assert state["claims"] == kept_state["claims"]
    # No cap passed: every campaign's spend within its caps.
    for k, v in state["spend"].items():
        cid = k.split(":spend:", 1)[1].split(":")[0]
        budget = catalog.get(cid).budget  # type: ignore[union-attr]
        cap = budget.lifetime_minor if k.endswith(":life") else budget.daily_minor
        assert cap is None or int(v) <= cap, (k, v, cap)


BROKER_TRAFFIC = SyntheticConfig(
    users=400, days=3, cancel_rate=0.1, duplicate_rate=0.0, malformed_rate=0.0, seed=41
)


def _sink_landed(lake: Any, group: str) -> int:
    """Records the lake sink has landed (the offsets its progress files record)."""
    import json

    folder = Path(lake.path(f"raw/_sink/{group}/progress"))
    return sum(json.loads(f.read_text())["offset"] for f in folder.glob("*.json")) if folder.exists() else 0


def _on_the_broker(
    broker: Any, url: str, folder: Path
) -> tuple[list[dict[str, Any]], dict[str, Any], Catalog, RebuildReport, int]:
    """A day on the broker; the lake sink lands all of it while a Kafka worker consumes it, and the
    worker is stopped mid-stream; its ledger is flushed; Redis is emptied and rebuilt from the lake;
    a new worker of the group resumes and drains the rest. Returns the lake's ledger, Redis's spend
    and claims, the catalog, the rebuild's report and how many records the first worker took."""
    import time

    from devtools.traffic import produce
    from realtime.kafka import KafkaWorker
    from realtime.keys import Keys
    from realtime.lakesink import LakeSink
    from realtime.ledger import LedgerFlusher
    from tests.integration.test_kafka import _drain_backlog, _ends, _settings, _total

    traffic = generate(BROKER_TRAFFIC)
    values: list[Any] = [e.payload for e in traffic.events]
    settings = _settings(broker, url).replace(
        lake_url=f"file://{folder}", sink_roll_age_s=0.3, sink_marker_interval_s=0.3, realtime_batch_size=100
    )
    lake = open_lake(settings.lake.url)
    group = f"{settings.realtime.app_id}-{settings.sink.group_suffix}"

    async def flush_ledger() -> None:
        redis = connect(settings.redis)
        try:
            await LedgerFlusher(redis, Keys.of(settings.keys), lake).flush()
        finally:
            await redis.aclose()

    async def go() -> tuple[RebuildReport, int]:
        # Stamped with their arrivals: the lake keeps them (``ingested_at_ms``) as the re-feed's order.
        await produce(values, settings.realtime, timestamps=[e.arrival_ms for e in traffic.events])
        sink = LakeSink(settings, lake)
        await sink.start()
        landing = asyncio.create_task(sink.run())
        worker = KafkaWorker(settings, traffic.catalog)
        await worker.start()
        consuming = asyncio.create_task(worker.run())
        deadline = time.monotonic() + 120
        # Stopped once it has charged orders: mid-stream (partitions lagging) when its fetches
        # interleave the partitions, at the end of the backlog when a fetch brought whole partitions.
        while worker.engine is None or _total(worker.engine, "attribution_charges_total") < 10:
            assert time.monotonic() < deadline, f"the worker took {worker.processed} of {len(values)}"
            await asyncio.sleep(0.01)
        worker.stop()
        await consuming
        taken = worker.processed
        while _sink_landed(lake, group) < len(values):
            assert time.monotonic() < deadline, (
                f"the sink landed {_sink_landed(lake, group)} of {len(values)}"
            )
            assert not landing.done(), landing
            await asyncio.sleep(0.2)
        sink.stop()
        await landing
        await flush_ledger()
        flush(url)
        redis = connect(settings.redis)
        try:
            report = await rebuild(settings, traffic.catalog, lake, redis)
        finally:
            await redis.aclose()
        await _drain_backlog(settings, traffic, values, produced=_ends(values, settings))
        await flush_ledger()
        return report, taken

    report, taken = asyncio.run(go())
    return _ledger(folder), _state(url), traffic.catalog, report, taken


@pytest.mark.slow
def test_on_the_broker_a_worker_resumed_after_a_rebuild_equals_an_uninterrupted_replay(
    broker: Any, speed_redis_url: str, tmp_path: Path
) -> None:
    """The Kafka worker on the broker and the lake sink landing the same topics: the worker stopped
    mid-stream, Redis emptied and rebuilt from the lake, a new worker resumes at the checkpoints the
    rebuild wrote (the sink's landed offsets). The end equals an uninterrupted replay of the same
    events: the same ledger, spend and claims; no order charged twice, no cap passed."""
    ledger, state, catalog, report, taken = _on_the_broker(broker, speed_redis_url, tmp_path / "lost")
    assert taken > 0  # mid-stream when the worker charged before the end of its backlog
    assert report.restored["checkpoints"] > 0
    assert report.missing["checkpoints_without_sink_offset"] == 0
    assert report.restored["charge_records"] > 5, report.as_json()
    charges = Counter(r["order_id"] for r in ledger if r["kind"] == "charge")
    assert sum(charges.values()) > 20
    assert max(charges.values()) == 1
    flush(speed_redis_url)
    traffic = generate(BROKER_TRAFFIC)
    settings = Settings().replace(redis_url=speed_redis_url, lake_url=f"file://{tmp_path / 'replay'}")
    values, arrivals = [e.payload for e in traffic.events], [e.arrival_ms for e in traffic.events]
    asyncio.run(replay(values, traffic.catalog, settings, True, False, arrivals=arrivals))

    def key(r: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(sorted((k, str(v)) for k, v in r.items()))

    assert sorted(ledger, key=key) == sorted(_ledger(tmp_path / "replay"), key=key)
    assert state == _state(speed_redis_url)
    for k, v in state["spend"].items():
        cid = k.split(":spend:", 1)[1].split(":")[0]
        budget = catalog.get(cid).budget  # type: ignore[union-attr]
        cap = budget.lifetime_minor if k.endswith(":life") else budget.daily_minor
        assert cap is None or int(v) <= cap, (k, v, cap)


def test_the_command_prints_its_report_writes_metrics_and_refuses_a_redis_not_empty(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import re

    import yaml
    from typer.testing import CliRunner

    from cli import app

    traffic = generate(SyntheticConfig(users=300, days=1, duplicate_rate=0.0, malformed_rate=0.0, seed=3))
    values, arrivals = [e.payload for e in traffic.events], [e.arrival_ms for e in traffic.events]
    settings = Settings().replace(redis_url=redis_url, lake_url=f"file://{tmp_path}/lake")
    asyncio.run(replay(values, traffic.catalog, settings, True, False, arrivals=arrivals))
    land(open_lake(settings.lake.url), zip(values, arrivals, strict=True), "backfill")
    # Orders charged or stopped by a cancel: each one charge record.
    charged = len({r["order_id"] for r in _ledger(tmp_path / "lake") if r["kind"] in ("charge", "cancelled")})
    assert charged > 0
    flush(redis_url)
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(yaml.safe_dump({"campaigns": traffic.catalog.to_records()}))
    monkeypatch.setenv("ATTRIBUTION_CATALOG_URL", str(catalog))
    monkeypatch.setenv("ATTRIBUTION_LAKE_URL", settings.lake.url)
    monkeypatch.setenv("ATTRIBUTION_REDIS_URL", redis_url)
    metrics = tmp_path / "rebuild.prom"
    args = ["realtime", "rebuild", "--for-replay", "--metrics-file", str(metrics)]
    done = CliRunner().invoke(app, args, terminal_width=200)
    assert done.exit_code == 0, done.output
    assert re.search(rf"charge records\s*│\s*{charged}\b", done.output), done.output
    assert "could not restore" in done.output
    assert f'attribution_rebuild_restored{{kind="charge_records"}} {float(charged)}' in metrics.read_text()
    again = CliRunner().invoke(app, args, terminal_width=200)
    assert again.exit_code == 2
    assert "--redis-url" in again.output
    assert "holds keys under the prefix 'attr'" in again.output
