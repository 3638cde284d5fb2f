"""Rerun (or backfill) attribution for a date range, each day idempotently.

Trigger with params ``start_date``, ``end_date`` and optionally ``models``,
``from_scratch`` and ``follow``. One task runs the job for the days in order
(each goes on from the settlement checkpoint of the day before, so they cannot
run in parallel), then every later day whose checkpoint was built on state the
rerun changed (``follow``, the default; it stops at the first later day built on
unchanged state). With ``follow`` off, a range that later checkpoints depend on
is refused and the error names the days that would go stale. ``from_scratch``
settles the first day from the start of history. Each recomputed day is then
reconciled and loaded by one mapped task, so a failed one can be cleared alone.
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
        "from_scratch": Param(False, type="boolean", description="settle the first day from the start"),
        "follow": Param(True, type="boolean", description="recompute later days made stale, or refuse"),
    },
    tags=["attribution", "batch", "backfill"],
    doc_md=__doc__,
)
def rerun_attribution() -> None:
    @task
    def run_days(params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        from airflow_dags.tasks import run_days as job

        assert params is not None
        done = job(
            params["start_date"],
            params["end_date"],
            list(params.get("models") or []) or None,
            from_scratch=bool(params.get("from_scratch", False)),
            follow=bool(params.get("follow", True)),
        )
        results: list[dict[str, Any]] = done["results"]
        return results

    @task(max_active_tis_per_dag=1)
    def finish_day(result: dict[str, Any]) -> dict[str, Any]:
        from airflow_dags.tasks import load_store, run_reconcile

        recon = run_reconcile(result["day"])
        loaded = load_store(result["day"])
        return {**result, "discrepancy_pct": recon["discrepancy_pct"], "loaded_rows": loaded}

    @task
    def summarise(results: list[dict[str, Any]], params: dict[str, Any] | None = None) -> dict[str, Any]:
        assert params is not None
        return {
            "days": [r["day"] for r in results],
            "followed": [r["day"] for r in results if r["day"] > params["end_date"]],
            "orders": sum(r["orders"] for r in results),
            "max_discrepancy_pct": max((r["discrepancy_pct"] for r in results), default=0.0),
        }

    # At run time Airflow hands summarise the list of mapped results.
    summarise(finish_day.expand(result=run_days()))  # type: ignore[arg-type]


rerun_attribution()
