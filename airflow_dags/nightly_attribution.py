"""Nightly attribution: wait for D's raw events, compact them, run the job, reconcile, load, check.

D is the day before the run's logical date (the run at 03:00 UTC on D+1
processes D), so a backfill or a cleared run processes the same day again,
idempotently.

The job goes on from the settlement checkpoint of D-1, so its cost does not
grow with the lake's age. Each night it first recomputes the
``ATTRIBUTION_BATCH_REFRESH_DAYS`` days before D (default: the cancel
horizon), oldest first, each from the checkpoint before it: a cancel that
landed after its order's night reaches that night's ledger, facts and metrics
this way (its effect on later caps needs no rerun: the night of the cancel's
own day settles it). Before the job, the landed raw hours of those days are
compacted (the sink lands many small files; ``attribution lake compact`` does
the same by hand). Every recomputed day is reconciled, loaded and checked.
Configuration is the one settings tree, read from ``ATTRIBUTION_*`` on the
workers (``ATTRIBUTION_LAKE_URL``, ``ATTRIBUTION_CATALOG_URL``,
``ATTRIBUTION_STORE_URL``, ``ATTRIBUTION_BATCH_*``); heavy imports happen
inside the tasks.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import Param, dag, task

from shared_logic.settings import load_settings

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
    batch = load_settings().batch  # ATTRIBUTION_BATCH_RAW_WAIT_POKE_S, _TIMEOUT_S

    # A reschedule-mode sensor can be failed by Airflow's scheduler when a poke's executor success
    # is read after the next poke was queued (apache/airflow#71172, open in 3.3: "reported that
    # the task instance ... finished with state success, but the task instance's state attribute
    # is queued"). Seen here under load with a 5 s poke; the DAG's 10-minute retry delay then held
    # the night for 10 minutes. Such a failure costs the sensor one poke interval, not the night.
    @task.sensor(
        poke_interval=batch.raw_wait_poke_s,
        timeout=batch.raw_wait_timeout_s,
        mode="reschedule",
        retries=5,
        retry_delay=timedelta(seconds=batch.raw_wait_poke_s),
    )
    def wait_for_raw(ds: str | None = None) -> bool:
        from airflow_dags.tasks import previous_day, raw_day_landed

        assert ds is not None
        return raw_day_landed(previous_day(ds))

    @task
    def compact_raw(ds: str | None = None) -> dict[str, dict[str, int]]:
        from airflow_dags import tasks

        assert ds is not None
        return tasks.compact_raw(tasks.previous_day(ds))

    @task
    def run_job(ds: str | None = None) -> dict[str, Any]:
        from airflow_dags.tasks import previous_day, run_nightly

        assert ds is not None
        return run_nightly(previous_day(ds))

    @task
    def reconcile(job: dict[str, Any]) -> list[dict[str, Any]]:
        from airflow_dags.tasks import run_reconcile

        return [run_reconcile(day) for day in job["days"]]

    @task
    def load_analytics(job: dict[str, Any]) -> int:
        from airflow_dags.tasks import load_store

        return sum(load_store(day) for day in job["days"])

    @task
    def data_quality(job: dict[str, Any], params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        from airflow_dags.tasks import check_quality

        limit = float((params or {}).get("max_discrepancy_pct", 1.0))
        return [check_quality(day, limit) for day in job["days"]]

    job = run_job()
    wait_for_raw() >> compact_raw() >> job
    # At run time Airflow hands each task the job's result (the days it recomputed).
    reconcile(job) >> load_analytics(job) >> data_quality(job)  # type: ignore[arg-type]


nightly_attribution()
