"""pyarrow forms of the contract's row schemas."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa

from shared_logic.contract import ColumnType, RowSchema

_TYPES = {
    ColumnType.STRING: pa.string(),
    ColumnType.INT64: pa.int64(),
    ColumnType.FLOAT64: pa.float64(),
    ColumnType.BOOL: pa.bool_(),
    ColumnType.STRING_LIST: pa.list_(pa.string()),
    ColumnType.INT64_LIST: pa.list_(pa.int64()),
}


def arrow_schema(row: RowSchema) -> pa.Schema:
    return pa.schema([pa.field(c.name, _TYPES[c.type], nullable=c.nullable) for c in row.columns])


def table_of(row: RowSchema, records: Iterable[Mapping[str, Any]]) -> pa.Table:
    """A table of ``row``'s schema from dicts (columns in the schema's order)."""
    return pa.Table.from_pylist(list(records), schema=arrow_schema(row))


def conform(table: pa.Table, row: RowSchema) -> pa.Table:
    """A table read back from the lake, cut and cast to ``row`` (an empty one when there are no rows)."""
    schema = arrow_schema(row)
    if table.num_rows == 0:
        return schema.empty_table()
    return table.select(list(row.names)).cast(schema)
