"""The nightly job on 1M, 3M and 10M generated events, against one Python process.

For each size a lake of a week of traffic is built in blocks (so the generator
never holds all events), then the nightly job runs for the last day with every
model: it settles the whole history (lifetime caps), decides and credits the
day. Wall time and peak memory (the driver, the JVM and Spark's Python workers
together, sampled) are printed per size; the baseline is the same rules run by
one Python process (pandas, no Spark) on the 1M lake, in the same run.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
import time
from datetime import date, timedelta
from typing import Any

import psutil

from batch.job import run_day
from batch.lake import Lake
from batch.raw import land_events, read_raw
from batch.settings import BatchSettings
from batch.spark import spark_session
from benchmarks._harness import Row, console, print_table, quick
from shared_logic.synthetic import SyntheticConfig, generate

EVENTS_PER_USER_WEEK = 27  # measured mean of the default config over 7 days
DAYS = 7


class PeakMemory:
    """Samples the RSS of this process and all its children every 0.2 s."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):  # a worker may exit between listing and reading
                    total += p.memory_info().rss
            self.peak = max(self.peak, total)
            time.sleep(0.2)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def build_lake(root: str, events: int) -> tuple[Lake, Any, int]:
    lake = Lake(f"file://{root}")
    users_total = events // EVENTS_PER_USER_WEEK
    block_users = 40_000
    landed = 0
    catalog = None
    for b, start in enumerate(range(0, users_total, block_users)):
        cfg = SyntheticConfig(
            users=min(block_users, users_total - start),
            days=DAYS,
            seed=100 + b,
            catalog_seed=1,
            user_prefix=f"b{b}u",
            malformed_rate=0.0,
            duplicate_rate=0.0,
        )
        traffic = generate(cfg)
        catalog = traffic.catalog
        landed += land_events(
            lake, ((e.payload, e.arrival_ms) for e in traffic.events), append_as=f"block{b}"
        ).accepted
        console.print(f"[dim]  batch bench: landed block {b} ({landed:,} events)[/dim]")
    return lake, catalog, landed


def single_process(lake: Lake, catalog: Any, day: date) -> float:
    """The same rules in one Python process: decide every order, settle, fit and credit the day."""
    import pandas as pd

    from attribution_models import Journey, TouchPoint, get_model, paths_from_columns
    from batch.journeys import decide_partitions, settle_campaign
    from batch.settings import DEFAULT_MODELS
    from shared_logic import AttributionPolicy

    start = time.perf_counter()
    policy = AttributionPolicy()
    table = read_raw(lake, day - timedelta(days=DAYS), day)
    frame = table.to_pandas()
    frame = frame[frame.event_type != "order_cancel"].sort_values(["user_id", "event_time", "event_id"])
    day_start = int(pd.Timestamp(day, tz="UTC").timestamp() * 1000)
    decisions = pd.concat(
        decide_partitions(iter([frame]), catalog, policy, day_start, day_start + 86_400_000)
    )
    orders = decisions[(decisions.kind == "order") & decisions.campaign_id.notna()]
    actions = orders.assign(action="decide", due_ms=orders.order_time_ms + policy.allowed_lateness_ms)
    for _, group in actions.groupby("campaign_id"):
        settle_campaign(group, catalog)
    day_rows = decisions[decisions.in_day & (decisions.path_channels.map(len) > 0)]
    paths = day_rows.assign(path=day_rows.path_channels.map(" > ".join))
    agg = paths.groupby("path").agg(
        c=("kind", lambda k: (k == "order").sum()), n=("kind", lambda k: (k == "null").sum())
    )
    aggregates = paths_from_columns(agg.index.tolist(), agg.c.to_numpy(), None, agg.n.to_numpy())
    models = [get_model(m) for m in DEFAULT_MODELS]
    for m in models:
        if m.data_driven:
            m.fit(aggregates)
    for r in day_rows[day_rows.kind == "order"].itertuples():
        j = Journey(
            tuple(TouchPoint(c, int(t)) for c, t in zip(r.path_channels, r.path_times, strict=True)),
            True,
            float(r.amount_minor),
            int(r.order_time_ms),
        )
        for m in models:
            m.touch_credits(j)
    return time.perf_counter() - start


def run() -> list[Row]:
    sizes = [200_000, 400_000] if quick() else [1_000_000, 3_000_000, 10_000_000]
    day = date(2026, 11, 1) + timedelta(days=DAYS - 1)
    spark = spark_session("attribution-bench")
    rows: list[Row] = []
    baseline_s = None
    curve = []
    for size in sizes:
        root = tempfile.mkdtemp(prefix="attribution-bench-lake-")
        try:
            console.print(f"[dim]batch: building a lake of {size:,} events[/dim]")
            lake, catalog, landed = build_lake(root, size)
            with PeakMemory() as mem:
                started = time.perf_counter()
                result = run_day(spark, lake, catalog, day, BatchSettings())
                seconds = time.perf_counter() - started
            curve.append((landed, seconds, mem.peak / 2**20))
            console.print(
                f"batch: {landed:,} events -> {seconds:.1f}s, peak {mem.peak / 2**20:,.0f} MiB, "
                f"{result.orders:,} orders on {result.day}"
            )
            if baseline_s is None:
                with PeakMemory() as base_mem:
                    baseline_s = single_process(lake, catalog, day)
                rows.append(
                    Row(
                        f"{landed:,} events, one day, all models",
                        seconds,
                        baseline_s,
                        note=f"peak {mem.peak / 2**20:,.0f} MiB vs {base_mem.peak / 2**20:,.0f} MiB",
                    )
                )
            else:
                rows.append(
                    Row(
                        f"{landed:,} events, one day, all models",
                        seconds,
                        float("nan"),
                        note=f"peak {mem.peak / 2**20:,.0f} MiB; {seconds / curve[0][1]:.2f}x the "
                        f"time of {curve[0][0]:,} for {landed / curve[0][0]:.1f}x the events",
                    )
                )
        finally:
            shutil.rmtree(root, ignore_errors=True)
    print_table(
        "Nightly job on local[2]: Spark vs one Python process (1M only)",
        rows,
        ours="Spark local[2]",
        baseline="one process",
    )
    for n, s, mb in curve:
        console.print(f"  curve: {n:>12,} events  {s:8.1f} s  {n / s:>10,.0f} events/s  peak {mb:,.0f} MiB")
    return rows


if __name__ == "__main__":
    run()
