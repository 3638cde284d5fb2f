"""Compaction: reading a sink-landed day before and after ``attribution lake compact``.

A day of traffic is landed the way the lake sink lands it: ``PARTITIONS`` topic-partitions,
each rolled every ``ROLL`` records, one file per roll per event hour (and type). The day is
then read as the nightly job reads it (the committed files of every raw hour, through Spark,
counted) and as the replay reads it (``storage.raw.read_raw``, pyarrow), best of three each;
then compacted (timed) and read again. The baseline is the uncompacted day; the ratio is
how many times faster the compacted read is. ``BENCH_QUICK=1`` shrinks the day.
"""

from __future__ import annotations

import tempfile
import time

from batch.job import TOUCH_AND_ORDER_TYPES, _raw_refs, _read_raw
from batch.spark import spark_session
from benchmarks._harness import Row, best_of, console, print_table, quick
from devtools.synthetic import SyntheticConfig, generate
from shared_logic.settings import Settings, SparkSettings
from storage import Lake, open_lake
from storage.compact import compact_day, day_partitions
from storage.raw import land, mark_days_landed, read_raw

PARTITIONS = 12
ROLL = 40  # records per roll: what a sink at its age limit lands on a quiet partition


def _land(lake: Lake, users: int) -> int:
    config = SyntheticConfig(users=users, days=1)
    traffic = generate(config)
    deliveries = sorted(((e.payload, e.arrival_ms) for e in traffic.events), key=lambda d: d[1])
    days: set[str] = set()
    for p in range(PARTITIONS):
        mine = deliveries[p::PARTITIONS]
        for start in range(0, len(mine), ROLL):
            days |= land(
                lake, mine[start : start + ROLL], f"events-p{p}-{start:08d}-{start + ROLL - 1:08d}"
            ).days
    mark_days_landed(lake, days, {"by": "benchmark"})
    return len(deliveries)


def run() -> None:
    users = 1_500 if quick() else 20_000
    with tempfile.TemporaryDirectory(prefix="bench-compaction-") as folder:
        lake = open_lake(f"file://{folder}/lake")
        started = time.perf_counter()
        events = _land(lake, users)
        day = SyntheticConfig().start
        console.print(f"landed {events:,} events in {time.perf_counter() - started:.1f}s")
        spark = spark_session(SparkSettings(shuffle_partitions=4), "bench-compaction")
        max_future = Settings().rules.max_future_ms

        def spark_read() -> int:
            refs = _raw_refs(lake, day, day, (*TOUCH_AND_ORDER_TYPES, "order_cancel"))
            return int(_read_raw(spark, lake, refs, max_future).count())

        def arrow_read() -> int:
            return int(read_raw(lake, day, day).num_rows)

        def files() -> int:
            return sum(len(lake.files(ref)) for ref in day_partitions(lake, day))

        spark_read()  # the JVM's first job pays for class loading: not the layout's cost
        files_before = files()
        spark_before, rows_before = best_of(spark_read)
        arrow_before, arrow_rows_before = best_of(arrow_read)
        started = time.perf_counter()
        done = compact_day(lake, day, grace_s=0)
        compact_s = time.perf_counter() - started
        files_after = files()
        spark_after, rows_after = best_of(spark_read)
        arrow_after, arrow_rows_after = best_of(arrow_read)
        spark.stop()
        if (rows_before, arrow_rows_before) != (rows_after, arrow_rows_after):
            raise RuntimeError(f"compaction changed the rows: {rows_before} -> {rows_after}")
        print_table(
            f"compaction of a sink-landed day ({events:,} events, {PARTITIONS} partitions, rolls of {ROLL})",
            [
                Row("files of the day", files_after, files_before, "files", f"{len(done)} partitions"),
                Row(
                    "nightly job's read (Spark, count)",
                    spark_after,
                    spark_before,
                    "s",
                    f"{rows_after:,} rows",
                ),
                Row("replay's read (pyarrow)", arrow_after, arrow_before, "s", f"{arrow_rows_after:,} rows"),
                Row("compaction itself", compact_s, float("nan"), "s", "once, grace 0"),
            ],
            ours="compacted",
            baseline="as landed",
        )
