"""Analytics stores behind one interface, picked by URL.

- ``duckdb://`` (embedded default; ``duckdb:///path.db`` to keep a file):
  DuckDB over the lake's committed metric partitions, read through pyarrow, so
  a folder and S3 work alike.
- ``postgresql://…``: the batch layer loads each day (delete + insert in one
  transaction, so a reload replaces the day).
- ``druid://host:port``: the same queries in Druid SQL through pydruid's
  DB-API; days are loaded by submitting an ingestion task to the overlord.

Every store answers the same ROAS query.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, Protocol
from urllib.parse import urlparse

import pyarrow as pa

from batch.job import METRIC_COLUMNS, METRIC_DIMENSIONS
from batch.lake import Lake, partition
from shared_logic.errors import AttributionError

log = logging.getLogger(__name__)


class StoreError(AttributionError):
    """A store URL or query that cannot be served."""


@dataclass(frozen=True, slots=True)
class RoasQuery:
    start: date
    end: date
    advertiser_ids: tuple[str, ...] | None = None  # None: every advertiser (internal use only)
    campaign_ids: tuple[str, ...] | None = None
    models: tuple[str, ...] | None = None


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


class AnalyticsStore(Protocol):
    def load_day(self, lake: Lake, day: str) -> int: ...
    def roas(self, query: RoasQuery) -> list[dict[str, Any]]: ...
    def days(self) -> list[str]: ...
    def close(self) -> None: ...


def _metric_table(lake: Lake, days: Sequence[str] | None = None) -> pa.Table:
    wanted = days if days is not None else [p["dt"] for p in lake.partitions("metrics/campaign_daily")]
    refs = [partition("metrics/campaign_daily", dt=d) for d in wanted]
    refs = [r for r in refs if lake.is_complete(r)]
    table = lake.read(refs)
    if table.num_rows == 0:
        return pa.table({c: pa.array([], pa.string()) for c in METRIC_COLUMNS})
    return table.select(list(METRIC_COLUMNS))


class DuckDBStore:
    """DuckDB over the lake: ``load_day`` refreshes the view of committed metric partitions."""

    def __init__(self, lake: Lake, path: str = ":memory:") -> None:
        import duckdb

        self.lake = lake
        self.con = duckdb.connect(path)
        self._arrow = _metric_table(lake)
        self.con.register("campaign_daily", self._arrow)

    def load_day(self, lake: Lake, day: str) -> int:
        self._arrow = _metric_table(lake)
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


_PG_DDL = """
CREATE TABLE IF NOT EXISTS campaign_daily (
    dt date NOT NULL, campaign_id text NOT NULL, advertiser_id text NOT NULL, lever text NOT NULL,
    currency char(3) NOT NULL, model text NOT NULL, impressions bigint NOT NULL, clicks bigint NOT NULL,
    promo_views bigint NOT NULL, orders double precision NOT NULL, revenue_minor double precision NOT NULL,
    spend_minor bigint NOT NULL, capped_orders bigint NOT NULL, roas double precision,
    PRIMARY KEY (dt, campaign_id, model)
);
CREATE INDEX IF NOT EXISTS campaign_daily_advertiser ON campaign_daily (advertiser_id, dt);
"""


class PostgresStore:
    """PostgreSQL: the batch layer loads each day in one transaction."""

    def __init__(self, url: str) -> None:
        import psycopg

        self.con = psycopg.connect(url, autocommit=False)
        with self.con.transaction():
            self.con.execute(_PG_DDL)

    def load_day(self, lake: Lake, day: str) -> int:
        rows = _metric_table(lake, [day]).to_pylist()
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


class DruidStore:
    """Druid: queries in Druid SQL through pydruid; days loaded by an ingestion task."""

    def __init__(self, url: str, lake_uri_for_ingestion: str | None = None) -> None:
        from pydruid.db import connect

        u = urlparse(url)
        self.host, self.port = u.hostname or "localhost", u.port or 8888
        self.scheme = "https" if u.scheme == "druids" else "http"
        self.con = connect(host=self.host, port=self.port, path="/druid/v2/sql/", scheme=self.scheme)
        self.datasource = "campaign_daily"
        self.lake_uri_for_ingestion = lake_uri_for_ingestion

    def ingestion_spec(self, lake: Lake, day: str) -> dict[str, Any]:
        """A native batch ingestion task replacing the day's segment from the lake's Parquet files."""
        ref = partition("metrics/campaign_daily", dt=day)
        uris = [lake.uri(f).replace("s3a://", "s3://") for f in lake.files(ref)]
        input_source: dict[str, Any] = (
            {"type": "s3", "uris": uris}
            if lake.scheme != "file"
            else {"type": "local", "files": [u.removeprefix("file://") for u in uris]}
        )
        dims = list(METRIC_DIMENSIONS)
        return {
            "type": "index_parallel",
            "spec": {
                "dataSchema": {
                    "dataSource": self.datasource,
                    "timestampSpec": {"column": "dt", "format": "auto"},
                    "dimensionsSpec": {"dimensions": dims},
                    "metricsSpec": [],
                    "granularitySpec": {
                        "segmentGranularity": "day",
                        "queryGranularity": "none",
                        "rollup": False,
                        "intervals": [f"{day}/P1D"],
                    },
                },
                "ioConfig": {
                    "type": "index_parallel",
                    "inputSource": input_source,
                    "inputFormat": {"type": "parquet"},
                    "appendToExisting": False,
                },
                "tuningConfig": {"type": "index_parallel", "partitionsSpec": {"type": "dynamic"}},
            },
        }

    def load_day(self, lake: Lake, day: str) -> int:
        import httpx

        spec = self.ingestion_spec(lake, day)
        overlord = f"{self.scheme}://{self.host}:{self.port}/druid/indexer/v1/task"
        resp = httpx.post(overlord, json=spec, timeout=30)
        resp.raise_for_status()
        log.info("druid ingestion task %s submitted for %s", resp.json().get("task"), day)
        return len(
            spec["spec"]["ioConfig"]["inputSource"].get("uris")
            or spec["spec"]["ioConfig"]["inputSource"].get("files")
            or []
        )

    def roas_druid_sql(self, query: RoasQuery) -> tuple[str, dict[str, Any]]:
        """The ROAS query in Druid SQL, with pydruid's named (pyformat) parameters."""
        sql, values = roas_sql(query, "?", table=f'"{self.datasource}"')
        # Druid keeps the day as __time; expose it as dt like the other stores.
        sql = sql.replace("SELECT dt,", "SELECT TIME_FORMAT(__time, 'yyyy-MM-dd') AS dt,", 1)
        sql = sql.replace(
            "WHERE dt >= ? AND dt <= ?", "WHERE __time >= TIME_PARSE(?) AND __time <= TIME_PARSE(?)"
        )
        parts = sql.split("?")
        named = "".join(f"{part}%(p{i})s" for i, part in enumerate(parts[:-1])) + parts[-1]
        return named, {f"p{i}": v for i, v in enumerate(values)}

    def roas(self, query: RoasQuery) -> list[dict[str, Any]]:
        sql, params = self.roas_druid_sql(query)
        cur = self.con.cursor()
        cur.execute(sql, params)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def days(self) -> list[str]:
        cur = self.con.cursor()
        table = f'"{self.datasource}"'
        cur.execute(f"SELECT DISTINCT TIME_FORMAT(__time, 'yyyy-MM-dd') FROM {table} ORDER BY 1")  # noqa: S608 - constant name
        return [r[0] for r in cur.fetchall()]

    def close(self) -> None:
        self.con.close()


def open_store(url: str, lake: Lake) -> AnalyticsStore:
    """The store of a URL: ``duckdb://``, ``postgresql://``, ``druid://``."""
    scheme = urlparse(url).scheme
    if scheme == "duckdb":
        path = url.removeprefix("duckdb://") or ":memory:"
        return DuckDBStore(lake, path)
    if scheme in ("postgresql", "postgres"):
        return PostgresStore(url)
    if scheme in ("druid", "druids"):
        return DruidStore(url)
    raise StoreError(f"store url = {url!r}: scheme must be duckdb://, postgresql:// or druid://")
