"""Replay: feed a JSON-lines file, the lake's raw events or the generator through
the same agents on in-memory channels, in arrival order, as fast as they go."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from realtime.app import CHANNEL_CHUNK, Worker
from realtime.clock import TP
from realtime.codec import Record
from realtime.routing import Producers, all_partitions, topic_partition
from shared_logic import Catalog
from shared_logic.events import EVENT_TYPES
from shared_logic.settings import Settings
from storage import open_lake
from storage.raw import read_raw, rows_to_payloads

CHUNK = CHANNEL_CHUNK


def jsonl_source(path: str | Path) -> list[bytes]:
    """Lines of a JSON-lines file as raw bytes (blank lines skipped)."""
    with open(path, "rb") as fh:
        return [line.rstrip(b"\r\n") for line in fh if line.strip()]


def lake_source(settings: Settings, start: date, end: date) -> list[dict[str, Any]]:
    """The lake's raw events of ``start..end``, in the order they arrived."""
    return rows_to_payloads(read_raw(open_lake(settings.lake.url, settings.s3), start, end))


@dataclass
class ReplayResult:
    sent: int
    seconds: float
    accepted: int
    dead_lettered: int
    duplicates: int
    decided: int
    organic: int
    ledger_flushed: int = 0
    latencies_s: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0


REPLAY_PREFIX = "replay:"


def partitioned(
    values: Sequence[Any],
    settings: Settings,
    producers: Producers | None = None,
    arrivals: Sequence[int] | None = None,
) -> tuple[list[Record], dict[TP, int]]:
    """The records a broker would hold: each value in its type's topic, in the partition its
    producer puts it in (``producers``; by default keyed by user with Kafka's default partitioner),
    with offsets in arrival order, stamped with its arrival (``arrivals``, as a broker stamps a
    record; by default the wall clock when it is processed); and how many each partition holds.
    Partitions are named ``replay:<topic>`` so a replay's checkpoints never mix with a Kafka
    worker's."""
    if arrivals is not None and len(arrivals) != len(values):
        raise ValueError(f"arrivals = {len(arrivals)} times for {len(values)} values: one per value")
    counts: dict[TP, int] = dict.fromkeys(all_partitions(settings.realtime, REPLAY_PREFIX), 0)
    records: list[Record] = []
    for i, value in enumerate(values):
        tp = topic_partition(value, settings.realtime, REPLAY_PREFIX, producers)
        records.append((tp, counts[tp], value, None if arrivals is None else arrivals[i]))
        counts[tp] += 1
    return records, counts


def _chunks(values: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(values), size):
        yield values[i : i + size]


async def replay(
    values: Sequence[Any],
    catalog: Catalog,
    settings: Settings,
    flush_ledger: bool = False,
    show_progress: bool = True,
    stop_after: int | None = None,
    producers: Producers | None = None,
    arrivals: Sequence[int] | None = None,
) -> ReplayResult:
    """Feed ``values`` through the agent, settle everything, and (``flush_ledger``) flush the
    ledger to the lake of ``settings``. ``producers``: how each topic's producer partitions
    (``realtime.routing``), to meet the events in the partitions a broker holds them in.
    ``arrivals``: when each value reached the broker (what landing stamps it with), so the future
    bound is applied against the same instant as landing does; by default the wall clock."""
    records, ends = partitioned(values, settings, producers, arrivals)
    worker = Worker(settings.replace(realtime_broker_url="memory://"), catalog, sources=list(ends))
    await worker.start_in_memory(ends)
    started = time.perf_counter()
    sent = 0
    progress = Progress(
        TextColumn("[bold]replay"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        disable=not show_progress,
    )
    try:
        with progress:
            task = progress.add_task("replay", total=len(values), rate="")
            for chunk in _chunks(records, CHUNK):
                await worker.send(chunk)
                sent += len(chunk)
                if stop_after is not None and sent >= stop_after:
                    break
                if sent % (CHUNK * 20) == 0:
                    rate = worker.processed / max(time.perf_counter() - started, 1e-9)
                    progress.update(task, completed=worker.processed, rate=f"{rate:,.0f} ev/s")
            await worker.wait_processed(sent)
            progress.update(task, completed=sent)
        await worker.engine.drain()
        seconds = time.perf_counter() - started
        flushed = 0
        if flush_ledger:
            flushed = await worker.flusher(open_lake(settings.lake.url, settings.s3)).flush()
        m = worker.engine.metrics
        return ReplayResult(
            sent=sent,
            seconds=seconds,
            accepted=int(sum(m.value("attribution_events_total", type=t) for t in EVENT_TYPES)),
            dead_lettered=int(sum(s.value for s in _samples(m, "attribution_dead_letters_total"))),
            duplicates=int(sum(s.value for s in _samples(m, "attribution_duplicates_total"))),
            decided=int(m.value("attribution_decisions_total", outcome="attributed")),
            organic=int(m.value("attribution_decisions_total", outcome="organic")),
            ledger_flushed=flushed,
            latencies_s=list(worker.engine.latencies),
        )
    finally:
        await worker.stop()


def _samples(metrics: Any, name: str) -> Iterable[Any]:
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name == name:
                yield sample


def run(values: Sequence[Any], catalog: Catalog, settings: Settings, **kwargs: Any) -> ReplayResult:
    """Synchronous entry point (the CLI)."""
    return asyncio.run(replay(values, catalog, settings, **kwargs))
