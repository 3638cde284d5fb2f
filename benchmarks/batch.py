"""The nightly job: its cost against the lake's age, and on 1M, 3M and 10M events.

Age (``ratio``): a lake of 60 + cancel-horizon days of equal daily volume (about
5,400 events a day, as in the issue that introduced checkpoints) is landed in
blocks; checkpoints are built for days 8 and 52 from scratch, the nightly run
for day 60 with its refresh (days 53..60 from checkpoints) is timed, then the
jobs for day 9 and day 60 run side by side (alternately, best of two each) and
the ratio is printed (target: at most 1.2). Beside them: day 60 from scratch
(what every night cost before checkpoints, and what a rerun of one day cost),
a rerun of day 59 now (one night, plus the later days it makes stale: none
when its state does not change), and the checkpoint's size per campaign.

Size (``sizes``): for each size a lake of a week of traffic is built in blocks
(so the generator never holds all events), then the nightly job runs for the
last day with every model; a fresh lake has no checkpoint, so it settles the
whole history (lifetime caps), decides and credits the day. Wall time and peak
memory (the driver, the JVM and Spark's Python workers together, sampled) are
printed per size; the baseline is the same rules run by one Python process
(pandas, no Spark) on the 1M lake, in the same run.

``BENCH_BATCH=ratio`` or ``sizes`` runs one part (default: both);
``BENCH_QUICK=1`` shrinks both to a smoke run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import time
from datetime import date, timedelta
from typing import Any

import psutil

from batch.job import run_day, run_range
from batch.spark import spark_session
from benchmarks._harness import Row, console, print_table, quick
from devtools.synthetic import SyntheticConfig, generate
from shared_logic.settings import Settings
from storage import Lake, open_lake
from storage.raw import land_events, read_raw

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


def build_lake(root: str, events: int, days: int = DAYS) -> tuple[Lake, Any, int]:
    """A lake of ``days`` days of traffic, about ``events`` events a week, landed in blocks of users."""
    lake = open_lake(f"file://{root}")
    users_total = events // EVENTS_PER_USER_WEEK
    block_users = 40_000
    landed = 0
    catalog = None
    for b, start in enumerate(range(0, users_total, block_users)):
        cfg = SyntheticConfig(
            users=min(block_users, users_total - start),
            days=days,
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
    from batch.journeys import DaySpec, decide_partitions, settle_campaign
    from shared_logic import AttributionPolicy
    from shared_logic.contract import MODEL_NAMES

    start = time.perf_counter()
    policy = AttributionPolicy()
    table = read_raw(lake, day - timedelta(days=DAYS), day)
    frame = table.to_pandas()
    frame = frame[frame.event_type != "order_cancel"].sort_values(["user_id", "event_time", "event_id"])
    day_start = int(pd.Timestamp(day, tz="UTC").timestamp() * 1000)
    decisions = pd.concat(
        decide_partitions(iter([frame]), DaySpec(catalog, policy, day_start, day_start + 86_400_000))
    )
    orders = decisions[(decisions.kind == "order") & decisions.campaign_id.notna()]  # one per order id
    actions = orders.assign(action="decide", due_ms=orders.order_time_ms + policy.allowed_lateness_ms)
    for _, group in actions.groupby("campaign_id"):
        settle_campaign(group, catalog)
    day_rows = decisions[decisions.in_day & (decisions.path_channels.map(len) > 0)]
    paths = day_rows.assign(path=day_rows.path_channels.map(" > ".join))
    agg = paths.groupby("path").agg(
        c=("kind", lambda k: (k == "order").sum()), n=("kind", lambda k: (k == "null").sum())
    )
    aggregates = paths_from_columns(agg.index.tolist(), agg.c.to_numpy(), None, agg.n.to_numpy())
    models = [get_model(m) for m in MODEL_NAMES]
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


def checkpoint_size(lake: Lake, day: date) -> tuple[int, int, int]:
    """Rows, campaigns and bytes of a day's checkpoint."""
    from batch.checkpoints import read_checkpoint
    from shared_logic.contract import SETTLEMENT_STATE
    from storage.lake import partition

    ref = partition(SETTLEMENT_STATE, dt=day.isoformat())
    table = lake.read([ref])
    size = sum(lake.fs.get_file_info(lake.path(f)).size for f in lake.files(ref))
    found = read_checkpoint(lake, day)
    rows = found.rows if found else table.num_rows
    campaigns = len(set(table.column("campaign_id").to_pylist())) if table.num_rows else 0
    return rows, campaigns, size


def run_ratio() -> list[Row]:
    """Day 9 and day 60 of a lake of equal daily volume, from checkpoints, side by side."""
    settings = Settings()
    horizon = settings.rules.cancel_horizon_days
    refresh = settings.nightly_refresh_days
    # Day 9 is the first whose look-back (the 7-day window and the lateness) lies in the lake.
    first, last = (9, 14) if quick() else (9, 60)
    per_day = 500 if quick() else 5_400
    start = date(2026, 11, 1)

    def day(n: int) -> date:
        """Day ``n`` of the lake, 1-based."""
        return start + timedelta(days=n - 1)

    spark = spark_session(settings.spark, "attribution-bench")
    root = tempfile.mkdtemp(prefix="attribution-bench-age-")
    try:
        days = last + horizon  # day 60 has its cancel horizon in the lake, as day 9 has
        console.print(f"[dim]batch: building a lake of {days} days, about {per_day:,} events a day[/dim]")
        lake, catalog, landed = build_lake(root, per_day * 7, days)
        console.print(f"[dim]  landed {landed:,} events ({landed / days:,.0f} a day)[/dim]")

        def timed(n: int, scratch: bool = False) -> float:
            result = run_day(spark, lake, catalog, day(n), settings, from_scratch=scratch)
            console.print(
                f"[dim]  day {n}: {result.seconds:.1f}s, "
                f"{'from scratch' if scratch else f'from the checkpoint of {result.started_from}'}, "
                f"read from {result.read_days[0]}[/dim]"
            )
            return result.seconds

        timed(last - refresh - 1, scratch=True)  # the checkpoint the nightly refresh of day 60 starts from
        scratch_first = timed(first - 1, scratch=True)  # the one day 9 starts from (Spark warm by now)
        started = time.perf_counter()
        nightly = run_range(spark, lake, catalog, day(last - refresh), day(last), settings)
        nightly_s = time.perf_counter() - started
        console.print(f"[dim]  nightly for day {last} with its {refresh}-day refresh: {nightly_s:.1f}s[/dim]")
        early, late = [], []
        for _ in range(2):  # alternately, so both see the same machine
            early.append(timed(first))
            late.append(timed(last))
        t_first, t_last = min(early), min(late)
        scratch_last = timed(last, scratch=True)
        started = time.perf_counter()
        rerun = run_range(spark, lake, catalog, day(last - 1), day(last - 1), settings)
        rerun_s = time.perf_counter() - started
        rows, campaigns, size = checkpoint_size(lake, day(last))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    ratio = t_last / t_first
    out = [
        Row(
            f"day {last} from the checkpoint of day {last - 1}", t_last, scratch_last, note="vs from scratch"
        ),
        Row(
            f"day {first} from the checkpoint of day {first - 1}",
            t_first,
            scratch_first,
            note="vs from scratch",
        ),
        Row(
            f"nightly for day {last}: {refresh}-day refresh + the day",
            nightly_s,
            float("nan"),
            note=f"{len(nightly)} runs, {nightly_s / len(nightly):.1f}s each",
        ),
        Row(
            f"rerun of day {last - 1} (and what it makes stale)",
            rerun_s,
            scratch_last,
            note=f"{len(rerun)} day(s) recomputed; baseline: one day from scratch",
        ),
    ]
    print_table(
        f"Nightly job against the lake's age ({landed / days:,.0f} events a day, local[2])",
        out,
        ours="from checkpoints",
        baseline="from scratch",
    )
    console.print(
        f"  ratio day {last} / day {first}: {ratio:.2f} (target: at most 1.2); "
        f"from scratch the same two days cost {scratch_last:.1f}s and {scratch_first:.1f}s "
        f"(day {first - 1})"
    )
    console.print(
        f"  checkpoint of day {last}: {rows:,} rows, {size / 1024:,.1f} KiB for {campaigns} campaigns "
        f"({rows / max(campaigns, 1):,.1f} rows, {size / max(campaigns, 1) / 1024:,.2f} KiB per campaign)"
    )
    return out


def run() -> list[Row]:
    part = os.environ.get("BENCH_BATCH", "all")
    rows = run_ratio() if part in ("all", "ratio") else []
    if part in ("all", "sizes"):
        rows += run_sizes()
    return rows


def run_sizes() -> list[Row]:
    sizes = [200_000, 400_000] if quick() else [1_000_000, 3_000_000, 10_000_000]
    day = date(2026, 11, 1) + timedelta(days=DAYS - 1)
    spark = spark_session(Settings().spark, "attribution-bench")
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
                result = run_day(spark, lake, catalog, day, Settings())
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
