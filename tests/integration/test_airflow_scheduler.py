"""A rerun, then the nightly run, through Airflow's own machinery (issue 19, item 2).

``airflow standalone`` (scheduler, DAG processor, API server with the execution API,
triggerer) with LocalExecutor and PostgreSQL as the metadata database (the machine's server
on 127.0.0.1:5432; a database of its own per run, dropped after), ``airflow dags trigger
rerun_attribution`` for two days, then the run is followed in the metadata database to its
end: every task succeeded in its own process, the lake holds both days' committed outputs
with a reconciliation at 0 %, and the tasks' results (XCom) say each day was loaded into the
analytics store. Meanwhile ``nightly_attribution`` (both DAGs are unpaused at creation) has its
run of the latest 03:00 UTC created, whose day D (the one before) is the lake's second day with
its last hour's landing marker held back; the sensor is seen waiting (``up_for_reschedule``, poking every
``ATTRIBUTION_BATCH_RAW_WAIT_POKE_S``), the marker is written, and the run goes on: compaction,
the job for D-1 and D, reconciliation at 0 %, the store, the checks. ``dag.test()``
(tests/integration/test_airflow.py) runs none of this.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from devtools.synthetic import SyntheticConfig, generate
from shared_logic.contract import LANDED
from storage import open_lake, partition
from storage.raw import is_landed
from tests.helpers import land_and_replay, stop_group

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PG = "postgres@127.0.0.1:5432"
BIN = Path(sys.executable).parent


def _nightly_day(now: datetime) -> date:
    """D of the run an unpaused ``nightly_attribution`` starts with at ``now`` (catchup off): the run
    of the latest 03:00 UTC passed processes the day before it."""
    run = now.replace(hour=3, minute=0, second=0, microsecond=0)
    return (run if run <= now else run - timedelta(days=1)).date() - timedelta(days=1)


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


# A rerun of two days and a nightly run, each task its own process: about 4 minutes on a quiet
# 2-core machine, over 10 with the rest of the suite beside it.
@pytest.mark.timeout(1800)
def test_rerun_through_the_scheduler_on_postgresql(metadata_db: str, redis_url: str, tmp_path: Path) -> None:
    from devtools.servers import free_port

    night = _nightly_day(datetime.now(UTC))
    days = ((night - timedelta(days=1)).isoformat(), night.isoformat())
    traffic = generate(SyntheticConfig(users=300, days=2, start=night - timedelta(days=1)))
    lake, _, catalog = land_and_replay(tmp_path / "data", traffic, redis_url)
    last_hour = partition(LANDED, dt=days[1], hour="23")
    marker = lake.manifest(last_hour)
    assert marker is not None
    lake.fs.delete_dir(lake.path(last_hour.path))  # D not landed yet, as far as the sensor knows
    assert not is_landed(lake, night)
    url = f"postgresql+psycopg://{PG}/{metadata_db}"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "ATTRIBUTION_"))}
    env |= {
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": url,
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": url,
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        # Both DAGs run as soon as parsed: the nightly one's run is created, and its sensor waits
        # on D's missing marker, while the rerun runs (no CLI calls to unpause them).
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
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
        "ATTRIBUTION_SPARK_SHUFFLE_PARTITIONS": "2",  # as the suite's (tests/conftest.py)
        # The sensor pokes through the whole rerun: a poke every 15 s, not 5, keeps the pokes few
        # (each may be failed by apache/airflow#71172, and its retries are 5).
        "ATTRIBUTION_BATCH_RAW_WAIT_POKE_S": "15",
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
        conf = json.dumps({"start_date": days[0], "end_date": days[1]})
        _airflow(["dags", "trigger", "rerun_attribution", "-c", conf], env)
        runs = "select state from dag_run where dag_id = 'rerun_attribution'"

        def finished() -> str | None:
            states = [s for (s,) in _pg(runs, metadata_db)]
            return states[0] if states and states[0] in ("success", "failed") else None

        triggered = time.monotonic()
        state = _wait("the run finished", finished, proc, log, 600)
        tis = _pg(
            "select task_id, map_index, state, pid from task_instance where dag_id = 'rerun_attribution' "
            "order by task_id, map_index",
            metadata_db,
        )
        print(
            f"standalone up and DAG parsed in {parsed_s:.0f}s; run took {time.monotonic() - triggered:.0f}s"
        )
        assert state == "success", (tis, log.read_text()[-4000:])
        nightly = _nightly(metadata_db, proc, log, lake, last_hour, marker, night)
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
    for day in days:
        for dataset in ("batch_ledger", "metrics/campaign_daily", "settlement_state"):
            assert lake.is_complete(partition(dataset, dt=day)), (dataset, day)
        assert lake.manifest(partition("reconciliation", dt=day))["discrepancy_pct"] == 0.0  # type: ignore[index]
    xcoms = _pg(
        "select task_id, map_index, value from xcom "
        "where key = 'return_value' and dag_id = 'rerun_attribution'",
        metadata_db,
    )
    values = {(t, m): json.loads(v) if isinstance(v, str | bytes) else v for t, m, v in xcoms}
    for i, day in enumerate(days):
        finish = values[("finish_day", i)]
        assert finish["day"] == day
        assert finish["loaded_rows"] > 0  # the analytics store took the day's metric rows
        assert finish["discrepancy_pct"] == 0.0
    summary = values[("summarise", -1)]
    assert summary["days"] == list(days)
    assert summary["orders"] > 20
    assert open_lake(lake.url).partitions("batch_ledger") == [{"dt": d} for d in days]
    assert nightly["waited"] >= 1  # the sensor was seen waiting on the missing marker
    assert nightly["tasks"] == dict.fromkeys(
        ("wait_for_raw", "compact_raw", "run_job", "reconcile", "load_analytics", "data_quality"), "success"
    )
    assert lake.manifest(partition("reconciliation", dt=days[1]))["discrepancy_pct"] == 0.0  # type: ignore[index]


def _print_timings(db: str) -> None:
    """Each task's queue wait and run time, in the order they started (where the minutes go)."""
    rows = _pg(
        "select dag_id, task_id, map_index, queued_dttm, start_date, end_date from task_instance "
        "order by start_date",
        db,
    )
    for dag_id, task_id, index, queued, start, end in rows:
        if start is None or end is None:
            continue
        waited = (start - queued).total_seconds() if queued else 0.0
        name = f"{dag_id}.{task_id}" + (f"[{index}]" if index >= 0 else "")
        ran = (end - start).total_seconds()
        print(f"  {start:%H:%M:%S} {name:<40} queued {waited:5.1f}s ran {ran:5.1f}s")


def _nightly(
    db: str,
    proc: subprocess.Popen[bytes],
    log: Path,
    lake: Any,
    last_hour: Any,
    marker: dict[str, Any],
    day: date,
) -> dict[str, Any]:
    """See ``nightly_attribution``'s first run (created unpaused, while the rerun ran) with its
    sensor waiting for ``day``'s missing marker and nothing after it started, write the marker,
    follow the run to its end. Its task states, and how many times the sensor was seen waiting."""
    runs = "select run_id, logical_date, state from dag_run where dag_id = 'nightly_attribution'"
    ((run_id, logical, _),) = _wait("the nightly run created", lambda: _pg(runs, db), proc, log, 180)
    if logical.date() - timedelta(days=1) != day:  # 03:00 UTC passed since the data was generated
        pytest.skip(f"the scheduler's nightly run is for {logical}, the data for D = {day}")
    sensor = (
        "select state, try_number from task_instance where dag_id = 'nightly_attribution' "
        f"and run_id = '{run_id}' and task_id = 'wait_for_raw'"
    )
    _wait(
        "the sensor waiting",
        lambda: [r for r in _pg(sensor, db) if r[0] == "up_for_reschedule"],
        proc,
        log,
        300,
    )
    started = _pg(
        f"select task_id from task_instance where run_id = '{run_id}' and task_id != 'wait_for_raw' "
        "and state is not null",
        db,
    )
    assert started == [], started  # the sensor holds the run while the marker is missing
    waited = _pg(
        "select count(*) from task_reschedule r join task_instance t on r.ti_id = t.id "
        f"where t.run_id = '{run_id}' and t.task_id = 'wait_for_raw'",
        db,
    )[0][0]
    lake.write_marker(last_hour, marker)  # D's last hour lands: the next poke finds the day complete

    this_run = f"{runs} and run_id = '{run_id}'"  # a later run may exist once 03:00 UTC passes

    def finished() -> str | None:
        states = [s for (_, _, s) in _pg(this_run, db)]
        return states[0] if states[0] in ("success", "failed") else None

    state = _wait("the nightly run finished", finished, proc, log, 900)
    tis = _pg(f"select task_id, state from task_instance where run_id = '{run_id}' order by task_id", db)
    _print_timings(db)
    assert state == "success", (tis, log.read_text()[-4000:])
    return {"waited": waited, "tasks": dict(tis)}
