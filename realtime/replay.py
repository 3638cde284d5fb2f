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
from realtime.settings import RealtimeSettings
from shared_logic import Catalog

CHUNK = CHANNEL_CHUNK


def jsonl_source(path: str | Path) -> list[bytes]:
    """Lines of a JSON-lines file as raw bytes (blank lines skipped)."""
    with open(path, "rb") as fh:
        return [line.rstrip(b"\r\n") for line in fh if line.strip()]


def lake_source(lake_url: str, start: date, end: date) -> list[dict[str, Any]]:
    from batch.lake import Lake
    from batch.raw import read_raw, rows_to_payloads

    return rows_to_payloads(read_raw(Lake(lake_url), start, end))


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


def _chunks(values: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(values), size):
        yield values[i : i + size]


async def replay(
    values: Sequence[Any],
    catalog: Catalog,
    settings: RealtimeSettings,
    lake_url: str | None = None,
    show_progress: bool = True,
    stop_after: int | None = None,
) -> ReplayResult:
    """Feed ``values`` through the agent, settle everything, flush the ledger to the lake."""
    worker = Worker(settings.model_copy(update={"broker_url": "memory://"}), catalog)
    await worker.start_in_memory()
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
            for chunk in _chunks(values, CHUNK):
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
        if lake_url:
            from batch.lake import Lake

            flushed = await worker.flusher(Lake(lake_url)).flush()
        m = worker.engine.metrics
        return ReplayResult(
            sent=sent,
            seconds=seconds,
            accepted=int(sum(m.value("attribution_events_total", type=t) for t in _TYPES)),
            dead_lettered=int(sum(s.value for s in _samples(m, "attribution_dead_letters_total"))),
            duplicates=int(sum(s.value for s in _samples(m, "attribution_duplicates_total"))),
            decided=int(m.value("attribution_decisions_total", outcome="attributed")),
            organic=int(m.value("attribution_decisions_total", outcome="organic")),
            ledger_flushed=flushed,
            latencies_s=list(worker.engine.latencies),
        )
    finally:
        await worker.stop()


_TYPES = ("impression", "click", "promo_view", "order", "order_cancel")


def _samples(metrics: Any, name: str) -> Iterable[Any]:
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name == name:
                yield sample


def run(values: Sequence[Any], catalog: Catalog, settings: RealtimeSettings, **kwargs: Any) -> ReplayResult:
    """Synchronous entry point (the CLI)."""
    return asyncio.run(replay(values, catalog, settings, **kwargs))
