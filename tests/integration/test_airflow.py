"""The DAGs: integrity of the DagBag, no heavy imports at parse, and real dag.test() runs."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from batch.lake import Lake, partition
from batch.raw import land_events
from realtime.replay import replay
from realtime.settings import RealtimeSettings
from shared_logic.synthetic import SyntheticConfig, generate

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
        "run_job",
        "reconcile",
        "load_analytics",
        "data_quality",
    ]
    assert {t.task_id for t in rerun.tasks} == {"list_days", "rerun_day", "summarise"}
    assert set(rerun.params.keys()) == {"start_date", "end_date", "models"}
    assert nightly.catchup is False
    assert nightly.max_active_runs == 1


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
    url = f"file://{folder}/lake"
    land_events(Lake(url), ((e.payload, e.arrival_ms) for e in traffic.events))
    asyncio.run(
        replay(
            [e.payload for e in traffic.events],
            traffic.catalog,
            RealtimeSettings(redis_url=redis_server.url, user_buckets=16),
            lake_url=url,
            show_progress=False,
        )
    )
    catalog = folder / "catalog.yaml"
    catalog.write_text(yaml.safe_dump({"campaigns": traffic.catalog.to_records()}))
    return url, catalog


@pytest.fixture
def batch_env(small_lake: tuple[str, Path], monkeypatch: pytest.MonkeyPatch, spark: Any) -> str:
    url, catalog = small_lake
    monkeypatch.setenv("ATTRIBUTION_BATCH_LAKE_URL", url)
    monkeypatch.setenv("ATTRIBUTION_BATCH_CATALOG_PATH", str(catalog))
    monkeypatch.setenv("ATTRIBUTION_STORE_URL", "duckdb://")
    return url


def test_nightly_dag_runs_the_day_before_its_logical_date(dagbag: Any, batch_env: str) -> None:
    from airflow.utils.state import DagRunState

    dag = dagbag.dags["nightly_attribution"]
    run = dag.test(logical_date=datetime(2026, 11, 2, 3, tzinfo=UTC))
    assert run.state == DagRunState.SUCCESS
    lake = Lake(batch_env)
    assert lake.is_complete(partition("metrics/campaign_daily", dt="2026-11-01"))
    assert lake.manifest(partition("reconciliation", dt="2026-11-01"))["discrepancy_pct"] == 0.0  # type: ignore[index]
    assert not lake.is_complete(partition("metrics/campaign_daily", dt="2026-11-02"))


def test_rerun_dag_reruns_a_range_with_chosen_models(dagbag: Any, batch_env: str) -> None:
    from airflow.utils.state import DagRunState

    dag = dagbag.dags["rerun_attribution"]
    run = dag.test(run_conf={"start_date": "2026-11-01", "end_date": "2026-11-02", "models": ["last_touch"]})
    assert run.state == DagRunState.SUCCESS
    lake = Lake(batch_env)
    for day in ("2026-11-01", "2026-11-02"):
        assert lake.is_complete(partition("attribution", model="last_touch", dt=day))
        metrics = lake.read([partition("metrics/campaign_daily", dt=day)]).to_pylist()
        assert {m["model"] for m in metrics} == {"billing", "last_touch"}


def test_quality_check_fails_loudly(batch_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_dags.tasks import DataQualityError, check_quality

    with pytest.raises(DataQualityError, match="2026-12-25: metrics/campaign_daily has no rows"):
        check_quality("2026-12-25")
