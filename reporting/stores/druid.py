"""Druid: the ROAS query in Druid SQL through pydruid's DB-API; a day is loaded by submitting a
native batch ingestion task (replacing its segment) to the overlord."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlparse

import httpx
from pydruid.db import connect

from reporting.stores.base import RoasQuery, roas_sql
from shared_logic.contract import METRIC_DIMENSIONS, METRICS
from storage.lake import Lake, partition

log = logging.getLogger(__name__)


class DruidStore:
    def __init__(self, url: str) -> None:
        u = urlparse(url)
        self.host, self.port = u.hostname or "localhost", u.port or 8888
        self.scheme = "https" if u.scheme == "druids" else "http"
        self.con = connect(host=self.host, port=self.port, path="/druid/v2/sql/", scheme=self.scheme)
        self.datasource = "campaign_daily"

    @classmethod
    def from_url(cls, url: str, **context: Any) -> DruidStore:
        return cls(url)

    def ingestion_spec(self, lake: Lake, day: str) -> dict[str, Any]:
        """A native batch ingestion task replacing the day's segment from the lake's Parquet files."""
        uris = [lake.uri(f).replace("s3a://", "s3://") for f in lake.files(partition(METRICS, dt=day))]
        input_source: dict[str, Any] = (
            {"type": "local", "files": [u.removeprefix("file://") for u in uris]}
            if uris and uris[0].startswith("file://")
            else {"type": "s3", "uris": uris}
        )
        return {
            "type": "index_parallel",
            "spec": {
                "dataSchema": {
                    "dataSource": self.datasource,
                    "timestampSpec": {"column": "dt", "format": "auto"},
                    "dimensionsSpec": {"dimensions": list(METRIC_DIMENSIONS)},
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
        spec = self.ingestion_spec(lake, day)
        overlord = f"{self.scheme}://{self.host}:{self.port}/druid/indexer/v1/task"
        resp = httpx.post(overlord, json=spec, timeout=30)
        resp.raise_for_status()
        log.info("druid ingestion task %s submitted for %s", resp.json().get("task"), day)
        source = spec["spec"]["ioConfig"]["inputSource"]
        return len(source.get("uris") or source.get("files") or [])

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
