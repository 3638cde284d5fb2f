"""The DAGs: integrity of the DagBag, no heavy imports at parse, and real dag.test() runs."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from devtools.synthetic import SyntheticConfig, generate
from storage import open_lake, partition
from storage.compact import day_partitions
from storage.lake import COMPACT_PREFIX
from tests.helpers import land_and_replay

pytestmark = [pytest.mark.integration, pytest.mark.slow]
DAGS = Path(__file__).resolve().parents[2] / "airflow_dags"


@pytest.fixture(scope="module")
def airflow_db() -> None:
    from airflow.utils import db

    db.resetdb()


@pytest.fixture(scope="module")
def dagbag(airflow_db: None) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_dagbag_imports_cleanly(dagbag: Any) -> None:
    assert dagbag.import_errors == {}
    nightly = dagbag.dags["nightly_attribution"]
    rerun = dagbag.dags["rerun_attribution"]
    assert [t.task_id for t in nightly.topological_sort()] == [
        "wait_for_raw",
        "compact_raw",
        "run_job",
        "reconcile",
        "load_analytics",
        "data_quality",
    ]
    assert {t.task_id for t in rerun.tasks} == {"run_days", "finish_day", "summarise"}
    assert set(rerun.params.keys()) == {"start_date", "end_date", "models", "from_scratch", "follow"}
    assert nightly.catchup is False
    assert nightly.max_active_runs == 1
    # The sensor retries within a poke interval, not the DAG's 10 minutes (apache/airflow#71172).
    sensor = nightly.get_task("wait_for_raw")
    assert sensor.mode == "reschedule"
    assert sensor.retry_delay == timedelta(seconds=sensor.poke_interval)
    assert sensor.retries >= 3
    assert nightly.get_task("run_job").retry_delay == timedelta(minutes=10)


def test_parsing_the_dags_imports_no_heavy_library() -> None:
    code = (
        "import sys, runpy\n"
        f"sys.path.insert(0, {str(DAGS.parent)!r})\n"
        f"runpy.run_path({str(DAGS / 'nightly_attribution.py')!r})\n"
        f"runpy.run_path({str(DAGS / 'rerun_attribution.py')!r})\n"
        "heavy = [m for m in ('pyspark', 'pandas', 'faust', 'duckdb', 'pyarrow') if m in sys.modules]\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    tagged = [line for line in out.stdout.splitlines() if line.startswith("HEAVY=")]
    assert tagged == ["HEAVY="]


@pytest.fixture(scope="module")
def small_lake(tmp_path_factory: pytest.TempPathFactory, redis_server: Any) -> tuple[str, Path]:
    import redis

    redis.Redis.from_url(redis_server.url).flushall()
    folder = tmp_path_factory.mktemp("af")
    traffic = generate(SyntheticConfig(users=300, days=2))
    lake, _, catalog = land_and_replay(folder, traffic, redis_server.url, keys_user_buckets=16)
    return lake.url, catalog


@pytest.fixture
def batch_env(small_lake: tuple[str, Path], monkeypatch: pytest.MonkeyPatch, spark: Any) -> str:
    url, catalog = small_lake
    monkeypatch.setenv("ATTRIBUTION_LAKE_URL", url)
    monkeypatch.setenv("ATTRIBUTION_CATALOG_URL", str(catalog))
    monkeypatch.setenv("ATTRIBUTION_STORE_URL", "duckdb://")
    return url


def _split_in_two(lake: Any, day: date) -> tuple[Any, int]:
    """Rewrite the biggest raw hour of ``day`` as two files (as a lake sink lands an hour in
    pieces), rows unchanged; its partition and row count."""
    import pyarrow.parquet as pq

    hours = day_partitions(lake, day)
    ref = max(hours, key=lambda h: lake.read([h]).num_rows)
    (name,) = lake.files(ref)
    table = pq.read_table(lake.path(name), filesystem=lake.fs)  # as landed: no partition columns
    half = table.num_rows // 2
    assert half > 0
    for i, piece in enumerate((table.slice(0, half), table.slice(half))):
        pq.write_table(piece, lake.path(ref.path, f"piece-{i}.parquet"), filesystem=lake.fs)
    lake.fs.delete_file(lake.path(name))
    assert len(lake.files(ref)) == 2
    return ref, table.num_rows


def test_nightly_dag_runs_the_day_before_its_logical_date_after_refreshing_the_days_before(
    dagbag: Any, batch_env: str
) -> None:
    from airflow.utils.state import DagRunState

    from batch.checkpoints import read_checkpoint

    lake = open_lake(batch_env)
    split = _split_in_two(lake, date(2026, 11, 2))
    dag = dagbag.dags["nightly_attribution"]
    run = dag.test(logical_date=datetime(2026, 11, 3, 3, tzinfo=UTC))
    assert run.state == DagRunState.SUCCESS
    # D = 2026-11-02; the refresh window (the cancel horizon) holds 2026-11-01, the lake's first day.
    for day in ("2026-11-01", "2026-11-02"):
        assert lake.is_complete(partition("metrics/campaign_daily", dt=day))
        assert lake.manifest(partition("reconciliation", dt=day))["discrepancy_pct"] == 0.0  # type: ignore[index]
    assert not lake.is_complete(partition("metrics/campaign_daily", dt="2026-11-03"))
    # compact_raw ran before the job: the hour landed in two files is one compacted file, its rows kept
    # (the reconciliation above is 0.000% on them), and no hour of either day is left in pieces.
    ref, rows = split
    (only,) = lake.files(ref)
    assert Path(only).name.startswith(COMPACT_PREFIX)
    assert lake.read([ref]).num_rows == rows
    for day in ("2026-11-01", "2026-11-02"):
        for hour in day_partitions(lake, date.fromisoformat(day)):
            assert len(lake.files(hour)) == 1, hour.path
    first, second = read_checkpoint(lake, date(2026, 11, 1)), read_checkpoint(lake, date(2026, 11, 2))
    assert first is not None
    assert second is not None
    assert (first.parent_day, second.parent_day, second.parent_digest) == (None, first.day, first.digest)


def test_rerun_dag_reruns_a_range_with_chosen_models(dagbag: Any, batch_env: str) -> None:
    from airflow.utils.state import DagRunState

    dag = dagbag.dags["rerun_attribution"]
    run = dag.test(run_conf={"start_date": "2026-11-01", "end_date": "2026-11-02", "models": ["last_touch"]})
    assert run.state == DagRunState.SUCCESS
    lake = open_lake(batch_env)
    for day in ("2026-11-01", "2026-11-02"):
        assert lake.is_complete(partition("attribution", model="last_touch", dt=day))
        metrics = lake.read([partition("metrics/campaign_daily", dt=day)]).to_pylist()
        assert {m["model"] for m in metrics} == {"billing", "last_touch"}


def test_a_rerun_without_follow_is_refused_when_later_days_depend_on_it(dagbag: Any, batch_env: str) -> None:
    from airflow.utils.state import DagRunState

    from airflow_dags.tasks import nightly_days, run_days
    from batch.errors import StaleCheckpoints

    assert nightly_days("2026-11-02") == ("2026-11-01", "2026-11-02")
    lake = open_lake(batch_env)
    before = lake.manifest(partition("metrics/campaign_daily", dt="2026-11-01"))
    with pytest.raises(StaleCheckpoints, match="checkpoints of 2026-11-02 stale"):
        run_days("2026-11-01", "2026-11-01", follow=False)
    run = dagbag.dags["rerun_attribution"].test(
        run_conf={"start_date": "2026-11-01", "end_date": "2026-11-01", "follow": False}
    )
    assert run.state == DagRunState.FAILED
    assert lake.manifest(partition("metrics/campaign_daily", dt="2026-11-01")) == before


def test_quality_check_fails_loudly(batch_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_dags.tasks import check_quality
    from batch.errors import DataQualityError

    with pytest.raises(DataQualityError, match="2026-12-25: metrics/campaign_daily has no rows"):
        check_quality("2026-12-25")
