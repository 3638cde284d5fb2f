"""Analytics stores: DuckDB and PostgreSQL for real; Druid and Cassandra up to their clients."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pyarrow as pa
import pytest

from devtools.servers import free_port
from reporting.stores import RoasQuery, open_store, roas_sql
from reporting.stores.base import METRIC_COLUMNS
from reporting.stores.druid import DruidStore
from reporting.stores.postgres import PostgresStore
from shared_logic.errors import InvalidSetting
from storage import Lake, open_lake, partition
from storage.cassandra import CassandraCatalog
from storage.catalog import open_catalog
from storage.errors import CatalogUnavailable, UnknownBackend

pytestmark = pytest.mark.integration
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def _metrics_lake(tmp: Path) -> Lake:
    lake = open_lake(f"file://{tmp}/lake")
    for day, spend in (("2026-11-01", 100), ("2026-11-02", 0)):
        rows = []
        for cid, adv in (("ad1", "adv1"), ("ad2", "adv2")):
            for model in ("billing", "markov"):
                rows.append(  # noqa: PERF401 - two loops read better here
                    {
                        "dt": day,
                        "campaign_id": cid,
                        "advertiser_id": adv,
                        "lever": "ad",
                        "currency": "USD",
                        "model": model,
                        "impressions": 10,
                        "clicks": 2,
                        "promo_views": 0,
                        "orders": 1.5,
                        "revenue_minor": 4000.0,
                        "spend_minor": spend,
                        "capped_orders": 0,
                        "roas": 40.0 if spend else None,
                    }
                )
        # a measure this fixture does not set (a column added later) is null
        table = pa.Table.from_pylist([{k: r.get(k) for k in METRIC_COLUMNS if k != "dt"} for r in rows])
        lake.write_partition(partition("metrics/campaign_daily", dt=day), table)
    return lake


@pytest.fixture
def pg_url() -> Iterator[str]:
    psycopg = pytest.importorskip("psycopg")
    name = f"attribution_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL on 127.0.0.1:5432 is required for this test: {exc}")
    admin.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    admin.close()


def test_duckdb_and_postgres_answer_the_same(tmp_path: Path, pg_url: str) -> None:
    lake = _metrics_lake(tmp_path)
    duck = open_store("duckdb://", lake)
    pg = open_store(pg_url, lake)
    assert isinstance(pg, PostgresStore)
    for day in ("2026-11-01", "2026-11-02"):
        assert pg.load_day(lake, day) == 4
    assert pg.load_day(lake, "2026-11-01") == 4  # a reload replaces the day, not duplicates it
    q = RoasQuery(date(2026, 11, 1), date(2026, 11, 2), ("adv1",), None, ("markov",))
    expected = duck.roas(q)
    assert len(expected) == 2
    assert pg.roas(q) == [{**r, "dt": str(r["dt"])} for r in expected]
    assert pg.days() == duck.days() == ["2026-11-01", "2026-11-02"]
    assert pg.roas(RoasQuery(date(2026, 11, 1), date(2026, 11, 2), (), None, None)) == []
    duck.close()
    pg.close()


def test_roas_sql_binds_every_value() -> None:
    sql, params = roas_sql(
        RoasQuery(date(2026, 1, 1), date(2026, 1, 2), ("a'; DROP",), ("c1", "c2"), None), "%s"
    )
    assert "DROP" not in sql
    assert params == ["2026-01-01", "2026-01-02", "a'; DROP", "c1", "c2"]


def test_druid_up_to_the_client_boundary(tmp_path: Path) -> None:
    lake = _metrics_lake(tmp_path)
    port = free_port()  # nothing listens here: no Druid server runs on this machine
    store = open_store(f"druid://127.0.0.1:{port}", lake)
    assert isinstance(store, DruidStore)
    sql, params = store.roas_druid_sql(RoasQuery(date(2026, 11, 1), date(2026, 11, 2), ("adv1",), None, None))
    assert sql.startswith("SELECT TIME_FORMAT(__time, 'yyyy-MM-dd') AS dt,")
    assert 'FROM "campaign_daily" WHERE __time >= TIME_PARSE(%(p0)s)' in sql
    assert "advertiser_id IN (%(p2)s)" in sql
    assert params == {"p0": "2026-11-01", "p1": "2026-11-02", "p2": "adv1"}
    spec = store.ingestion_spec(lake, "2026-11-01")
    assert spec["spec"]["dataSchema"]["granularitySpec"]["intervals"] == ["2026-11-01/P1D"]
    files = spec["spec"]["ioConfig"]["inputSource"]["files"]
    assert files
    assert all(Path(f).exists() for f in files)
    import httpx

    with pytest.raises(Exception) as info:  # the client tried the network and found no server
        store.roas(RoasQuery(date(2026, 11, 1), date(2026, 11, 2)))
    assert "onnect" in str(info.value) or "refused" in str(info.value).lower()
    with pytest.raises(httpx.ConnectError):
        store.load_day(lake, "2026-11-01")


def test_cassandra_catalog_up_to_the_client_boundary(tmp_path: Path) -> None:
    port = free_port()
    store = CassandraCatalog(["127.0.0.1"], "attribution", port=port, connect_timeout=1)
    assert store.select_cql == "SELECT campaign_id, record FROM attribution.campaigns"
    assert store.insert_cql.endswith("VALUES (?, ?)")
    with pytest.raises(CatalogUnavailable, match="no Cassandra/ScyllaDB host answers"):
        store.load()
    store.close()
    with pytest.raises(InvalidSetting, match="keyspace"):
        CassandraCatalog(["127.0.0.1"], "bad-name; DROP")
    with pytest.raises(CatalogUnavailable):
        open_catalog(f"cassandra://127.0.0.1:{port}/attribution")


def test_unknown_store_scheme(tmp_path: Path) -> None:
    with pytest.raises(UnknownBackend, match="scheme must be one of druid://, druids://, duckdb://"):
        open_store("mysql://x", open_lake(f"file://{tmp_path}"))
