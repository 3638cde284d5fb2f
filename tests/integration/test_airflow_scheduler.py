"""A rerun through Airflow's own machinery, as a data engineer triggers it (issue 19, item 2).

``airflow standalone`` (scheduler, DAG processor, API server with the execution API,
triggerer) with LocalExecutor and PostgreSQL as the metadata database (the machine's server
on 127.0.0.1:5432; a database of its own per run, dropped after), ``airflow dags trigger
rerun_attribution`` for two days, then the run is followed in the metadata database to its
end: every task succeeded in its own process, the lake holds both days' committed outputs
with a reconciliation at 0 %, and the tasks' results (XCom) say each day was loaded into the
analytics store. ``dag.test()`` (tests/integration/test_airflow.py) runs none of this.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.synthetic import SyntheticConfig, generate
from storage import open_lake, partition
from tests.helpers import land_and_replay, stop_group

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PG = "postgres@127.0.0.1:5432"
DAYS = ("2026-11-01", "2026-11-02")
BIN = Path(sys.executable).parent


def _pg(sql: str, db: str = "postgres") -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(f"postgresql://{PG}/{db}", autocommit=True, connect_timeout=3) as con:
        cur = con.execute(sql)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


@pytest.fixture
def metadata_db() -> Iterator[str]:
    """A fresh PostgreSQL database for Airflow's metadata, dropped afterwards."""
    try:
        _pg("select 1")
    except Exception as exc:  # the machine's server is what the issue runs against
        pytest.skip(f"no PostgreSQL on {PG}: {exc}")
    name = f"airflow_{uuid.uuid4().hex[:10]}"
    _pg(f"create database {name}")
    try:
        yield name
    finally:
        _pg(f"drop database if exists {name} with (force)")


def _airflow(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run([str(BIN / "airflow"), *args], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"airflow {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _wait(what: str, ok: Any, proc: subprocess.Popen[bytes], log: Path, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"airflow standalone exited waiting for {what}:\n{log.read_text()[-4000:]}")
        value = ok()
        if value:
            return value
        time.sleep(2)
    raise AssertionError(f"{what}: not within {timeout_s}s:\n{log.read_text()[-4000:]}")


def test_rerun_through_the_scheduler_on_postgresql(metadata_db: str, redis_url: str, tmp_path: Path) -> None:
    from devtools.servers import free_port

    traffic = generate(SyntheticConfig(users=300, days=2))
    lake, _, catalog = land_and_replay(tmp_path / "data", traffic, redis_url)
    url = f"postgresql+psycopg://{PG}/{metadata_db}"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "ATTRIBUTION_"))}
    env |= {
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": url,
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": url,
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(Path(__file__).resolve().parents[2] / "airflow_dags"),
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "PATH": f"{BIN}:{env.get('PATH', '')}",
        "ATTRIBUTION_LAKE_URL": lake.url,
        "ATTRIBUTION_CATALOG_URL": str(catalog),
        "ATTRIBUTION_STORE_URL": "duckdb://",
        "ATTRIBUTION_SPARK_DRIVER_MEMORY": "1g",
        "ATTRIBUTION_SPARK_SHUFFLE_PARTITIONS": "4",
    }
    _airflow(["db", "migrate"], env)
    log = tmp_path / "standalone.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "airflow"), "standalone"], env=env, stdout=out, stderr=subprocess.STDOUT,
            cwd=tmp_path, start_new_session=True,
        )  # fmt: skip
    try:
        started = time.monotonic()
        dag_ids = "select dag_id from dag where dag_id = 'rerun_attribution' and not is_stale"
        _wait("the DAG parsed", lambda: _pg(dag_ids, metadata_db), proc, log, 180)
        parsed_s = time.monotonic() - started
        _airflow(["dags", "unpause", "rerun_attribution"], env)
        conf = json.dumps({"start_date": DAYS[0], "end_date": DAYS[1]})
        _airflow(["dags", "trigger", "rerun_attribution", "-c", conf], env)
        runs = "select state from dag_run where dag_id = 'rerun_attribution'"

        def finished() -> str | None:
            states = [s for (s,) in _pg(runs, metadata_db)]
            return states[0] if states and states[0] in ("success", "failed") else None

        triggered = time.monotonic()
        state = _wait("the run finished", finished, proc, log, 600)
        tis = _pg(
            "select task_id, map_index, state, pid from task_instance order by task_id, map_index",
            metadata_db,
        )
        print(
            f"standalone up and DAG parsed in {parsed_s:.0f}s; run took {time.monotonic() - triggered:.0f}s"
        )
        assert state == "success", (tis, log.read_text()[-4000:])
    finally:
        stop_group(proc)

    assert [(t, m) for t, m, _, _ in tis] == [
        ("finish_day", 0),
        ("finish_day", 1),
        ("run_days", -1),
        ("summarise", -1),
    ]
    assert all(s == "success" for _, _, s, _ in tis)
    assert len({p for *_, p in tis}) == 4  # four task processes, none of them this one
    assert os.getpid() not in {p for *_, p in tis}
    for day in DAYS:
        for dataset in ("batch_ledger", "metrics/campaign_daily", "settlement_state"):
            assert lake.is_complete(partition(dataset, dt=day)), (dataset, day)
        assert lake.manifest(partition("reconciliation", dt=day))["discrepancy_pct"] == 0.0  # type: ignore[index]
    xcoms = _pg("select task_id, map_index, value from xcom where key = 'return_value'", metadata_db)
    values = {(t, m): v if isinstance(v, dict | list) else json.loads(v) for t, m, v in xcoms}
    for i, day in enumerate(DAYS):
        finish = values[("finish_day", i)]
        assert finish["day"] == day
        assert finish["loaded_rows"] > 0  # the analytics store took the day's metric rows
        assert finish["discrepancy_pct"] == 0.0
    summary = values[("summarise", -1)]
    assert summary["days"] == list(DAYS)
    assert summary["orders"] > 20
    assert open_lake(lake.url).partitions("batch_ledger") == [{"dt": d} for d in DAYS]
