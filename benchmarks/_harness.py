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
    higher_is_better: bool = False

    @property
    def ratio(self) -> float:
        """How many times better ours is than the baseline (above 1: ours is better)."""
        if self.higher_is_better:
            return self.ours / self.baseline if self.baseline > 0 else float("inf")
        return self.baseline / self.ours if self.ours > 0 else float("inf")


def print_table(title: str, rows: list[Row], ours: str = "ours", baseline: str = "baseline") -> None:
    table = Table(title=title, title_justify="left")
    table.add_column("case")
    table.add_column(ours, justify="right")
    table.add_column(baseline, justify="right")
    table.add_column("ours vs baseline", justify="right")
    table.add_column("note")
    for r in rows:
        fmt = "{:,.0f}" if abs(r.ours) >= 1000 else "{:.3f}"
        if r.baseline != r.baseline:  # NaN: this row has no baseline
            table.add_row(r.case, f"{fmt.format(r.ours)} {r.unit}", "-", "-", r.note)
            continue
        table.add_row(
            r.case,
            f"{fmt.format(r.ours)} {r.unit}",
            f"{fmt.format(r.baseline)} {r.unit}",
            f"{r.ratio:.2f}x {'better' if r.ratio >= 1 else 'worse'}",
            r.note,
        )
    console.print(table)
