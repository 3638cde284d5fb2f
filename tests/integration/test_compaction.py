"""Compaction of the lake's raw hours (``storage.compact``, ``attribution lake compact``).

A lake is landed the way the sink lands it: many small files per hour (one per range of
arrivals). Compaction must keep every row, drop the file count, leave the nightly job's result
unchanged, be idempotent, keep files landed later and a sink's re-rolled range exactly once,
and leave the day readable (the same rows) when it dies at any step.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from batch.job import run_day
from devtools.servers import free_port
from devtools.synthetic import SyntheticConfig, Traffic, generate
from shared_logic.settings import S3Settings, Settings
from storage import Lake, open_lake, partition
from storage.compact import compact_day, compact_partition, day_partitions
from storage.lake import visible_files
from storage.raw import land, mark_days_landed, read_raw

pytestmark = [pytest.mark.integration]

CONFIG = SyntheticConfig(users=200, days=2, cancel_rate=0.15, duplicate_rate=0.02, malformed_rate=0.01)
DAY = CONFIG.start
#: Topic-partitions and ranges of arrivals landed apart, as a sink's rolls are: many small files per hour.
PARTITIONS, ROLLS = 6, 3


@pytest.fixture(scope="module")
def traffic() -> Traffic:
    return generate(CONFIG)


def _deliveries(traffic: Traffic) -> list[tuple[Any, int]]:
    return sorted(((e.payload, e.arrival_ms) for e in traffic.events), key=lambda d: d[1])


def _rolls(traffic: Traffic) -> list[tuple[str, list[tuple[Any, int]]]]:
    """The deliveries as a sink with ``PARTITIONS`` topic-partitions rolls them: each partition's
    records in ``ROLLS`` ranges, each range one file per hour it spans."""
    deliveries = _deliveries(traffic)
    out = []
    for p in range(PARTITIONS):
        mine = deliveries[p::PARTITIONS]
        size = len(mine) // ROLLS + 1
        out += [(f"events-p{p}-{r:04d}", mine[r * size : (r + 1) * size]) for r in range(ROLLS)]
    return out


def _land_like_the_sink(folder: Path, traffic: Traffic) -> Lake:
    lake = open_lake(f"file://{folder}")
    days: set[str] = set()
    for name, rows in _rolls(traffic):
        days |= land(lake, rows, name).days
    mark_days_landed(lake, days, {"by": "test"})
    return lake


def _rows(lake: Lake, day: date = DAY) -> Counter[str]:
    """The day's raw rows as a multiset."""
    return Counter(json.dumps(r, sort_keys=True) for r in read_raw(lake, day, day).to_pylist())


def _visible(lake: Lake, day: date = DAY) -> int:
    return sum(len(lake.files(ref)) for ref in day_partitions(lake, day))


def _on_disk(lake: Lake, day: date = DAY) -> int:
    return sum(len(lake.list_parquet(ref)) for ref in day_partitions(lake, day))


def test_compaction_keeps_every_row_drops_the_files_and_is_idempotent(
    traffic: Traffic, tmp_path: Path
) -> None:
    lake = _land_like_the_sink(tmp_path / "lake", traffic)
    before, files_before = _rows(lake), _visible(lake)
    next_day = DAY + timedelta(days=1)
    next_before, next_files = _rows(lake, next_day), _visible(lake, next_day)
    dead_before = lake.read([partition("dead_letters", dt=DAY.isoformat())]).num_rows
    assert sum(before.values()) > 500
    assert dead_before > 0
    assert files_before > 2 * len(day_partitions(lake, DAY))  # several files per hour to start with

    done = compact_day(lake, DAY, grace_s=0)
    assert _rows(lake) == before
    assert lake.read([partition("dead_letters", dt=DAY.isoformat())]).num_rows == dead_before
    assert _visible(lake) == sum(c.files_after for c in done) == len(day_partitions(lake, DAY))
    assert _on_disk(lake) == _visible(lake)  # grace 0: the replaced files are gone
    assert any(not c.skipped for c in done)
    assert (_rows(lake, next_day), _visible(lake, next_day)) == (next_before, next_files)  # untouched

    files = {ref.path: lake.files(ref) for ref in day_partitions(lake, DAY)}
    again = compact_day(lake, DAY, grace_s=0)
    assert all(c.skipped for c in again)
    assert {ref.path: lake.files(ref) for ref in day_partitions(lake, DAY)} == files
    assert _rows(lake) == before


def test_files_landed_later_stay_visible_and_a_rerolled_range_stays_once(
    traffic: Traffic, tmp_path: Path
) -> None:
    lake = _land_like_the_sink(tmp_path / "lake", traffic)
    before = _rows(lake)
    compact_day(lake, DAY, grace_s=0)
    # The sink re-rolls a range it had landed before compaction (a crash before its commit):
    # the same name, the same rows. They are compacted already: the rewrite stays hidden.
    name, rows = _rolls(traffic)[0]
    land(lake, rows, name)
    assert _rows(lake) == before
    # A late event landed after compaction, in a new file: visible at once, and compacted next.
    clicks = [
        e.payload
        for e in traffic.events
        if isinstance(e.payload, dict) and e.payload["event_type"] == "click"
    ]
    late = dict(next(c for c in clicks if c["event_time"] < CONFIG.start_ms + 86_400_000))
    late["event_id"] = "late-click-1"
    land(lake, [(late, late["event_time"] + 1000)], "events-p1-late")
    after = _rows(lake)
    assert sum(after.values()) == sum(before.values()) + 1
    assert sum("late-click-1" in r for r in after) == 1
    done = compact_day(lake, DAY, grace_s=0)
    assert sum(not c.skipped for c in done) == 1  # only the hour that gained a file
    assert _rows(lake) == after


def test_a_reader_sees_the_old_files_or_the_new_never_both_nor_neither(
    traffic: Traffic, tmp_path: Path
) -> None:
    lake = _land_like_the_sink(tmp_path / "lake", traffic)
    ref = max(day_partitions(lake, DAY)[:-1], key=lambda r: len(lake.files(r)))
    old_manifest, old_files = lake.manifest(ref), lake.files(ref)
    result = compact_partition(lake, ref)  # the default grace: replaced files stay a while
    new_files = lake.files(ref)
    assert not set(old_files) & set(new_files)
    assert len(new_files) == result.files_after == 1
    listing = lake.list_parquet(ref)
    assert len(listing) == len(old_files) + 1
    # A reader that read the manifest before the commit and lists after it: the old files, all there.
    assert [f"{ref.path}/{n}" for n in visible_files(listing, old_manifest)] == old_files
    # One that reads the manifest after the commit: the new file only.
    assert [f"{ref.path}/{n}" for n in visible_files(listing, lake.manifest(ref))] == new_files
    # A later run past the grace deletes the replaced files and changes nothing a reader sees.
    compact_partition(lake, ref, grace_s=0)
    assert lake.list_parquet(ref) == [n.rsplit("/", 1)[1] for n in new_files]


@pytest.mark.parametrize("step", ["write", "commit", "delete"])
def test_a_crash_mid_compaction_leaves_the_day_readable(
    traffic: Traffic, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    lake = _land_like_the_sink(tmp_path / "lake", traffic)
    before, files_before = _rows(lake), _visible(lake)

    class Crash(Exception):
        pass

    calls = {"n": 0}

    def crash(*args: Any, **kwargs: Any) -> None:
        raise Crash(step)

    if step == "write":  # dies inside its second output file's writing
        import pyarrow.parquet as pq

        real = pq.ParquetWriter.write_table

        def write_then_crash(self: Any, table: Any, *args: Any, **kwargs: Any) -> None:
            calls["n"] += 1
            real(self, table, *args, **kwargs)
            if calls["n"] == 2:
                raise Crash(step)

        monkeypatch.setattr(pq.ParquetWriter, "write_table", write_then_crash)
        target = 0.001  # tiny files: several outputs per hour
    else:
        monkeypatch.setattr(type(lake), "write_marker" if step == "commit" else "_delete", crash)
        target = 128.0
    with pytest.raises(Crash):
        compact_day(lake, DAY, target_mib=target, grace_s=0)
    monkeypatch.undo()
    assert _rows(lake) == before  # the old files, or (after the commit) the new ones
    if step != "delete":
        assert _visible(lake) == files_before
    # The next run finishes the work and removes what the dead one left.
    compact_day(lake, DAY, grace_s=0)
    assert _rows(lake) == before
    assert _on_disk(lake) == _visible(lake) < files_before


@pytest.mark.slow
def test_the_cli_compacts_and_the_nightly_job_is_unchanged(
    traffic: Traffic, tmp_path: Path, spark: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cli import app

    plain = _land_like_the_sink(tmp_path / "plain", traffic)
    shutil.copytree(tmp_path / "plain", tmp_path / "compacted")
    compacted = open_lake(f"file://{tmp_path / 'compacted'}")
    monkeypatch.setenv("ATTRIBUTION_LAKE_URL", compacted.url)
    end = DAY + timedelta(days=1)
    app(args=["lake", "compact", "--day", DAY.isoformat(), "--end", end.isoformat(), "--grace-s", "0"],
        standalone_mode=False)  # fmt: skip
    assert _visible(compacted) < _visible(plain)
    assert _visible(compacted, end) < _visible(plain, end)
    for lake in (plain, compacted):
        run_day(spark, lake, traffic.catalog, DAY, Settings())
    for dataset in ("batch_ledger", "metrics/campaign_daily", "settlement_state"):
        ref = partition(dataset, dt=DAY.isoformat())
        got = sorted(json.dumps(r, sort_keys=True) for r in compacted.read([ref]).to_pylist())
        want = sorted(json.dumps(r, sort_keys=True) for r in plain.read([ref]).to_pylist())
        assert got == want, dataset
    assert plain.read([partition("batch_ledger", dt=DAY.isoformat())]).num_rows > 5


@pytest.fixture(scope="module")
def s3_lake(traffic: Traffic) -> Iterator[Lake]:
    """The sink-landed lake on an S3-compatible endpoint (moto's server on loopback)."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        s3 = S3Settings(endpoint_url=f"http://127.0.0.1:{port}", access_key="test", secret_key="test")
        boto3.client(
            "s3", endpoint_url=s3.endpoint_url, aws_access_key_id="test", aws_secret_access_key="test",
            region_name="us-east-1",
        ).create_bucket(Bucket="lake")  # fmt: skip
        lake = open_lake("s3://lake/prod", s3)
        day_end = CONFIG.start_ms + 86_400_000
        for name, rows in _rolls(traffic)[: ROLLS * 3]:  # three partitions' rolls of the first day
            land(lake, [r for r in rows if r[1] < day_end], name)
        mark_days_landed(lake, [DAY.isoformat()], {"by": "test"})
        yield lake
    finally:
        server.stop()


def test_compaction_on_s3_keeps_every_row(s3_lake: Lake) -> None:
    before, files_before = _rows(s3_lake), _visible(s3_lake)
    assert files_before > 2 * len(day_partitions(s3_lake, DAY))
    compact_day(s3_lake, DAY, grace_s=0)
    assert _rows(s3_lake) == before
    assert _visible(s3_lake) == _on_disk(s3_lake) == len(day_partitions(s3_lake, DAY))
    assert all(c.skipped for c in compact_day(s3_lake, DAY, grace_s=0))
