"""What the DAGs' tasks do, as plain functions (tested without Airflow too).

Heavy imports (pyspark, pandas, duckdb) stay inside the functions: the
scheduler parses DAG files often, and a top-level pyspark import costs about
20x in parse time.
"""

from __future__ import annotations

import logging
import os
from datetime import date
from typing import Any

from shared_logic.errors import AttributionError

log = logging.getLogger(__name__)


class DataQualityError(AttributionError):
    """A data-quality check of a day failed."""


def previous_day(ds: str) -> str:
    """The day a nightly run processes: the one before its run date (the 03:00 run of D+1 does D)."""
    from datetime import timedelta

    return (date.fromisoformat(ds) - timedelta(days=1)).isoformat()


def _settings(models: list[str] | None = None) -> Any:
    from batch.settings import BatchSettings

    settings = BatchSettings()
    return settings.model_copy(update={"models": tuple(models)}) if models else settings


def _catalog(settings: Any) -> Any:
    from shared_logic import load_catalog

    if not settings.catalog_path:
        raise AttributionError("catalog_path is empty: set ATTRIBUTION_BATCH_CATALOG_PATH")
    return load_catalog(settings.catalog_path)


def raw_day_landed(day: str) -> bool:
    from batch.lake import Lake
    from batch.raw import is_landed

    return is_landed(Lake(_settings().lake_url), date.fromisoformat(day))


def run_job(day: str, models: list[str] | None = None) -> dict[str, Any]:
    from batch.job import run_day
    from batch.lake import Lake
    from batch.spark import spark_session

    settings = _settings(models)
    result = run_day(
        spark_session(), Lake(settings.lake_url), _catalog(settings), date.fromisoformat(day), settings
    )
    return {
        "day": result.day,
        "orders": result.orders,
        "attributed": result.attributed,
        "spend_minor": sum(result.spend_minor.values()),
        "models": result.models,
        "seconds": result.seconds,
    }


def run_reconcile(day: str) -> dict[str, Any]:
    from batch.lake import Lake
    from batch.reconcile import reconcile_day
    from batch.spark import spark_session

    settings = _settings()
    return reconcile_day(
        spark_session(), Lake(settings.lake_url), date.fromisoformat(day), settings.allowed_lateness_ms
    ).summary()


def load_store(day: str) -> int:
    from batch.lake import Lake
    from reporting.stores import open_store

    lake = Lake(_settings().lake_url)
    store = open_store(os.environ.get("ATTRIBUTION_STORE_URL", "duckdb://"), lake)
    try:
        return store.load_day(lake, day)
    finally:
        store.close()


def check_quality(day: str, max_discrepancy_pct: float = 1.0) -> dict[str, Any]:
    """Rows exist, money is sane, spend stays within caps, credits sum to one, the layers agree."""
    from collections import defaultdict

    from batch.lake import Lake, partition

    settings = _settings()
    lake = Lake(settings.lake_url)
    catalog = _catalog(settings)
    problems: list[str] = []
    metrics = lake.read([partition("metrics/campaign_daily", dt=day)]).to_pylist()
    if not metrics:
        problems.append("metrics/campaign_daily has no rows")
    for m in metrics:
        campaign = catalog.get(m["campaign_id"])
        if campaign is None:
            problems.append(f"campaign_id = {m['campaign_id']!r} is not in the catalog")
            continue
        if m["spend_minor"] < 0:
            problems.append(f"{m['campaign_id']}: spend_minor = {m['spend_minor']} is negative")
        cap = campaign.budget.lifetime_minor
        if cap is not None and m["spend_minor"] > cap:
            problems.append(
                f"{m['campaign_id']}: spend_minor = {m['spend_minor']} passes the lifetime cap {cap}"
            )
    facts = lake.read([partition("attribution", model="billing", dt=day)]).to_pylist()
    sums: dict[str, float] = defaultdict(float)
    for f in facts:
        sums[f["order_id"]] += f["credit"]
    if any(abs(v - 1.0) > 1e-9 for v in sums.values()):
        problems.append("billing credits of some order do not sum to 1")
    recon = lake.manifest(partition("reconciliation", dt=day)) or {}
    pct = float(recon.get("discrepancy_pct", 0.0))
    if pct > max_discrepancy_pct:
        problems.append(f"discrepancy_pct = {pct} exceeds {max_discrepancy_pct}")
    if problems:
        raise DataQualityError(f"day {day}: " + "; ".join(problems))
    return {"day": day, "metric_rows": len(metrics), "orders": len(sums), "discrepancy_pct": pct}
