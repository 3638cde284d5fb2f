"""The nightly job's reshaping steps, as pure functions over pandas: journeys to fact rows
(one per order and credited channel, under every model) and aggregates to metric rows.

Spark calls them inside ``mapInPandas`` or on a small collected frame; tests call them
directly. The rows they build are the contract's ``FactRow`` and ``MetricRow``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pandas as pd

from attribution_models import AttributionModel, Journey, TouchPoint, get_model
from shared_logic import Catalog
from shared_logic.contract import BILLING_MODEL, COUNTERS, FACT_ROW, METRIC_ROW, ivt_columns, metric_row, roas
from shared_logic.settings import BatchSettings

FACT_COLUMNS = list(FACT_ROW.names)


def models_of(settings: BatchSettings) -> dict[str, AttributionModel]:
    """Fresh instances of the configured models, with their parameters."""
    params: dict[str, dict[str, Any]] = {
        "markov": {"order": settings.markov_order},
        "time_decay": {"half_life_ms": settings.time_decay_half_life_ms},
    }
    return {name: get_model(name, **params.get(name, {})) for name in settings.models}


def credit_partitions(
    models: dict[str, AttributionModel], day: str
) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """``mapInPandas`` body: journeys of attributed orders to fact rows, billing and every model."""

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for pdf in batches:
            rows: list[dict[str, Any]] = []
            for r in pdf.itertuples(index=False):
                rec: Any = r
                channels = list(rec.path_channels)
                journey = Journey(
                    tuple(TouchPoint(c, int(t)) for c, t in zip(channels, rec.path_times, strict=True)),
                    True,
                    float(rec.amount_minor),
                    int(rec.order_time_ms),
                )
                base = {
                    "order_id": rec.order_id,
                    "user_id": rec.user_id,
                    "amount_minor": int(rec.amount_minor),
                    "currency": rec.currency,
                    "order_time_ms": int(rec.order_time_ms),
                    "cancelled": bool(rec.cancelled),
                    "dt": day,
                }
                rows.append(
                    {
                        **base,
                        "channel": rec.campaign_id,
                        "credit": 1.0,
                        "credited_revenue_minor": float(rec.amount_minor),
                        "model": BILLING_MODEL,
                    }
                )
                for name, model in models.items():
                    credits: dict[str, float] = {}
                    for ch, c in zip(channels, model.touch_credits(journey), strict=True):
                        credits[ch] = credits.get(ch, 0.0) + c
                    for ch, c in credits.items():
                        if c > 0:
                            rows.append(
                                {
                                    **base,
                                    "channel": ch,
                                    "credit": c,
                                    "credited_revenue_minor": c * rec.amount_minor,
                                    "model": name,
                                }
                            )
            if rows:
                yield pd.DataFrame(rows, columns=FACT_COLUMNS)

    return run


def metrics_frame(
    rows: pd.DataFrame,
    catalog: Catalog,
    dt: str,
    models: list[str],
    ivt: Mapping[str, Mapping[str, int]] | None = None,
) -> pd.DataFrame:
    """One metric row per campaign and model from per-campaign aggregates (counts, spend, credit per
    model); campaigns with no credit still get their counts and spend. ``ivt``: the day's
    invalid-traffic measures per campaign (``contract.ivt_measures``), on every model's row as
    spend is; a campaign with verdicts only still gets its rows."""
    ivt = ivt or {}
    by_campaign: dict[str, dict[str, Any]] = {
        cid: {**dict.fromkeys([*COUNTERS, "spend_minor", "capped_orders"], 0), "models": {}}
        for cid in ivt
        if cid in catalog
    }
    for r in rows.to_dict("records"):
        cid = r["campaign_id"]
        if not cid or cid not in catalog:
            continue
        slot = by_campaign.setdefault(
            cid, {**dict.fromkeys([*COUNTERS, "spend_minor", "capped_orders"], 0), "models": {}}
        )
        for k in (*COUNTERS, "spend_minor", "capped_orders"):
            slot[k] = max(slot[k], int(r.get(k) or 0))
        if r.get("model"):
            slot["models"][r["model"]] = (float(r["orders"]), float(r["revenue_minor"]))
    out = []
    for c in catalog:
        counted = by_campaign.get(c.campaign_id)
        if counted is None:
            continue
        for model in models:
            orders, revenue = counted["models"].get(model, (0.0, 0.0))
            spend = counted["spend_minor"]
            out.append(
                metric_row(
                    dt=dt,
                    campaign_id=c.campaign_id,
                    advertiser_id=c.advertiser_id,
                    lever=str(c.lever),
                    currency=c.currency,
                    model=model,
                    **{name: counted[etype] for etype, name in COUNTERS.items()},
                    orders=orders,
                    revenue_minor=revenue,
                    spend_minor=spend,
                    capped_orders=counted["capped_orders"],
                    roas=roas(revenue, spend),
                    **ivt_columns(ivt, c.campaign_id),
                )
            )
    return pd.DataFrame(out, columns=list(METRIC_ROW.names))
