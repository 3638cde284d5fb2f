"""Data-quality checks of a finished day: rows exist, money is sane, spend stays within
caps, billing credits sum to one, and the two layers agree."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from batch.errors import DataQualityError
from shared_logic import Catalog
from shared_logic.contract import ATTRIBUTION, BILLING_MODEL, METRICS, RECONCILIATION
from storage.lake import Lake, partition


def check_day(lake: Lake, catalog: Catalog, day: str, max_discrepancy_pct: float = 1.0) -> dict[str, Any]:
    """Raise ``DataQualityError`` listing every problem of ``day``; return a summary when there is none."""
    problems: list[str] = []
    metrics = lake.read([partition(METRICS, dt=day)]).to_pylist()
    if not metrics:
        problems.append(f"{METRICS.path} has no rows")
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
    facts = lake.read([partition(ATTRIBUTION, model=BILLING_MODEL, dt=day)]).to_pylist()
    sums: dict[str, float] = defaultdict(float)
    for f in facts:
        sums[f["order_id"]] += f["credit"]
    if any(abs(v - 1.0) > 1e-9 for v in sums.values()):
        problems.append("billing credits of some order do not sum to 1")
    recon = lake.manifest(partition(RECONCILIATION, dt=day)) or {}
    pct = float(recon.get("discrepancy_pct", 0.0))
    if pct > max_discrepancy_pct:
        problems.append(f"discrepancy_pct = {pct} exceeds {max_discrepancy_pct}")
    if problems:
        raise DataQualityError(f"day {day}: " + "; ".join(problems))
    return {"day": day, "metric_rows": len(metrics), "orders": len(sums), "discrepancy_pct": pct}
