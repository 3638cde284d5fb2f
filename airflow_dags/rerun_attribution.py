"""Rerun (or backfill) attribution for a date range, each day idempotently.

Trigger with params ``start_date``, ``end_date`` and optionally ``models``;
each day is one mapped task (job, reconciliation, load), so a failed day can be
cleared and rerun alone, and a rerun replaces exactly the partitions of its days.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import Param, dag, task


@dag(
    dag_id="rerun_attribution",
    schedule=None,
    start_date=datetime(2026, 11, 1),
    catchup=False,
    params={
        "start_date": Param("2026-11-01", type="string", format="date"),
        "end_date": Param("2026-11-01", type="string", format="date"),
        "models": Param([], type="array", description="empty: the configured default models"),
    },
    tags=["attribution", "batch", "backfill"],
    doc_md=__doc__,
)
def rerun_attribution() -> None:
    @task
    def list_days(params: dict[str, Any] | None = None) -> list[str]:
        from datetime import date

        from batch.raw import days_between

        assert params is not None
        start, end = date.fromisoformat(params["start_date"]), date.fromisoformat(params["end_date"])
        return [d.isoformat() for d in days_between(start, end)]

    @task(max_active_tis_per_dag=1)
    def rerun_day(day: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        from airflow_dags.tasks import load_store, run_job, run_reconcile

        models = list((params or {}).get("models") or []) or None
        job = run_job(day, models)
        recon = run_reconcile(day)
        loaded = load_store(day)
        return {**job, "discrepancy_pct": recon["discrepancy_pct"], "loaded_rows": loaded}

    @task
    def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "days": [r["day"] for r in results],
            "orders": sum(r["orders"] for r in results),
            "max_discrepancy_pct": max((r["discrepancy_pct"] for r in results), default=0.0),
        }

    # At run time Airflow hands summarise the list of mapped results.
    summarise(rerun_day.expand(day=list_days()))  # type: ignore[arg-type]


rerun_attribution()
