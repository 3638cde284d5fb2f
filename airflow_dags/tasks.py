"""What the DAGs' tasks do, as plain functions (tested without Airflow too).

Every task reads the one settings tree (``ATTRIBUTION_*`` on the workers).
Heavy imports (pyspark, pandas, duckdb) stay inside the functions: the
scheduler parses DAG files often, and a top-level pyspark import costs about
20x in parse time.
"""

from __future__ import annotations

import logging
from datetime import date, timedelta
from typing import Any

log = logging.getLogger(__name__)


def previous_day(ds: str) -> str:
    """The day a nightly run processes: the one before its run date (the 03:00 run of D+1 does D)."""
    return (date.fromisoformat(ds) - timedelta(days=1)).isoformat()


def _settings(models: list[str] | None = None) -> Any:
    from shared_logic.settings import load_settings

    return load_settings(batch_models=tuple(models) if models else None)


def _lake(settings: Any) -> Any:
    from storage import open_lake

    return open_lake(settings.lake.url, settings.s3)


def raw_day_landed(day: str) -> bool:
    from storage.raw import is_landed

    return is_landed(_lake(_settings()), date.fromisoformat(day))


def run_days(
    start: str,
    end: str,
    models: list[str] | None = None,
    *,
    from_scratch: bool = False,
    follow: bool = True,
) -> dict[str, Any]:
    """Run the job for ``start..end``, oldest first, then the later days whose settlement
    checkpoints were built on state it changed (``follow``; without it, a range with later
    checkpoints is refused, naming them). Returns the days recomputed and a summary of each."""
    from batch.job import run_range
    from batch.spark import spark_session
    from storage.catalog import open_catalog

    settings = _settings(models)
    lake, catalog = _lake(settings), open_catalog(settings.catalog.url)
    results = run_range(
        spark_session(settings.spark),
        lake,
        catalog,
        date.fromisoformat(start),
        date.fromisoformat(end),
        settings,
        from_scratch=from_scratch,
        follow=follow,
    )
    summaries = [
        {
            "day": r.day,
            "orders": r.orders,
            "attributed": r.attributed,
            "spend_minor": _per_currency(r.spend_minor, catalog),
            "models": r.models,
            "seconds": r.seconds,
            "started_from": r.started_from,
        }
        for r in results
    ]
    return {"days": [r.day for r in results], "results": summaries}


def _per_currency(by_campaign: dict[str, int], catalog: Any) -> dict[str, int]:
    """Spend per currency (each campaign's own), never one sum of minor units across currencies."""
    out: dict[str, int] = {}
    for campaign_id, minor in by_campaign.items():
        found = catalog.get(campaign_id)
        currency = found.currency if found is not None else f"unknown campaign {campaign_id}"
        out[currency] = out.get(currency, 0) + int(minor)
    return out


def compact_raw(day: str) -> dict[str, dict[str, int]]:
    """Compact the landed raw hours of the days the nightly run for ``day`` reads anew (its refresh
    window, then ``day``; ``storage.compact``: atomic, idempotent, safe while the sink lands later
    hours), so the job reads a few large files per hour. Per day: partitions, files before and
    after, rows."""
    from storage.compact import compact_day
    from storage.raw import days_between

    lake = _lake(_settings())
    first, last = nightly_days(day)
    out = {}
    for d in days_between(date.fromisoformat(first), date.fromisoformat(last)):
        done = compact_day(lake, d)
        out[d.isoformat()] = {
            "partitions": len(done),
            "files_before": sum(c.files_before for c in done),
            "files_after": sum(c.files_after for c in done),
            "rows": sum(c.rows for c in done),
        }
    return out


def nightly_days(day: str) -> tuple[str, str]:
    """The days the nightly run for ``day`` recomputes: the refresh window before it (late cancels
    reach their order's day this way), from the first day with raw events, then ``day``."""
    from batch.job import raw_days

    settings = _settings()
    d = date.fromisoformat(day)
    window = [d - timedelta(days=n) for n in range(settings.nightly_refresh_days, 0, -1)]
    landed = raw_days(_lake(settings))
    first = next((x for x in window if x in landed), d)
    return first.isoformat(), day


def run_nightly(day: str) -> dict[str, Any]:
    """The nightly job for ``day``: the refresh window's days again, oldest first, then ``day``."""
    first, last = nightly_days(day)
    return run_days(first, last)


def run_job(day: str, models: list[str] | None = None) -> dict[str, Any]:
    """The job for one day (and the later days it makes stale); the summary of ``day``."""
    done = run_days(day, day, models)
    return next(r for r in done["results"] if r["day"] == day)


def run_reconcile(day: str) -> dict[str, Any]:
    from batch.reconcile import reconcile_day
    from batch.spark import spark_session
    from storage.catalog import open_catalog

    settings = _settings()
    return reconcile_day(
        spark_session(settings.spark),
        _lake(settings),
        open_catalog(settings.catalog.url),
        date.fromisoformat(day),
        settings,
    ).summary()


def load_store(day: str) -> int:
    from reporting.stores import open_store

    settings = _settings()
    lake = _lake(settings)
    store = open_store(settings.store.url, lake)
    try:
        return store.load_day(lake, day)
    finally:
        store.close()


def check_quality(day: str, max_discrepancy_pct: float = 1.0) -> dict[str, Any]:
    from batch.quality import check_day
    from storage.catalog import open_catalog

    settings = _settings()
    return check_day(_lake(settings), open_catalog(settings.catalog.url), day, max_discrepancy_pct)
