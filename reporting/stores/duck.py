"""DuckDB over the lake (the embedded default): ``duckdb://`` in memory, ``duckdb:///path.db`` a file."""

from __future__ import annotations

from typing import Any

import duckdb

from reporting.stores.base import RoasQuery, metric_table, roas_sql
from storage.lake import Lake


class DuckDBStore:
    """``load_day`` refreshes the view of committed metric partitions; nothing is copied."""

    def __init__(self, lake: Lake, path: str = ":memory:") -> None:
        self.lake = lake
        self.con = duckdb.connect(path)
        self._arrow = metric_table(lake)
        self.con.register("campaign_daily", self._arrow)

    @classmethod
    def from_url(cls, url: str, **context: Any) -> DuckDBStore:
        return cls(context["lake"], url.removeprefix("duckdb://") or ":memory:")

    def load_day(self, lake: Lake, day: str) -> int:
        self._arrow = metric_table(lake)
        self.con.unregister("campaign_daily")
        self.con.register("campaign_daily", self._arrow)
        return sum(1 for d in self._arrow.column("dt").to_pylist() if d == day)

    def roas(self, query: RoasQuery) -> list[dict[str, Any]]:
        sql, params = roas_sql(query)
        cur = self.con.execute(sql, params)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def days(self) -> list[str]:
        rows = self.con.execute("SELECT DISTINCT dt FROM campaign_daily").fetchall()
        return sorted(str(r[0]) for r in rows)

    def close(self) -> None:
        self.con.close()
