"""``attribution generate``: seeded synthetic traffic to files."""

from __future__ import annotations

import dataclasses
import time
from datetime import date
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.table import Table

from cli.common import console


def generate(
    out: Annotated[Path, typer.Option(help="folder for events.jsonl and catalog.yaml")] = Path("var/traffic"),
    users: Annotated[int, typer.Option(min=1)] = 2_000,
    days: Annotated[int, typer.Option(min=1)] = 7,
    seed: int = 7,
    start: Annotated[str, typer.Option(help="first day, YYYY-MM-DD")] = "2026-11-01",
    late_rate: Annotated[float, typer.Option(min=0, max=1)] = 0.0,
    malformed_rate: Annotated[float, typer.Option(min=0, max=1)] = 0.001,
    duplicate_rate: Annotated[float, typer.Option(min=0, max=1)] = 0.01,
    awkward_rate: Annotated[
        float | None,
        typer.Option(
            min=0, max=1, help="awkward but valid scenes per regular event; default: the generator's"
        ),
    ] = None,
) -> None:
    """Generate seeded synthetic traffic: a catalog and events in arrival order."""
    from devtools.synthetic import SyntheticConfig
    from devtools.synthetic import generate as gen

    try:
        first = date.fromisoformat(start)
    except ValueError:
        raise typer.BadParameter(f"start = {start!r}: dates are YYYY-MM-DD") from None
    cfg = SyntheticConfig(
        seed=seed,
        users=users,
        days=days,
        start=first,
        late_rate=late_rate,
        malformed_rate=malformed_rate,
        duplicate_rate=duplicate_rate,
    )
    if awkward_rate is not None:
        cfg = dataclasses.replace(cfg, awkward_rate=awkward_rate)
    started = time.perf_counter()
    traffic = gen(cfg)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "events.jsonl", "w", encoding="utf-8") as fh:
        for line in traffic.jsonl():
            fh.write(line + "\n")
    (out / "catalog.yaml").write_text(
        yaml.safe_dump({"campaigns": traffic.catalog.to_records()}, sort_keys=False)
    )
    counts: dict[str, int] = {}
    for e in traffic.events:
        kind = "malformed" if e.malformed else str(e.payload["event_type"])  # type: ignore[index]
        counts[kind] = counts.get(kind, 0) + 1
    table = Table(
        title=f"{len(traffic.events):,} events, {len(traffic.catalog)} campaigns "
        f"in {time.perf_counter() - started:.1f}s -> {out}"
    )
    table.add_column("event type")
    table.add_column("count", justify="right")
    for kind, n in sorted(counts.items()):
        table.add_row(kind, f"{n:,}")
    console.print(table)
