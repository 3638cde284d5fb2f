"""What every analytics store answers: the ROAS query over ``MetricRow``s."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, Protocol

import pyarrow as pa

from shared_logic.contract import IVT_MEASURES, METRIC_ROW, METRICS, ColumnType, RowSchema
from storage.arrow import arrow_schema
from storage.lake import Lake, partition

METRIC_COLUMNS = METRIC_ROW.names


@dataclass(frozen=True, slots=True)
class RoasQuery:
    start: date
    end: date
    advertiser_ids: tuple[str, ...] | None = None  # None: every advertiser (internal use only)
    campaign_ids: tuple[str, ...] | None = None
    models: tuple[str, ...] | None = None


class AnalyticsStore(Protocol):
    def load_day(self, lake: Lake, day: str) -> int: ...
    def roas(self, query: RoasQuery) -> list[dict[str, Any]]: ...
    def days(self) -> list[str]: ...
    def close(self) -> None: ...


def roas_sql(q: RoasQuery, placeholder: str = "?", table: str = "campaign_daily") -> tuple[str, list[Any]]:
    """The ROAS query in portable SQL with positional placeholders."""
    where = [f"dt >= {placeholder}", f"dt <= {placeholder}"]
    params: list[Any] = [q.start.isoformat(), q.end.isoformat()]
    for column, values in (
        ("advertiser_id", q.advertiser_ids),
        ("campaign_id", q.campaign_ids),
        ("model", q.models),
    ):
        if values is not None:
            if not values:
                where.append("1 = 0")
                continue
            where.append(f"{column} IN ({', '.join([placeholder] * len(values))})")
            params.extend(values)
    cols = ", ".join(METRIC_COLUMNS)
    return (f"SELECT {cols} FROM {table} WHERE {' AND '.join(where)} ORDER BY dt, campaign_id, model", params)  # noqa: S608 - constant names and placeholders only


_SQL_TYPES = {
    ColumnType.STRING: "text",
    ColumnType.INT64: "bigint",
    ColumnType.FLOAT64: "double precision",
    ColumnType.BOOL: "boolean",
}


def sql_ddl(
    row: RowSchema, table: str, primary_key: Sequence[str], types: Mapping[str, str] | None = None
) -> str:
    """``CREATE TABLE IF NOT EXISTS`` for a row schema (``types`` overrides a column's SQL type)."""
    cols = [
        f"{c.name} {(types or {}).get(c.name, _SQL_TYPES[c.type])}{'' if c.nullable else ' NOT NULL'}"
        for c in row.columns
    ]
    body = ",\n    ".join([*cols, f"PRIMARY KEY ({', '.join(primary_key)})"])
    return f"CREATE TABLE IF NOT EXISTS {table} (\n    {body}\n)"


def metric_table(lake: Lake, days: Sequence[str] | None = None) -> pa.Table:
    """The committed metric partitions of ``days`` (default: all) as one table of ``METRIC_ROW``.

    A partition written before the invalid-traffic rules existed has no ``IVT_MEASURES`` columns
    (or, read beside newer ones, nulls in them): no rule flagged anything on its day, so they read
    as 0. Any other column missing or null where the contract forbids it is still an error.
    """
    wanted = days if days is not None else [p["dt"] for p in lake.partitions(METRICS.path)]
    refs = [partition(METRICS, dt=d) for d in wanted]
    table = lake.read([r for r in refs if lake.is_complete(r)])
    schema = arrow_schema(METRIC_ROW)
    if table.num_rows == 0:
        return schema.empty_table()
    for name in IVT_MEASURES:
        if name not in table.column_names:
            table = table.append_column(name, pa.array([0] * table.num_rows, pa.int64()))
        elif table.column(name).null_count:
            i = table.column_names.index(name)
            table = table.set_column(i, name, table.column(name).cast(pa.int64()).fill_null(0))
    return table.select(list(METRIC_COLUMNS)).cast(schema)
