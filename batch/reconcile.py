"""Reconciliation of day D: the speed layer's ledger against the batch billing rule.

Both ledgers are reduced to one row per order (campaign, net charge, how many
times it was decided) and joined. Every difference gets a cause:

- ``duplicate``: the speed layer decided the order more than once;
- ``late touch``: the touch that wins in batch arrived after the order's
  allowed lateness had passed, so the speed layer could not see it;
- ``late order``: the order (or its cancel) arrived after its allowed lateness,
  so it was settled out of turn;
- ``cap order``: same campaign, different charge: a cap was reached in a
  different order of charges;
- ``missing``: in one ledger only, with no late event to explain it.

Rows go to ``reconciliation/dt=D/``; the summary (discrepancy %, spend
difference per campaign, counts per cause) to its manifest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from batch.errors import NothingToReconcile
from batch.spark import spark_schema
from shared_logic.contract import BATCH_LEDGER, LEDGER_ROW, RAW_ROW, REALTIME_LEDGER, RECONCILIATION
from shared_logic.settings import Settings
from storage.lake import Lake, partition
from storage.raw import raw_partitions


@dataclass
class Reconciliation:
    day: str
    orders: int
    matched: int
    differing: int
    causes: dict[str, int]
    spend_diff_minor: dict[str, int]
    realtime_spend_minor: int
    batch_spend_minor: int
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def discrepancy_pct(self) -> float:
        return 100.0 * self.differing / self.orders if self.orders else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "day": self.day,
            "orders": self.orders,
            "matched": self.matched,
            "differing": self.differing,
            "discrepancy_pct": round(self.discrepancy_pct, 4),
            "causes": self.causes,
            "spend_diff_minor": self.spend_diff_minor,
            "realtime_spend_minor": self.realtime_spend_minor,
            "batch_spend_minor": self.batch_spend_minor,
        }


def _per_order(df: Any, prefix: str) -> Any:
    from pyspark.sql import functions as F  # noqa: N812

    decided = F.col("kind").isin("charge", "cancelled")
    return df.groupBy("order_id").agg(
        F.max(F.when(decided, F.col("campaign_id"))).alias(f"{prefix}_campaign"),
        F.sum("charge_minor").alias(f"{prefix}_charge"),
        F.sum(decided.cast("int")).alias(f"{prefix}_decisions"),
        F.max(F.when(decided, F.col("touch_event_id"))).alias(f"{prefix}_touch"),
        F.first("order_time_ms").alias(f"{prefix}_order_time"),
    )


def reconcile_day(
    spark: Any, lake: Lake, day: date, config: Settings | None = None, window_days: int = 8
) -> Reconciliation:
    """Compare the two ledgers of ``day``, write the rows, return the summary."""
    from pyspark.sql import functions as F  # noqa: N812

    allowed_lateness_ms = (config or Settings()).rules.allowed_lateness_ms
    dt = day.isoformat()
    rt_files = [lake.uri(f) for f in lake.files(partition(REALTIME_LEDGER, dt=dt))]
    bt_files = [lake.uri(f) for f in lake.files(partition(BATCH_LEDGER, dt=dt))]
    if not rt_files and not bt_files:
        raise NothingToReconcile(f"day = {dt}: no realtime or batch ledger in {lake.url}")
    cols = LEDGER_ROW.select(
        "kind", "order_id", "campaign_id", "charge_minor", "touch_event_id", "order_time_ms"
    )
    rt = (
        spark.read.parquet(*rt_files).select(*cols.names)
        if rt_files
        else spark.createDataFrame([], spark_schema(cols))
    )
    bt = (
        spark.read.parquet(*bt_files).select(*cols.names)
        if bt_files
        else spark.createDataFrame([], spark_schema(cols))
    )
    joined = _per_order(rt, "rt").join(_per_order(bt, "bt"), "order_id", "full")

    # Arrival times of the orders, their cancels and the batch's winning touches.
    refs = raw_partitions(lake, day - timedelta(days=window_days), day + timedelta(days=window_days))
    raw = spark.read.schema(spark_schema(RAW_ROW)).parquet(
        *[lake.uri(f) for r in refs for f in lake.files(r)]
    )
    arrivals = raw.select("event_id", "event_type", "order_id", "event_time", "ingested_at_ms")
    late = (F.col("ingested_at_ms") - F.col("event_time")) > allowed_lateness_ms
    late_orders = (
        arrivals.filter(F.col("event_type").isin("order", "order_cancel"))
        .groupBy("order_id")
        .agg(F.max(late.cast("int")).alias("order_late"))
    )
    late_touches = arrivals.filter(F.col("event_type").isin("impression", "click", "promo_view")).select(
        F.col("event_id").alias("bt_touch"), late.cast("int").alias("touch_late")
    )
    rows = (
        joined.join(late_orders, "order_id", "left")
        .join(late_touches, "bt_touch", "left")
        .fillna(0, subset=["order_late", "touch_late", "rt_decisions", "bt_decisions"])
        .withColumn(
            "status",
            F.when(F.col("rt_decisions") > 1, "duplicate")
            .when(
                F.col("rt_campaign").eqNullSafe(F.col("bt_campaign"))
                & F.coalesce(F.col("rt_charge"), F.lit(0)).eqNullSafe(
                    F.coalesce(F.col("bt_charge"), F.lit(0))
                ),
                "match",
            )
            .when(F.col("touch_late") == 1, "late touch")
            .when(F.col("order_late") == 1, "late order")
            .when(F.col("rt_campaign").isNull() | F.col("bt_campaign").isNull(), "missing")
            .when(F.col("rt_campaign") == F.col("bt_campaign"), "cap order")
            .otherwise("missing"),
        )
        .withColumn("dt", F.lit(dt))
        .cache()
    )
    rows.write.mode("overwrite").partitionBy("dt").parquet(lake.uri(RECONCILIATION.path))
    counts = {r["status"]: int(r["count"]) for r in rows.groupBy("status").count().collect()}
    # Each layer's charges count for the campaign that layer chose.
    rt_spend = rows.groupBy(F.col("rt_campaign").alias("campaign_id")).agg(
        F.sum(F.coalesce("rt_charge", F.lit(0))).alias("rt")
    )
    bt_spend = rows.groupBy(F.col("bt_campaign").alias("campaign_id")).agg(
        F.sum(F.coalesce("bt_charge", F.lit(0))).alias("bt")
    )
    spend = (
        rt_spend.join(bt_spend, "campaign_id", "full")
        .filter(F.col("campaign_id").isNotNull())
        .fillna(0, subset=["rt", "bt"])
        .collect()
    )
    diffs = {r["campaign_id"]: int(r["rt"] - r["bt"]) for r in spend if r["rt"] != r["bt"]}
    total = sum(counts.values())
    result = Reconciliation(
        day=dt,
        orders=total,
        matched=counts.get("match", 0),
        differing=total - counts.get("match", 0),
        causes={k: v for k, v in counts.items() if k != "match"},
        spend_diff_minor=diffs,
        realtime_spend_minor=int(sum(r["rt"] for r in spend)),
        batch_spend_minor=int(sum(r["bt"] for r in spend)),
    )
    lake.commit_written(partition(RECONCILIATION, dt=dt), result.summary())
    rows.unpersist()
    return result
