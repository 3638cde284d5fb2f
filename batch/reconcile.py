"""Reconciliation of day D: the speed layer's ledger against the batch billing rule.

Both ledgers are reduced to one row per order (campaign, net charge, the order's
amount and currency, how many times it was decided) and joined. Every difference
gets one cause, the first that applies:

- ``duplicate``: a layer decided the order more than once (``duplicate_in`` says
  which: ``realtime``, ``batch`` or ``both``);
- ``amount``: both decided it, on a different amount or currency;
- ``late touch``: the touch that wins in batch arrived after its allowed
  lateness had passed, so the speed layer could not see it in time;
- ``late order``: the order (or its cancel) arrived after its allowed lateness,
  so it was settled out of turn;
- ``missing``: in one ledger only, with no late event to explain it
  (``missing_from`` says from which: ``realtime`` or ``batch``);
- ``campaign``: both decided it, for different campaigns, with no late event to
  explain it;
- ``cap``: same campaign, different charge, and a cap was involved: either
  layer's ledger row of the order says ``capped``, or either layer's spend of
  that campaign reached its daily cap on the order's budget day (or its
  lifetime cap) in the ledgers read;
- ``charge``: same campaign, different charge, and no cap involved: a
  difference nothing here explains.

The raw events read for the late flags follow the policy, as the nightly job's
do: touches and orders dated from the look-back (the longest window of the
catalog plus the allowed lateness, ``AttributionPolicy.lookback_days``) before
D up to D, cancels up to the cancel horizon after D. Events the wire rules
refuse (dated too far in the future) take part in neither layer and are not read.

Rows go to ``reconciliation/dt=D/``; the summary (discrepancy %, spend difference
per campaign, each layer's spend per currency, counts per cause) to its manifest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any, Final

from batch.errors import NothingToReconcile
from batch.rules import in_future
from batch.spark import spark_schema
from shared_logic import Catalog
from shared_logic.contract import (
    BATCH_LEDGER,
    EVENT_CLASSES,
    LEDGER_ROW,
    RAW_ROW,
    REALTIME_LEDGER,
    RECONCILIATION,
)
from shared_logic.events import Order, OrderCancel
from shared_logic.rules import TOUCH_KINDS
from shared_logic.settings import Settings
from storage.lake import Lake, partition
from storage.raw import raw_partitions

_TYPE_OF: Final = {cls: name for name, cls in EVENT_CLASSES.items()}
ORDER_TYPE: Final = _TYPE_OF[Order]
CANCEL_TYPE: Final = _TYPE_OF[OrderCancel]
TOUCH_TYPES: Final = tuple(TOUCH_KINDS)
#: Ledger kinds that decide an order (a refund only follows one).
DECIDED_KINDS: Final = ("charge", "cancelled")
SIDES: Final = {"rt": "realtime", "bt": "batch"}
_LEDGER_COLUMNS: Final = (
    "kind",
    "order_id",
    "user_id",
    "campaign_id",
    "charge_minor",
    "amount_minor",
    "currency",
    "capped",
    "budget_day",
    "touch_event_id",
    "order_time_ms",
)


@dataclass
class Reconciliation:
    day: str
    orders: int
    matched: int
    differing: int
    causes: dict[str, int]
    spend_diff_minor: dict[str, int]
    #: Each layer's net charges per currency (never one sum across currencies).
    realtime_spend_minor: dict[str, int]
    batch_spend_minor: dict[str, int]
    #: Orders decided more than once, per layer (``realtime``, ``batch``; one in both counts twice).
    duplicates: dict[str, int] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    #: Orders in one ledger only (cause ``missing``), per the layer they are missing from.
    missing: dict[str, int] = field(default_factory=dict)

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
            "duplicates": self.duplicates,
            "missing_from": self.missing,
            "spend_diff_minor": self.spend_diff_minor,
            "realtime_spend_minor": self.realtime_spend_minor,
            "batch_spend_minor": self.batch_spend_minor,
        }


def _read_ledger(spark: Any, lake: Lake, dataset: Any, dt: str) -> tuple[Any, bool]:
    files = [lake.uri(f) for f in lake.files(partition(dataset, dt=dt))]
    cols = LEDGER_ROW.select(*_LEDGER_COLUMNS)
    if not files:
        return spark.createDataFrame([], spark_schema(cols)), False
    return spark.read.parquet(*files).select(*cols.names), True


def _per_order(df: Any, prefix: str) -> Any:
    """One row per order of one layer's ledger: what it decided and what it charged, net."""
    from pyspark.sql import functions as F  # noqa: N812

    decided = F.col("kind").isin(*DECIDED_KINDS)

    def of_decision(name: str) -> Any:
        return F.max(F.when(decided, F.col(name))).alias(f"{prefix}_{name.removesuffix('_minor')}")

    return df.groupBy("order_id").agg(
        F.max(F.when(decided, F.col("campaign_id"))).alias(f"{prefix}_campaign"),
        F.sum("charge_minor").alias(f"{prefix}_charge"),
        F.sum(decided.cast("int")).alias(f"{prefix}_decisions"),
        of_decision("amount_minor"),
        of_decision("currency"),
        of_decision("budget_day"),
        of_decision("user_id"),
        F.max(F.when(decided, F.col("touch_event_id"))).alias(f"{prefix}_touch"),
        F.max(F.col("capped").cast("int")).alias(f"{prefix}_capped"),
        F.min("order_time_ms").alias(f"{prefix}_order_time"),
    )


def _caps_reached(spark: Any, ledgers: list[Any], catalog: Catalog) -> Any:
    """``(campaign_id, budget_day)`` pairs whose cap either layer reached, as its ledger shows.

    Reached: a row of that campaign and day was capped (a charge cut to what was left, so a cap was
    then spent), or the net spend of the rows read is at least the daily cap of that day or the
    lifetime cap. The rows read are one UTC day of orders, a lower bound of both spends, so a cap
    this finds reached was reached.
    """
    from pyspark.sql import functions as F  # noqa: N812
    from pyspark.sql.types import LongType, StringType, StructField, StructType

    caps = spark.createDataFrame(
        [(c.campaign_id, c.budget.daily_minor, c.budget.lifetime_minor) for c in catalog],
        StructType(
            [
                StructField("campaign_id", StringType(), False),
                StructField("daily_cap", LongType(), True),
                StructField("lifetime_cap", LongType(), True),
            ]
        ),
    )
    reached = []
    for ledger in ledgers:
        per_day = ledger.groupBy("campaign_id", "budget_day").agg(
            F.sum("charge_minor").alias("day_spend"), F.max(F.col("capped").cast("int")).alias("capped")
        )
        lifetime = ledger.groupBy("campaign_id").agg(F.sum("charge_minor").alias("lifetime_spend"))
        reached.append(
            per_day.join(lifetime, "campaign_id")
            .join(caps, "campaign_id", "left")
            .filter(
                (F.col("capped") == 1)
                | (F.col("day_spend") >= F.col("daily_cap"))
                | (F.col("lifetime_spend") >= F.col("lifetime_cap"))
            )
            .select("campaign_id", "budget_day")
        )
    return reached[0].unionByName(reached[1]).distinct().withColumn("cap_reached", F.lit(1))


def _read_raw(spark: Any, lake: Lake, start: date, end: date, types: tuple[str, ...]) -> Any:
    files = [lake.uri(f) for r in raw_partitions(lake, start, end, types) for f in lake.files(r)]
    schema = spark_schema(RAW_ROW)
    return spark.read.schema(schema).parquet(*files) if files else spark.createDataFrame([], schema)


def raw_window(catalog: Catalog, day: date, config: Settings | None = None) -> dict[str, tuple[date, date]]:
    """The raw days the reconciliation of ``day`` reads (first, last, inclusive): touches and orders
    from the policy's look-back before ``day``, cancels up to its cancel horizon after."""
    policy = (config or Settings()).rules.policy()
    first = day - timedelta(days=policy.lookback_days(catalog))
    return {
        "events": (first, day),
        "cancels": (first, day + timedelta(days=policy.cancel_horizon_days)),
    }


def reconcile_day(
    spark: Any, lake: Lake, catalog: Catalog, day: date, config: Settings | None = None
) -> Reconciliation:
    """Compare the two ledgers of ``day``, write the rows, return the summary.

    ``catalog`` is the one the day was decided with: its windows set the look-back of the raw
    events read, its budgets say whether a cap was reached. The steps: read both ledgers, one row
    per order; flag what arrived late and what a cap touched; give each row its cause; write the
    rows; sum them up into the manifest.
    """
    config = config or Settings()
    dt = day.isoformat()
    rt, rt_found = _read_ledger(spark, lake, REALTIME_LEDGER, dt)
    bt, bt_found = _read_ledger(spark, lake, BATCH_LEDGER, dt)
    if not rt_found and not bt_found:
        raise NothingToReconcile(f"day = {dt}: no realtime or batch ledger in {lake.url}")
    window = raw_window(catalog, day, config)
    flagged = _flagged(
        _per_order(rt, "rt").join(_per_order(bt, "bt"), "order_id", "full"),
        _late_flags(spark, lake, window, config),
        _caps_reached(spark, [rt, bt], catalog),
    )
    rows = _classified(flagged, dt).cache()
    rows.write.mode("overwrite").partitionBy("dt").parquet(lake.uri(RECONCILIATION.path))
    result = _summed(rows, dt)
    manifest = {
        **result.summary(),
        "read": {k: [a.isoformat(), b.isoformat()] for k, (a, b) in window.items()},
    }
    lake.commit_written(partition(RECONCILIATION, dt=dt), manifest)
    rows.unpersist()
    return result


def _late_flags(
    spark: Any, lake: Lake, window: dict[str, tuple[date, date]], config: Settings
) -> tuple[Any, Any]:
    """Which orders (their own event or a cancel) and which touches arrived after their allowed
    lateness, from the raw events of the policy's window: ``(order_id, order_late)`` and
    ``(bt_user_id, bt_touch, touch_late)`` (a touch is named by its user and event id: one flag
    per name, so no order row is repeated)."""
    from pyspark.sql import functions as F  # noqa: N812

    raw = (
        _read_raw(spark, lake, *window["events"], (*TOUCH_TYPES, ORDER_TYPE))
        .unionByName(_read_raw(spark, lake, *window["cancels"], (CANCEL_TYPE,)))
        .filter(~in_future(config.rules.max_future_ms))
    )
    late = ((F.col("ingested_at_ms") - F.col("event_time")) > config.rules.allowed_lateness_ms).cast("int")
    orders = (
        raw.filter(F.col("event_type").isin(ORDER_TYPE, CANCEL_TYPE))
        .groupBy("order_id")
        .agg(F.max(late).alias("order_late"))
    )
    touches = (
        raw.filter(F.col("event_type").isin(*TOUCH_TYPES))
        .groupBy(F.col("user_id").alias("bt_user_id"), F.col("event_id").alias("bt_touch"))
        .agg(F.max(late).alias("touch_late"))
    )
    return orders, touches


def _flagged(joined: Any, late: tuple[Any, Any], caps: Any) -> Any:
    """The joined orders with their late flags and whether each side's campaign reached a cap on
    the order's budget day (0 where nothing says so)."""
    from pyspark.sql import functions as F  # noqa: N812

    late_orders, late_touches = late
    rows = joined.join(late_orders, "order_id", "left").join(late_touches, ["bt_user_id", "bt_touch"], "left")
    for side in SIDES:
        rows = rows.join(
            caps.select(
                F.col("campaign_id").alias(f"{side}_campaign"),
                F.col("budget_day").alias(f"{side}_budget_day"),
                F.col("cap_reached").alias(f"{side}_cap_reached"),
            ),
            [f"{side}_campaign", f"{side}_budget_day"],
            "left",
        )
    zero = ["order_late", "touch_late"] + [
        f"{side}_{name}" for side in SIDES for name in ("decisions", "capped", "cap_reached")
    ]
    return rows.fillna(0, subset=zero)


def _classified(rows: Any, dt: str) -> Any:
    """Each order's cause, the first that applies (the module's docstring lists them)."""
    from pyspark.sql import functions as F  # noqa: N812

    both = (F.col("rt_decisions") > 0) & (F.col("bt_decisions") > 0)
    cap_involved = (
        (F.col("rt_capped") == 1)
        | (F.col("bt_capped") == 1)
        | (F.col("rt_cap_reached") == 1)
        | (F.col("bt_cap_reached") == 1)
    )
    rt_dup, bt_dup = F.col("rt_decisions") > 1, F.col("bt_decisions") > 1
    same_amount = F.col("rt_amount").eqNullSafe(F.col("bt_amount")) & F.col("rt_currency").eqNullSafe(
        F.col("bt_currency")
    )
    same_campaign = F.col("rt_campaign").eqNullSafe(F.col("bt_campaign"))
    same_charge = F.coalesce(F.col("rt_charge"), F.lit(0)).eqNullSafe(
        F.coalesce(F.col("bt_charge"), F.lit(0))
    )
    return (
        rows.withColumn("cap_involved", cap_involved)
        .withColumn(
            "duplicate_in",
            F.when(rt_dup & bt_dup, "both").when(rt_dup, SIDES["rt"]).when(bt_dup, SIDES["bt"]),
        )
        .withColumn(
            "status",
            F.when(rt_dup | bt_dup, "duplicate")
            .when(same_campaign & same_charge & same_amount, "match")
            .when(both & ~same_amount, "amount")
            .when(F.col("touch_late") == 1, "late touch")
            .when(F.col("order_late") == 1, "late order")
            .when(~both, "missing")
            .when(~same_campaign, "campaign")
            .when(F.col("cap_involved"), "cap")
            .otherwise("charge"),
        )
        .withColumn(
            "missing_from",
            F.when(
                F.col("status") == "missing",
                F.when(F.coalesce(F.col("rt_decisions"), F.lit(0)) > 0, SIDES["bt"]).otherwise(SIDES["rt"]),
            ),
        )
        .withColumn("dt", F.lit(dt))
    )


def _summed(rows: Any, dt: str) -> Reconciliation:
    """The day's summary: counts per cause and side, and each layer's spend per campaign and per
    currency (a layer's charge counts for the campaign it chose, in the order's currency: a
    campaign charges only orders in its own)."""
    from pyspark.sql import functions as F  # noqa: N812

    counts = {r["status"]: int(r["count"]) for r in rows.groupBy("status").count().collect()}
    missing = {
        str(r["missing_from"]): int(r["count"])
        for r in rows.filter(F.col("missing_from").isNotNull()).groupBy("missing_from").count().collect()
    }
    duplicates = {
        side: int(n or 0)
        for side, n in rows.agg(
            *(
                F.sum((F.col(f"{prefix}_decisions") > 1).cast("int")).alias(side)
                for prefix, side in SIDES.items()
            )
        )
        .first()
        .asDict()
        .items()
        if n
    }
    spends = [
        rows.groupBy(
            F.col(f"{side}_campaign").alias("campaign_id"), F.col(f"{side}_currency").alias("currency")
        ).agg(F.sum(F.coalesce(f"{side}_charge", F.lit(0))).alias(side))
        for side in SIDES
    ]
    spend = (
        spends[0]
        .join(spends[1], ["campaign_id", "currency"], "full")
        .filter(F.col("campaign_id").isNotNull())
        .fillna(0, subset=list(SIDES))
        .collect()
    )
    diffs: dict[str, int] = {}
    per_currency: dict[str, dict[str, int]] = {side: {} for side in SIDES}
    for r in spend:
        if r["rt"] != r["bt"]:
            diffs[r["campaign_id"]] = diffs.get(r["campaign_id"], 0) + int(r["rt"] - r["bt"])
        for side in SIDES:
            if r[side]:
                per_currency[side][r["currency"]] = per_currency[side].get(r["currency"], 0) + int(r[side])
    total = sum(counts.values())
    return Reconciliation(
        day=dt,
        orders=total,
        matched=counts.get("match", 0),
        differing=total - counts.get("match", 0),
        causes={k: v for k, v in counts.items() if k != "match"},
        spend_diff_minor={k: v for k, v in diffs.items() if v},
        realtime_spend_minor=per_currency["rt"],
        batch_spend_minor=per_currency["bt"],
        duplicates=duplicates,
        missing=missing,
    )
