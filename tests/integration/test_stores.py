"""Analytics stores: DuckDB and PostgreSQL for real (the machine's PostgreSQL server, a fresh
database per test; skipped only when nothing listens on its port), each held to the rows the test
wrote; Druid and Cassandra up to their clients."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pytest

from devtools.servers import free_port
from reporting.stores import RoasQuery, metric_table, open_store, roas_sql
from reporting.stores.druid import DruidStore
from reporting.stores.duck import DuckDBStore
from reporting.stores.postgres import PostgresStore
from shared_logic.contract import IVT_MEASURES, METRIC_ROW
from shared_logic.errors import InvalidSetting
from storage import Lake, open_lake, partition
from storage.arrow import arrow_schema
from storage.cassandra import CassandraCatalog
from storage.catalog import open_catalog
from storage.errors import CatalogUnavailable, UnknownBackend

pytestmark = pytest.mark.integration
PG_HOST, PG_PORT = "127.0.0.1", 5432
PG_ADMIN = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/postgres"
DAYS = ("2026-11-01", "2026-11-02", "2026-11-03")
CAMPAIGNS = (("ad1", "adv1", "ad", "USD"), ("ad2", "adv2", "ad", "USD"), ("pr1", "adv1", "promo", "EUR"))
MODELS = ("billing", "markov", "linear")


def _metric_rows(version: int = 0) -> list[dict[str, Any]]:
    """One metric row per day, campaign and model, every measure different from row to row (a
    store that mixed up rows or columns would answer something else), nothing spent on some
    (their ``roas`` null), fractional credit under the multi-touch models."""
    rows = []
    for d, day in enumerate(DAYS):
        for c, (cid, adv, lever, currency) in enumerate(CAMPAIGNS):
            for m, model in enumerate(MODELS):
                n = 100 * d + 10 * c + m + 1000 * version
                spend = 0 if (d + c) % 4 == 3 else 500 + 7 * n
                revenue = 4000.0 + 13.25 * n
                rows.append(
                    {
                        "dt": day,
                        "campaign_id": cid,
                        "advertiser_id": adv,
                        "lever": lever,
                        "currency": currency,
                        "model": model,
                        "impressions": 1000 + n,
                        "clicks": 50 + n,
                        "promo_views": n if lever == "promo" else 0,
                        "orders": 3.0 + n if model == "billing" else 3.0 + n + 0.5,
                        "revenue_minor": revenue,
                        "spend_minor": spend,
                        "capped_orders": n % 3,
                        "roas": revenue / spend if spend else None,
                        "ivt_touches": n % 4,
                        "ivt_orders_changed": n % 2,
                        "ivt_orders_unattributed": n % 3,
                        "ivt_avoided_minor": 125 * (n % 2),
                    }
                )
    return rows


def _write_day(lake: Lake, rows: list[dict[str, Any]], day: str) -> None:
    schema = arrow_schema(METRIC_ROW.without("dt"))  # dt is the partition's
    table = pa.Table.from_pylist(
        [{k: r[k] for k in schema.names} for r in rows if r["dt"] == day], schema=schema
    )
    lake.write_partition(partition("metrics/campaign_daily", dt=day), table)


def _metrics_lake(tmp: Path, rows: list[dict[str, Any]]) -> Lake:
    lake = open_lake(f"file://{tmp}/lake")
    for day in DAYS:
        _write_day(lake, rows, day)
    return lake


def _picked(rows: list[dict[str, Any]], *keys: tuple[str, str, str]) -> list[dict[str, Any]]:
    """The rows written under each (day, campaign, model), in that order."""
    by_key = {(r["dt"], r["campaign_id"], r["model"]): r for r in rows}
    return [by_key[k] for k in keys]


def _pg_unreachable() -> str | None:
    """Why the PostgreSQL server cannot be reached, or None when something listens on its port
    (then any failure to connect or to create a database fails the test: the server is there)."""
    try:
        socket.create_connection((PG_HOST, PG_PORT), timeout=3).close()
    except OSError as exc:
        return f"PostgreSQL at {PG_HOST}:{PG_PORT} is unreachable ({exc!r}); its store is untested"
    return None


@pytest.fixture
def pg_url() -> Iterator[str]:
    reason = _pg_unreachable()
    if reason:
        pytest.skip(reason)  # the summary prints it (addopts has -ra)
    name = f"attribution_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=10) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{name}"
        finally:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture(params=["duckdb", "postgresql"])
def store_url(request: pytest.FixtureRequest) -> str:
    if request.param == "duckdb":
        return "duckdb://"
    url: str = request.getfixturevalue("pg_url")
    return url


def test_each_store_answers_the_rows_written(tmp_path: Path, store_url: str) -> None:
    """Every query is answered with exactly the rows written to the lake (each column's value
    and type), selected and ordered by the query: the expected values come from the rows this
    test wrote, not from another store."""
    rows = _metric_rows()
    lake = _metrics_lake(tmp_path, rows)
    store = open_store(store_url, lake)
    assert isinstance(store, DuckDBStore if store_url == "duckdb://" else PostgresStore)
    try:
        for day in DAYS:
            assert store.load_day(lake, day) == len(CAMPAIGNS) * len(MODELS)
        assert store.days() == list(DAYS)

        q = RoasQuery(date(2026, 11, 1), date(2026, 11, 2), ("adv1",), None, ("markov",))
        expected = _picked(
            rows,
            ("2026-11-01", "ad1", "markov"),
            ("2026-11-01", "pr1", "markov"),
            ("2026-11-02", "ad1", "markov"),
            ("2026-11-02", "pr1", "markov"),
        )
        assert store.roas(q) == expected
        assert {r["currency"] for r in expected} == {"USD", "EUR"}  # the query spans currencies

        q = RoasQuery(date(2026, 11, 3), date(2026, 11, 3), ("adv1", "adv2"), ("ad2",), None)
        assert store.roas(q) == _picked(rows, *(("2026-11-03", "ad2", m) for m in sorted(MODELS)))

        # no filter but the days: every row of them, by day, campaign and model
        everything = store.roas(RoasQuery(date(2026, 11, 2), date(2026, 11, 3)))
        keys = [(d, c, m) for d in DAYS[1:] for c in sorted(c[0] for c in CAMPAIGNS) for m in sorted(MODELS)]
        assert everything == _picked(rows, *keys)
        assert any(r["roas"] is None for r in everything)
        assert all(
            r["roas"] == pytest.approx(r["revenue_minor"] / r["spend_minor"])
            for r in everything
            if r["spend_minor"]
        )
        for r in everything:  # the contract's types, whatever the engine
            assert isinstance(r["spend_minor"], int), r
            assert isinstance(r["orders"], float), r

        # nothing outside the days, an advertiser with no rows, an empty list of advertisers
        assert store.roas(RoasQuery(date(2026, 10, 1), date(2026, 10, 31))) == []
        assert store.roas(RoasQuery(date(2026, 11, 1), date(2026, 11, 3), ("adv9",))) == []
        assert store.roas(RoasQuery(date(2026, 11, 1), date(2026, 11, 3), ())) == []
    finally:
        store.close()


def test_a_reload_replaces_the_day(tmp_path: Path, store_url: str) -> None:
    """Loading a day again after the nightly job rewrote it serves the new rows only: none of
    the old ones, no duplicate, the other days untouched."""
    old = _metric_rows()
    lake = _metrics_lake(tmp_path, old)
    store = open_store(store_url, lake)
    try:
        for day in DAYS:
            store.load_day(lake, day)
        new = [r for r in _metric_rows(version=1) if r["dt"] == "2026-11-02" and r["model"] != "linear"]
        _write_day(lake, new, "2026-11-02")
        assert store.load_day(lake, "2026-11-02") == len(new)
        assert store.load_day(lake, "2026-11-02") == len(new)  # twice: still no duplicate
        answer = store.roas(RoasQuery(date(2026, 11, 1), date(2026, 11, 3)))
        expected = sorted(
            [r for r in old if r["dt"] != "2026-11-02"] + new,
            key=lambda r: (r["dt"], r["campaign_id"], r["model"]),
        )
        assert answer == expected
        assert store.days() == list(DAYS)
    finally:
        store.close()


def test_a_day_written_before_the_ivt_columns_reads_them_as_zero(tmp_path: Path, store_url: str) -> None:
    """A metric partition from before the invalid-traffic rules (no ``IVT_MEASURES`` columns, or
    columns of nulls), read alone or beside a newer day, serves its rows with those measures 0
    (nothing was flagged then) and the newer day's as written; a null in any other measure the
    contract requires is still an error (mutants killed: every day required to hold the columns;
    every null filled)."""
    rows = _metric_rows()
    lake = _metrics_lake(tmp_path, rows)
    old_day = DAYS[0]
    schema = arrow_schema(METRIC_ROW.without("dt"))
    before = [n for n in schema.names if n not in IVT_MEASURES]
    lake.write_partition(
        partition("metrics/campaign_daily", dt=old_day),
        pa.Table.from_pylist([{k: r[k] for k in before} for r in rows if r["dt"] == old_day]),
    )
    nulls_day = DAYS[2]  # the columns there but every value null (of Arrow's null type)
    lake.write_partition(
        partition("metrics/campaign_daily", dt=nulls_day),
        pa.Table.from_pylist(
            [
                {**{k: r[k] for k in before}, **dict.fromkeys(IVT_MEASURES)}
                for r in rows
                if r["dt"] == nulls_day
            ]
        ),
    )
    store = open_store(store_url, lake)
    try:
        for day in DAYS:
            store.load_day(lake, day)
        answer = store.roas(RoasQuery(date(2026, 11, 1), date(2026, 11, 3)))
        expected = sorted(
            [{**r, **dict.fromkeys(IVT_MEASURES, 0)} if r["dt"] in (old_day, nulls_day) else r for r in rows],
            key=lambda r: (r["dt"], r["campaign_id"], r["model"]),
        )
        assert answer == expected
        assert any(r["ivt_touches"] for r in answer if r["dt"] == DAYS[1])  # the newer days kept theirs
    finally:
        store.close()
    broken = [{**{k: r[k] for k in schema.names}, "spend_minor": None} for r in rows if r["dt"] == DAYS[1]]
    lake.write_partition(partition("metrics/campaign_daily", dt=DAYS[1]), pa.Table.from_pylist(broken))
    with pytest.raises(ValueError, match="spend_minor"):
        metric_table(lake)


def test_roas_sql_binds_every_value() -> None:
    sql, params = roas_sql(
        RoasQuery(date(2026, 1, 1), date(2026, 1, 2), ("a'; DROP",), ("c1", "c2"), None), "%s"
    )
    assert "DROP" not in sql
    assert params == ["2026-01-01", "2026-01-02", "a'; DROP", "c1", "c2"]


def test_druid_up_to_the_client_boundary(tmp_path: Path) -> None:
    lake = _metrics_lake(tmp_path, _metric_rows())
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
