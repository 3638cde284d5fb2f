"""Raw events in the lake: ``raw/{type}/dt=YYYY-MM-DD/hour=HH/``, and their dead letters.

Landing validates every payload with ``shared_logic.parse_event``: the lake
holds events that meet the contract (``RAW_ROW``: one typed schema for all
types, unused columns null), and payloads that don't go to
``dead_letters/dt=…/`` (``DEAD_LETTER_ROW``) with their reason.
``ingested_at_ms`` keeps the arrival time, so a replay can feed events in the
order they arrived.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from typing import Any

import pyarrow as pa

from shared_logic import InvalidEvent, parse_event
from shared_logic.admission import refusal
from shared_logic.contract import DEAD_LETTER_ROW, DEAD_LETTERS, LANDED, RAW, RAW_ROW, dead_letter
from shared_logic.events import EVENT_TYPES, event_to_dict
from shared_logic.identity import digest
from shared_logic.policy import DEFAULT_MAX_FUTURE_MS
from shared_logic.timeutil import utc_hour
from storage.arrow import conform, table_of
from storage.lake import Lake, PartitionRef, partition

HOURS = tuple(f"{h:02d}" for h in range(24))


@dataclass(frozen=True, slots=True)
class Landed:
    accepted: int
    rejected: int
    partitions: int
    files: tuple[str, ...] = ()  # what was written, relative to the lake root
    max_event_ms: int = 0  # the latest event time landed (0: none)

    @property
    def days(self) -> set[str]:
        """The UTC days (YYYY-MM-DD) its raw files fall in."""
        return {f.split("/dt=", 1)[1][:10] for f in self.files if f.startswith("raw/")}


def mark_days_landed(lake: Lake, days: Iterable[str], meta: dict[str, Any]) -> None:
    """Mark every hour of whole ``days`` landed (a backfill of complete days)."""
    for dt in sorted(days):
        for hour in HOURS:
            mark_landed(lake, dt, hour, meta)


def land(
    lake: Lake, deliveries: Iterable[tuple[Any, int]], name: str, max_future_ms: int = DEFAULT_MAX_FUTURE_MS
) -> Landed:
    """Validate ``(raw payload, arrival ms)`` pairs and append them to the lake: one file called
    ``name`` in each raw hour partition their events fall in (``RAW_ROW``), and one in each day of
    dead letters (``DEAD_LETTER_ROW``, by arrival). The one writer of raw events: the lake sink
    names a file after the topic-partition and offset range it holds, a backfill after its source.

    Files appear whole or not at all, and writing the same ``name`` again rewrites the same files,
    so a writer that died half-way and starts over leaves no duplicates. Admission's wire stage
    (``shared_logic.admission``, catalog None) decides what is a dead letter: a touch the catalog
    refuses is landed (the layers refuse it when they decide, and a rerun with another catalog
    must see it). Identical copies within the call (``identity.digest``) keep one; copies that
    conflict are all landed, for the identity rule to choose between when deciding.
    """
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    dead: dict[str, list[dict[str, Any]]] = {}
    seen: set[str] = set()
    for raw, arrival in deliveries:
        try:
            event = parse_event(raw)
            refused = refusal(event, arrival, max_future_ms, None)
            if refused is not None:
                raise refused
        except InvalidEvent as exc:
            row = dead_letter(raw, exc.as_dict(), arrival)
            dead.setdefault(utc_hour(arrival)[0], []).append(asdict(row))
            continue
        copy = digest(event)
        if copy in seen:  # a redelivery: the lake keeps one copy
            continue
        seen.add(copy)
        row_ = event_to_dict(event)
        row_["ingested_at_ms"] = arrival
        dt, hour = utc_hour(event.event_time)
        groups.setdefault((event.event_type, dt, hour), []).append(row_)
    files: list[str] = []
    for (etype, dt, hour), rows in sorted(groups.items()):
        ref = partition(RAW, event_type=etype, dt=dt, hour=hour)
        lake.put_file(ref, f"{name}.parquet", table_of(RAW_ROW, rows))
        files.append(f"{ref.path}/{name}.parquet")
    for dt, rows in sorted(dead.items()):
        ref = partition(DEAD_LETTERS, dt=dt)
        lake.put_file(ref, f"{name}.parquet", table_of(DEAD_LETTER_ROW, rows))
        files.append(f"{ref.path}/{name}.parquet")
    return Landed(
        sum(len(r) for r in groups.values()),
        sum(len(r) for r in dead.values()),
        len(groups),
        tuple(files),
        max((r["event_time"] for rows in groups.values() for r in rows), default=0),
    )


def mark_landed(lake: Lake, dt: str, hour: str, meta: dict[str, Any]) -> None:
    """Mark one raw hour complete (what the nightly DAG's sensor waits for)."""
    lake.write_marker(partition(LANDED, dt=dt, hour=hour), meta)


def landed_by_day(lake: Lake) -> dict[str, set[str]]:
    """The hours marked landed, per day (one listing of the markers)."""
    out: dict[str, set[str]] = {}
    for p in lake.partitions(LANDED.at(), depth=2):
        out.setdefault(p["dt"], set()).add(p["hour"])
    return out


def landed_hours(lake: Lake, day: date) -> list[str]:
    return sorted(landed_by_day(lake).get(day.isoformat(), set()))


def is_landed(lake: Lake, day: date) -> bool:
    """Whether all 24 hours of ``day`` have been landed completely."""
    return landed_by_day(lake).get(day.isoformat(), set()) >= set(HOURS)


def land_events(
    lake: Lake,
    deliveries: Iterable[tuple[Any, int]],
    append_as: str | None = None,
    max_future_ms: int = DEFAULT_MAX_FUTURE_MS,
) -> Landed:
    """A backfill of whole days: ``land`` them (file name ``append_as``, by default ``land``), then
    mark every hour of every day they touched landed."""
    landed = land(lake, deliveries, append_as or "land", max_future_ms)
    mark_days_landed(lake, landed.days, {"by": "backfill", "name": append_as or "land"})
    return landed


def days_between(start: date, end: date) -> list[date]:
    if end < start:
        raise ValueError(f"end = {end}: must not be before start = {start}")
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


def raw_partitions(
    lake: Lake, start: date, end: date, types: Iterable[str] = EVENT_TYPES
) -> list[PartitionRef]:
    """Every hour partition of the given types and days."""
    wanted = {d.isoformat() for d in days_between(start, end)}
    return [
        partition(RAW, event_type=etype, **values)
        for etype in types
        for values in lake.partitions(RAW.at(event_type=etype), depth=2)
        if values["dt"] in wanted
    ]


def read_raw(lake: Lake, start: date, end: date, types: Iterable[str] = EVENT_TYPES) -> pa.Table:
    """Raw events of the days ``start..end`` (inclusive) as one table."""
    return conform(lake.read(raw_partitions(lake, start, end, types)), RAW_ROW)


def rows_to_payloads(table: pa.Table) -> list[dict[str, Any]]:
    """Wire-form dicts (nulls dropped) of raw rows, in arrival order."""
    table = table.sort_by([("ingested_at_ms", "ascending"), ("event_id", "ascending")])
    out = []
    for row in table.to_pylist():
        row.pop("ingested_at_ms", None)
        out.append({k: v for k, v in row.items() if v is not None})
    return out
