"""Analytics stores behind one interface, chosen by URL through ``STORES``.

- ``duckdb://`` (embedded default; ``duckdb:///path.db`` to keep a file):
  DuckDB over the lake's committed metric partitions (``reporting.stores.duck``).
- ``postgresql://…``: the batch layer loads each day in one transaction
  (``reporting.stores.postgres``).
- ``druid://host:port``: Druid SQL through pydruid; days loaded by an ingestion
  task (``reporting.stores.druid``).

Every store answers the same ROAS query (``base.roas_sql``) over the contract's
``MetricRow``.
"""

from __future__ import annotations

from reporting.stores.base import AnalyticsStore, RoasQuery, metric_table, roas_sql
from storage.lake import Lake
from storage.registry import Backend, Registry

STORES: Registry[AnalyticsStore] = Registry(
    "store",
    {
        "duckdb": Backend("reporting.stores.duck:DuckDBStore", "api"),
        "postgresql": Backend("reporting.stores.postgres:PostgresStore", "postgres"),
        "postgres": Backend("reporting.stores.postgres:PostgresStore", "postgres"),
        "druid": Backend("reporting.stores.druid:DruidStore", "druid"),
        "druids": Backend("reporting.stores.druid:DruidStore", "druid"),
    },
)


def open_store(url: str, lake: Lake) -> AnalyticsStore:
    """The analytics store at ``url``, over ``lake`` (where the batch layer writes its metrics)."""
    return STORES.open(url, lake=lake)


__all__ = ["STORES", "AnalyticsStore", "RoasQuery", "metric_table", "open_store", "roas_sql"]
