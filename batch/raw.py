"""Raw events in the lake: ``raw/{type}/dt=YYYY-MM-DD/hour=HH/``.

Landing validates every payload with ``shared_logic.parse_event``: the lake
holds events that meet the contract (one typed schema for all types, unused
columns null), and payloads that don't go to ``dead_letters/dt=…/`` as text
with their reason. ``ingested_at_ms`` keeps the arrival time, so a replay can
feed events in the order they arrived.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
import pyarrow as pa

from batch.lake import Lake, partition
from shared_logic import InvalidEvent, parse_event
from shared_logic.events import EVENT_TYPES, event_to_dict

RAW_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("event_type", pa.string()),
        ("event_time", pa.int64()),
        ("user_id", pa.string()),
        ("campaign_id", pa.string()),
        ("placement", pa.string()),
        ("creative_id", pa.string()),
        ("impression_id", pa.string()),
        ("promo_code", pa.string()),
        ("order_id", pa.string()),
        ("merchant_id", pa.string()),
        ("amount_minor", pa.int64()),
        ("currency", pa.string()),
        ("promo_codes", pa.list_(pa.string())),
        ("ingested_at_ms", pa.int64()),
    ]
)
LANDED = "raw/_landed"
DEAD_SCHEMA = pa.schema(
    [
        ("raw", pa.string()),
        ("field", pa.string()),
        ("value", pa.string()),
        ("rule", pa.string()),
        ("ingested_at_ms", pa.int64()),
    ]
)


@dataclass(frozen=True, slots=True)
class Landed:
    accepted: int
    rejected: int
    partitions: int


def _hour(ms: int) -> tuple[str, str]:
    t = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return t.date().isoformat(), f"{t.hour:02d}"


def land_events(lake: Lake, deliveries: Iterable[tuple[Any, int]], append_as: str | None = None) -> Landed:
    """Validate and write ``(raw payload, arrival ms)`` pairs, replacing their partitions whole.

    With ``append_as``, each partition gets one more file of that name instead (for
    landing a large data set in blocks; the partitions then have no manifest).
    """
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    dead: dict[str, list[dict[str, Any]]] = {}
    seen: set[str] = set()
    for raw, arrival in deliveries:
        try:
            event = parse_event(raw)
        except InvalidEvent as exc:
            text = raw if isinstance(raw, str) else orjson.dumps(raw, default=str).decode()
            dead.setdefault(_hour(arrival)[0], []).append(
                {"raw": text, **exc.as_dict(), "ingested_at_ms": arrival}
            )
            continue
        if event.event_id in seen:  # a redelivery: the lake keeps one copy
            continue
        seen.add(event.event_id)
        row = event_to_dict(event)
        row["ingested_at_ms"] = arrival
        dt, hour = _hour(event.event_time)
        groups.setdefault((event.event_type, dt, hour), []).append(row)
    for (etype, dt, hour), rows in sorted(groups.items()):
        ref = partition(f"raw/{etype}", dt=dt, hour=hour)
        table = pa.Table.from_pylist(rows, schema=RAW_SCHEMA)
        if append_as is None:
            lake.write_partition(ref, table)
        else:
            lake.put_file(ref, f"{append_as}.parquet", table)
    for dt, rows in sorted(dead.items()):
        lake.write_partition(partition("dead_letters", dt=dt), pa.Table.from_pylist(rows, schema=DEAD_SCHEMA))
    # The day is landed: the nightly DAG's sensor waits for this marker.
    for dt in sorted({dt for _, dt, _ in groups}):
        n = sum(len(r) for (_, d, _), r in groups.items() if d == dt)
        lake.write_marker(partition(LANDED, dt=dt), {"events": n})
    return Landed(sum(len(r) for r in groups.values()), sum(len(r) for r in dead.values()), len(groups))


def is_landed(lake: Lake, day: date) -> bool:
    """Whether the raw events of ``day`` have been landed completely."""
    return lake.is_complete(partition(LANDED, dt=day.isoformat()))


def days_between(start: date, end: date) -> list[date]:
    if end < start:
        raise ValueError(f"end = {end}: must not be before start = {start}")
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


def raw_partitions(lake: Lake, start: date, end: date, types: Iterable[str] = EVENT_TYPES) -> list[Any]:
    """Every committed hour partition of the given types and days."""
    wanted = {d.isoformat() for d in days_between(start, end)}
    return [
        partition(f"raw/{etype}", **values)
        for etype in types
        for values in lake.partitions(f"raw/{etype}", depth=2)
        if values["dt"] in wanted
    ]


def read_raw(lake: Lake, start: date, end: date, types: Iterable[str] = EVENT_TYPES) -> pa.Table:
    """Raw events of the days ``start..end`` (inclusive) as one table."""
    refs = raw_partitions(lake, start, end, types)
    table = lake.read(refs)
    if table.num_rows == 0:
        return RAW_SCHEMA.empty_table()
    return table.select(RAW_SCHEMA.names).cast(RAW_SCHEMA)


def rows_to_payloads(table: pa.Table) -> list[dict[str, Any]]:
    """Wire-form dicts (nulls dropped) of raw rows, in arrival order."""
    table = table.sort_by([("ingested_at_ms", "ascending"), ("event_id", "ascending")])
    out = []
    for row in table.to_pylist():
        row.pop("ingested_at_ms", None)
        out.append({k: v for k, v in row.items() if v is not None})
    return out
