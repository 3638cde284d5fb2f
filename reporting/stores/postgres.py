"""PostgreSQL: the batch layer loads each day in one transaction (delete + insert), so a reload
replaces the day. The table's DDL is derived from the contract's ``MetricRow``."""

from __future__ import annotations

from typing import Any

import psycopg

from reporting.stores.base import METRIC_COLUMNS, RoasQuery, metric_table, roas_sql, sql_ddl
from shared_logic.contract import METRIC_KEY, METRIC_ROW
from storage.lake import Lake

DDL = sql_ddl(METRIC_ROW, "campaign_daily", METRIC_KEY, types={"dt": "date", "currency": "char(3)"})
INDEX = "CREATE INDEX IF NOT EXISTS campaign_daily_advertiser ON campaign_daily (advertiser_id, dt)"


class PostgresStore:
    def __init__(self, url: str) -> None:
        self.con = psycopg.connect(url, autocommit=False)
        with self.con.transaction():
            self.con.execute(DDL)
            self.con.execute(INDEX)

    @classmethod
    def from_url(cls, url: str, **context: Any) -> PostgresStore:
        return cls(url)

    def load_day(self, lake: Lake, day: str) -> int:
        rows = metric_table(lake, [day]).to_pylist()
        cols = ", ".join(METRIC_COLUMNS)
        with self.con.transaction(), self.con.cursor() as cur:
            cur.execute("DELETE FROM campaign_daily WHERE dt = %s", (day,))
            cur.executemany(
                f"INSERT INTO campaign_daily ({cols}) VALUES ({', '.join(['%s'] * len(METRIC_COLUMNS))})",  # noqa: S608 - constant names
                [tuple(r[c] for c in METRIC_COLUMNS) for r in rows],
            )
        return len(rows)

    def roas(self, query: RoasQuery) -> list[dict[str, Any]]:
        sql, params = roas_sql(query, "%s")
        with self.con.cursor() as cur:
            cur.execute(sql, params)
            names = [d.name for d in cur.description or []]
            out = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
        self.con.rollback()
        for r in out:
            r["dt"] = r["dt"].isoformat()
        return out

    def days(self) -> list[str]:
        with self.con.cursor() as cur:
            cur.execute("SELECT DISTINCT dt FROM campaign_daily ORDER BY dt")
            days = [r[0].isoformat() for r in cur.fetchall()]
        self.con.rollback()
        return days

    def close(self) -> None:
        self.con.close()
