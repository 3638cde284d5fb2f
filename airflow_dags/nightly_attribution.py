"""Nightly attribution: wait for D's raw events, run the job, reconcile, load, check.

D is the day before the run's logical date (the run at 03:00 UTC on D+1
processes D), so a backfill or a cleared run processes the same day again,
idempotently.
Configuration comes from the environment (``ATTRIBUTION_BATCH_*``,
``ATTRIBUTION_STORE_URL``); heavy imports happen inside the tasks.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import Param, dag, task

DEFAULT_ARGS = {"retries": 2, "retry_delay": timedelta(minutes=10)}


@dag(
    dag_id="nightly_attribution",
    schedule="0 3 * * *",
    start_date=datetime(2026, 11, 1),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    params={"max_discrepancy_pct": Param(1.0, type="number", minimum=0)},
    tags=["attribution", "batch"],
    doc_md=__doc__,
)
def nightly_attribution() -> None:
    @task.sensor(poke_interval=300, timeout=6 * 3600, mode="reschedule")
    def wait_for_raw(ds: str | None = None) -> bool:
        from airflow_dags.tasks import previous_day, raw_day_landed

        assert ds is not None
        return raw_day_landed(previous_day(ds))

    @task
    def run_job(ds: str | None = None) -> dict[str, Any]:
        from airflow_dags.tasks import previous_day
        from airflow_dags.tasks import run_job as job

        assert ds is not None
        return job(previous_day(ds))

    @task
    def reconcile(ds: str | None = None) -> dict[str, Any]:
        from airflow_dags.tasks import previous_day, run_reconcile

        assert ds is not None
        return run_reconcile(previous_day(ds))

    @task
    def load_analytics(ds: str | None = None) -> int:
        from airflow_dags.tasks import load_store, previous_day

        assert ds is not None
        return load_store(previous_day(ds))

    @task
    def data_quality(ds: str | None = None, params: dict[str, Any] | None = None) -> dict[str, Any]:
        from airflow_dags.tasks import check_quality, previous_day

        assert ds is not None
        return check_quality(previous_day(ds), float((params or {}).get("max_discrepancy_pct", 1.0)))

    wait_for_raw() >> run_job() >> reconcile() >> load_analytics() >> data_quality()


nightly_attribution()
