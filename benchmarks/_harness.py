"""Timing helpers and a table printer shared by the benchmarks."""

from __future__ import annotations

import gc
import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console(width=int(os.environ.get("COLUMNS", "120")))


def quick() -> bool:
    """``BENCH_QUICK=1`` shrinks every benchmark to a smoke run."""
    return os.environ.get("BENCH_QUICK", "") not in ("", "0")


def best_of(fn: Callable[[], Any], repeat: int = 3) -> tuple[float, Any]:
    """Best wall time of ``repeat`` runs (the least disturbed by the machine) and the last result."""
    best = float("inf")
    result: Any = None
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def peak_rss_mb() -> float:
    """Peak resident memory of this process (and waited-for children) in MiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024


@dataclass
class Row:
    case: str
    ours: float
    baseline: float
    unit: str = "s"
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.baseline / self.ours if self.ours > 0 else float("inf")


def print_table(title: str, rows: list[Row], ours: str = "ours", baseline: str = "baseline") -> None:
    table = Table(title=title, title_justify="left")
    table.add_column("case")
    table.add_column(f"{ours} ({rows[0].unit if rows else 's'})", justify="right")
    table.add_column(f"{baseline} ({rows[0].unit if rows else 's'})", justify="right")
    table.add_column("speed-up (baseline/ours)", justify="right")
    table.add_column("note")
    for r in rows:
        table.add_row(r.case, f"{r.ours:.3f}", f"{r.baseline:.3f}", f"{r.ratio:.2f}x", r.note)
    console.print(table)
