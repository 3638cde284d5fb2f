"""The nightly job for a day D, as a Spark plan: decisions, settlement, models, metrics.

Reads the lake's raw events (never "latest", never ``now()``: every bound
comes from D and the settings), drops events dated further after their landing
than ``rules.max_future_ms`` (``shared_logic.policy.in_future``, as the speed
layer does), decides D's orders with ``shared_logic.attribute_order`` inside
``mapInPandas`` (``batch.journeys``), settles charges per campaign with
``shared_logic.settlement.ChargeBook`` from the checkpoint of an earlier night
(or from the start of the history), fits the data-driven models on path
aggregates computed in Spark, credits every journey under every model
(``batch.reshape``), and writes, with dynamic partition overwrite so a rerun
replaces exactly the dates it was given, then commits each written partition
with a manifest:

- ``attribution/model=…/dt=D/``: one ``FactRow`` per (order, credited channel);
- ``batch_ledger/dt=D/``: the batch billing ledger of D's orders;
- ``metrics/campaign_daily/dt=D/``: one ``MetricRow`` per campaign and model;
- ``settlement_state/dt=D/``: the checkpoint the job for D+1 starts from, committed last.

Raw events are never collected to the driver; only the distinct paths (to fit
Markov and Shapley), the few metric rows and one row of checkpoint statistics are.

Settlement checkpoints: why the cost does not grow with the lake's age
----------------------------------------------------------------------
A charge depends on everything settled before it: a lifetime cap binds on a
campaign's whole history. Settlement runs in one total order,
``action_key(due, kind, order_id)``: an order's decision is due at its time
plus the allowed lateness L, a cancel at its own time plus L. Let
B(D) = (start of D+1, UTC) + L.

- Boundary. Every decision of an order of D or before is due before B(D), and
  every decision of a later order at or after it. The checkpoint of D is the
  book after exactly the actions due before B(D): the prefix a from-scratch run
  has applied when it reaches the first action of D+1. The job for D+1 restores
  it and settles only actions due at or after B(D) (ties at B(D) are ordered by
  the book as in one go), so its charges, caps and refunds are the from-scratch
  ones. D's own ledger still holds the refunds of its orders by cancels up to D
  plus the cancel horizon H, which are due after B(D): the job settles in two
  phases, the actions due before B(D), the snapshot, then the rest.
- What the checkpoint keeps (``ChargeBook.snapshot``), per campaign: lifetime
  spend; the spend of the budget days a later order can fall on (a later order
  is at or after the start of D+1 UTC, which is D, D+1 or D+2 in the campaign's
  zone, UTC-12 to UTC+14: every local day from that instant's on is kept, only
  for campaigns with a daily cap); the charges a later cancel may still refund
  (orders of D-H+1..D, refunded or not, so a second cancel stays a no-op); and
  cancels that came before their order was decided. In this job no such cancel
  reaches a checkpoint: a cancel is settled with its order's campaign, known
  once the order is decided, so the job that decides the order (which reads
  cancels back to its look-back) settles the cancel too, before the decision;
  nothing between the two reads the mark, so the outcome is the one in one go.
  Zero spend and closed days are dropped.
- The cancel horizon (``shared_logic.settlement.cancel_counts``). A cancel
  counts when dated from the order's UTC day minus the look-back (the longest
  window plus L, in days) to the order's day plus H; the earliest (then the
  lowest event id, ``settlement.cancel_rank``) is the order's cancel. Every run,
  from scratch or not, reads all cancels that can count for the orders it may
  settle and applies this rule, so all pick the same cancel. It bounds what a
  checkpoint carries, and makes a day's figures final once D+H has landed. (It
  is a rule of the batch layer: before it, a cancel later than the horizon
  moved later caps but appeared in no day's ledger. The speed layer refunds
  while it keeps the charge record, ``realtime.decision_ttl_ms``.)
- Reads. From the checkpoint of S (normally S = D-1): touches and orders from
  S+1 minus the look-back to D, deciding only orders from S+1 on (older ones
  are settled); cancels from S+1 minus the look-back and H, to D+H: all that
  can count for an order the checkpoint may refund or this job decides. No day
  is read before the first day of history minus the look-back, in any run.
- Without a checkpoint (the first night, ``from_scratch``, another catalog or
  settings: ``batch.checkpoints.fingerprint``) the job settles from the start
  of history, as before checkpoints. When D-1 has none but an earlier day has,
  it chains back to the latest one and settles the days between itself: the
  cost grows with the gap, not the lake's age, and the outcome is the same.
- Reruns. A checkpoint's manifest records its content digest and its parent's
  (``batch.checkpoints``). ``run_range`` reruns the given days, then follows:
  every later checkpoint built on state the rerun changed is recomputed, oldest
  first, until the recomputed state equals what the next day was built on; with
  ``follow=False`` it refuses (``StaleCheckpoints``, naming the days) when later
  checkpoints exist. A rerun whose state does not change costs its own days only.
- Late cancels. A cancel of an order of D dated after D refunds in D's ledger,
  facts (``cancelled``) and metrics only when D is rerun; its effect on later
  caps needs no rerun, since it is due in its own day and the night of that day
  settles it. The nightly run therefore recomputes the last ``refresh_days``
  days (default H) before D, oldest first, then D: each costs one checkpointed
  night, and the follow rule stops there when their state did not change.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from typing import Any

import pandas as pd
import pyarrow as pa

from attribution_models import paths_from_columns
from batch.checkpoints import (
    Checkpoint,
    describe,
    fingerprint,
    is_stale,
    later_checkpoints,
    latest_before,
    read_checkpoint,
)
from batch.errors import NoRawData, StaleCheckpoints
from batch.journeys import (
    PICKED_ORDER_ROW,
    SETTLED_ROW,
    DaySpec,
    decide_partitions,
    pick_orders,
    settle_from_checkpoint,
)
from batch.reshape import credit_partitions, metrics_frame, models_of
from batch.rules import cancel_counts, in_future
from batch.spark import spark_schema
from shared_logic import Catalog
from shared_logic.contract import (
    ATTRIBUTION,
    BATCH_LEDGER,
    BILLING_MODEL,
    COUNTERS,
    DEAD_LETTER_ROW,
    DECISION_ROW,
    FACT_ROW,
    IVT,
    IVT_ROW,
    IVT_SHAPE,
    IVT_SHAPE_ROW,
    JOURNEY_ROW,
    LEDGER_ROW,
    METRIC_ROW,
    METRICS,
    RAW,
    RAW_ROW,
    REFUSED,
    SETTLEMENT_STATE,
    SETTLEMENT_STATE_ROW,
    IvtShapeRow,
    ivt_measures,
    ivt_shape_rows,
    summarize_ivt,
)
from shared_logic.events import EVENT_TYPES
from shared_logic.ivt import SHAPE_BUCKETS, delay_bucket
from shared_logic.rules import TouchKind
from shared_logic.settings import Settings
from shared_logic.timeutil import MS_PER_DAY, utc_day_bounds_ms
from storage.arrow import arrow_schema
from storage.ivt_lists import load_givt_lists
from storage.lake import Lake, PartitionRef, partition
from storage.raw import days_between

log = logging.getLogger(__name__)

TOUCH_AND_ORDER_TYPES = tuple(t for t in EVENT_TYPES if t != "order_cancel")


@dataclass
class DayResult:
    day: str
    orders: int
    attributed: int
    spend_minor: dict[str, int]
    models: list[str]
    seconds: float
    metrics: list[dict[str, Any]] = field(default_factory=list)
    #: The checkpoint the job went on from (None: it settled from the start of history).
    started_from: str | None = None
    #: The checkpoint it wrote, and the digest of the one it replaced (None: there was none).
    checkpoint: Checkpoint | None = None
    replaced_digest: str | None = None
    #: First and last raw day read (touches and orders; cancels reach up to the horizon).
    read_days: tuple[str, str] = ("", "")
    #: Events of the day refused when deciding (admission's catalog stage, the identity rule), by field.
    refused: dict[str, int] = field(default_factory=dict)

    @property
    def state_changed(self) -> bool:
        return self.checkpoint is None or self.checkpoint.digest != self.replaced_digest


def first_order_day(lake: Lake) -> date | None:
    days = sorted({p["dt"] for p in lake.partitions(RAW.at(event_type="order"), depth=1)})
    return date.fromisoformat(days[0]) if days else None


def raw_days(lake: Lake) -> set[date]:
    """Days holding raw events of any type (one listing per type)."""
    return {
        date.fromisoformat(p["dt"])
        for etype in EVENT_TYPES
        for p in lake.partitions(RAW.at(event_type=etype), depth=1)
    }


def _raw_refs(lake: Lake, start: date, end: date, types: Iterable[str]) -> list[PartitionRef]:
    """Hour partitions of the given types and days, listing only the days wanted (the lake may be old)."""
    wanted = {d.isoformat() for d in days_between(start, end)} if start <= end else set()
    refs: list[PartitionRef] = []
    for etype in types:
        base = RAW.at(event_type=etype)
        for p in lake.partitions(base, depth=1):
            if p["dt"] in wanted:
                refs.extend(
                    partition(RAW, event_type=etype, dt=p["dt"], hour=h["hour"])
                    for h in lake.partitions(f"{base}/dt={p['dt']}", depth=1)
                )
    return refs


def _read_raw(spark: Any, lake: Lake, refs: list[PartitionRef], max_future_ms: int) -> Any:
    """Raw rows of some partitions, without events dated in the future of their landing.

    Duplicates stay: the per-user step keeps one copy of each touch and order (its user's
    events meet in one partition anyway), and a cancel's copies are equal; so the job spends
    no shuffle of every event on them.
    """
    files = [lake.uri(f) for ref in refs for f in lake.files(ref)]
    schema = spark_schema(RAW_ROW)
    if not files:
        return spark.createDataFrame([], schema)
    return spark.read.schema(schema).parquet(*files).filter(~in_future(max_future_ms))


@dataclass(frozen=True, slots=True)
class DayBounds:
    """Everything the night of one day reads and writes by, fixed before it starts (from the day,
    the settings, the catalog and the lake's checkpoints; never ``now()``)."""

    day: date
    history: date
    #: The checkpoint the night goes on from (None: it settles from the start of history).
    start: Checkpoint | None
    replaced: Checkpoint | None
    fingerprint: str
    events_from: date
    cancels_from: date
    cancels_to: date
    day_start_ms: int
    day_end_ms: int
    decide_from_ms: int | None
    boundary_ms: int  # B(D): actions due before it are in the checkpoint
    refundable_from_ms: int
    lateness_ms: int
    lookback_days: int
    horizon_days: int

    @property
    def dt(self) -> str:
        return self.day.isoformat()


def plan_day(lake: Lake, catalog: Catalog, day: date, config: Settings, from_scratch: bool) -> DayBounds:
    """The bounds of the night of ``day`` (see the module's docstring for why each is what it is)."""
    policy = config.rules.policy()
    lookback = policy.lookback_days(catalog)
    horizon = policy.cancel_horizon_days
    batch = config.batch
    history = date.fromisoformat(batch.history_start) if batch.history_start else first_order_day(lake)
    if history is None:
        raise NoRawData(f"day = {day}: the lake at {lake.url} holds no raw orders")
    history = min(history, day)
    floor = history - timedelta(days=lookback)  # no run reads a day before this one
    wanted = fingerprint(catalog, config, history)
    start = None if from_scratch else latest_before(lake, day, wanted)
    settle_from = floor if start is None else start.day + timedelta(days=1)
    day_start, day_end = utc_day_bounds_ms(day)
    return DayBounds(
        day=day,
        history=history,
        start=start,
        replaced=read_checkpoint(lake, day),
        fingerprint=wanted,
        events_from=max(floor, settle_from - timedelta(days=lookback)),
        cancels_from=max(floor, settle_from - timedelta(days=lookback + horizon)),
        cancels_to=day + timedelta(days=horizon),
        day_start_ms=day_start,
        day_end_ms=day_end,
        decide_from_ms=None if start is None else utc_day_bounds_ms(settle_from)[0],
        boundary_ms=day_end + policy.allowed_lateness_ms,
        refundable_from_ms=day_end - horizon * MS_PER_DAY,
        lateness_ms=policy.allowed_lateness_ms,
        lookback_days=lookback,
        horizon_days=horizon,
    )


@dataclass
class _Night:
    """The frames one night passes from step to step (cached ones are unpersisted at the end)."""

    events: Any = None
    cancel_events: Any = None
    refused_orders: Any = None
    decisions: Any = None
    cancels: Any = None
    settled: Any = None
    ledger: Any = None
    facts: Any = None
    checkpoint: Checkpoint | None = None
    state_rows: int = 0
    spend: Any = None
    paths: Any = None
    counted: Any = None
    ivt_groups: Any = None
    model_names: list[str] = field(default_factory=list)
    metrics: Any = None
    orders: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    ivt: dict[str, int] = field(default_factory=dict)
    shape: list[IvtShapeRow] | None = None


def run_day(
    spark: Any, lake: Lake, catalog: Catalog, day: date, config: Settings, *, from_scratch: bool = False
) -> DayResult:
    """Run the nightly job for one day; idempotent (rerunning it rewrites the same partitions).

    It goes on from the latest checkpoint before ``day`` computed with the same catalog and
    settings, or settles from the start of history when there is none or ``from_scratch``. The
    night is a plan of named steps over the day's ``DayBounds``: read, decide, settle, summarise, credit,
    count, commit.
    """
    started = time.perf_counter()
    bounds = plan_day(lake, catalog, day, config, from_scratch)
    spec = DaySpec(
        catalog,
        config.rules.policy(),
        bounds.day_start_ms,
        bounds.day_end_ms,
        config.batch.channel_key,
        bounds.decide_from_ms,
        load_givt_lists(config.rules),
    )
    night = _Night()
    _read(spark, lake, bounds, config, spec, night)
    _decide(spark, spec, night)
    _settle(spark, lake, catalog, bounds, night)
    _summarise(config, night)
    _credit(spark, lake, bounds, config, night)
    _count(spark, lake, catalog, bounds, config, night)
    _commit(lake, bounds, night)
    assert night.checkpoint is not None
    spend = night.spend
    result = DayResult(
        bounds.dt,
        night.orders,
        int(spend["charges"].sum()),
        {str(c): int(v) for c, v in zip(spend["campaign_id"], spend["spend_minor"], strict=True)},
        night.model_names,
        time.perf_counter() - started,
        [{str(k): v for k, v in rec.items()} for rec in night.metrics.to_dict("records")],
        started_from=bounds.start.day.isoformat() if bounds.start else None,
        checkpoint=night.checkpoint,
        replaced_digest=bounds.replaced.digest if bounds.replaced else None,
        read_days=(bounds.events_from.isoformat(), bounds.dt),
        refused=night.refused,
    )
    for frame in (night.decisions, night.cancels, night.settled, night.facts):
        frame.unpersist()
    log.info(
        "day %s: %d orders, %d attributed, %d refused, checkpoint %d rows, %.1fs",
        bounds.dt,
        result.orders,
        result.attributed,
        sum(night.refused.values()),
        night.state_rows,
        result.seconds,
    )
    return result


def _read(spark: Any, lake: Lake, bounds: DayBounds, config: Settings, spec: DaySpec, night: _Night) -> None:
    """Read: the touches and orders the night may decide with, one order event per order id (the
    identity rule across users: ``journeys.pick_orders``), and the cancels that may count."""
    from pyspark.sql import functions as F  # noqa: N812 - Spark's own idiom

    event_refs = _raw_refs(lake, bounds.events_from, bounds.day, TOUCH_AND_ORDER_TYPES)
    cancel_refs = _raw_refs(lake, bounds.cancels_from, bounds.cancels_to, ("order_cancel",))
    if not any(r.value("dt") == bounds.dt for r in event_refs + cancel_refs):
        raise NoRawData(f"day = {bounds.day}: no raw partitions for this day in {lake.url}")
    log.info(
        "day %s: %s, reading %s..%s (cancels %s..%s)",
        bounds.dt,
        f"from the checkpoint of {bounds.start.day}" if bounds.start else "from the start of history",
        bounds.events_from,
        bounds.day,
        bounds.cancels_from,
        bounds.cancels_to,
    )
    max_future = config.rules.max_future_ms
    raw = _read_raw(spark, lake, event_refs, max_future).filter(F.col("event_time") < bounds.day_end_ms)
    picked = (
        raw.filter(F.col("event_type") == "order")
        .repartition("order_id")
        .sortWithinPartitions("order_id", "event_time", "event_id")
        .mapInPandas(lambda b: pick_orders(b, spec), spark_schema(PICKED_ORDER_ROW))
        .cache()
    )
    night.refused_orders = picked.filter(F.col("refusal").isNotNull()).select("refusal")
    orders = picked.filter(F.col("refusal").isNull()).drop("refusal")
    night.events = raw.filter(F.col("event_type") != "order").unionByName(orders)
    night.cancel_events = _read_raw(spark, lake, cancel_refs, max_future)


def _decide(spark: Any, spec: DaySpec, night: _Night) -> None:
    """Decide: per user, admission, the identity rule and the billing rule (``journeys.decide_user``)."""
    night.decisions = (
        night.events.repartition("user_id")
        .sortWithinPartitions("user_id", "event_time", "event_id")
        .mapInPandas(lambda b: decide_partitions(b, spec), spark_schema(JOURNEY_ROW))
        .cache()
    )


def _settle(spark: Any, lake: Lake, catalog: Catalog, bounds: DayBounds, night: _Night) -> None:
    """Settle: per campaign, in the shared action order, from the checkpoint; write the day's
    batch ledger and the checkpoint the next night starts from."""
    from pyspark.sql import functions as F  # noqa: N812

    orders = night.decisions.filter((F.col("kind") == "order") & F.col("campaign_id").isNotNull())
    state_schema = spark_schema(SETTLEMENT_STATE_ROW)
    start = bounds.start
    state_files = [] if start is None else lake.files(partition(SETTLEMENT_STATE, dt=start.day.isoformat()))
    state = (
        spark.read.schema(state_schema).parquet(*[lake.uri(f) for f in state_files])
        if state_files
        else spark.createDataFrame([], state_schema)
    )
    known = orders.select("order_id", "campaign_id", "order_time_ms").unionByName(
        state.filter(F.col("record") == "charge").select("order_id", "campaign_id", "order_time_ms")
    )
    night.cancels = (
        night.cancel_events.select("order_id", F.col("event_time").alias("cancel_time_ms"), "event_id")
        .join(known, "order_id")
        .filter(cancel_counts("order_time_ms", "cancel_time_ms", bounds.lookback_days, bounds.horizon_days))
        .groupBy("order_id", "campaign_id")
        .agg(F.min(F.struct("cancel_time_ms", "event_id")).alias("first"))  # settlement.cancel_rank
        .select("order_id", "campaign_id", F.col("first.cancel_time_ms").alias("cancel_time_ms"))
        .cache()
    )
    decide_actions = orders.select(
        F.lit("decide").alias("action"),
        *DECISION_ROW.names,
        (F.col("order_time_ms") + bounds.lateness_ms).alias("due_ms"),
    )
    cancel_actions = night.cancels.select(
        F.lit("cancel").alias("action"),
        "campaign_id",
        "order_id",
        (F.col("cancel_time_ms") + bounds.lateness_ms).alias("due_ms"),
    )
    actions = decide_actions.unionByName(cancel_actions, allowMissingColumns=True)
    settle = lambda acts, st: settle_from_checkpoint(  # noqa: E731
        acts, st, catalog, bounds.boundary_ms, bounds.day_end_ms, bounds.refundable_from_ms
    )
    night.settled = (
        actions.groupBy("campaign_id")
        .cogroup(state.groupBy("campaign_id"))
        .applyInPandas(settle, spark_schema(SETTLED_ROW))
        .cache()
    )
    night.ledger = (
        night.settled.filter(F.col("part") == "ledger")
        .select(*LEDGER_ROW.names)
        .filter(
            (F.col("order_time_ms") >= bounds.day_start_ms) & (F.col("order_time_ms") < bounds.day_end_ms)
        )
        .withColumn("dt", F.lit(bounds.dt))
    )
    night.ledger.write.mode("overwrite").partitionBy("dt").parquet(lake.uri(BATCH_LEDGER.path))
    new_state = night.settled.filter(F.col("part") == "state").select(*SETTLEMENT_STATE_ROW.names)
    stats = new_state.agg(
        F.count(F.lit(1)).alias("rows"),
        F.bit_xor(F.xxhash64(F.to_json(F.struct(*SETTLEMENT_STATE_ROW.names)))).alias("hash"),
    ).first()
    rows = int(stats["rows"])
    night.state_rows = rows
    night.checkpoint = Checkpoint(
        bounds.day,
        f"{rows}:{int(stats['hash'] or 0) & 0xFFFF_FFFF_FFFF_FFFF:016x}",
        bounds.fingerprint,
        start.day if start else None,
        start.digest if start else None,
        rows,
        (),
    )
    if rows:
        new_state.coalesce(1).withColumn("dt", F.lit(bounds.dt)).write.mode("overwrite").partitionBy(
            "dt"
        ).parquet(lake.uri(SETTLEMENT_STATE.path))


def _collect_small(frames: dict[str, Any]) -> dict[str, pd.DataFrame]:
    """Several small aggregates in one Spark job instead of one job each: on a night of a few
    thousand events a job's fixed cost (planning, scheduling, its stages' tasks) is most of its
    time (measured: the nightly job's twelve small actions took about 1.5 s of a 4.7 s night).
    Each frame's rows go as JSON tagged with its name through one union and one collect; each
    comes back as a pandas frame with the frame's columns (nulls kept)."""
    from pyspark.sql import functions as F  # noqa: N812

    tagged = [
        df.select(
            F.lit(name).alias("part"),
            F.to_json(F.struct(*df.columns), {"ignoreNullFields": "false"}).alias("row"),
        )
        for name, df in frames.items()
    ]
    rows: dict[str, list[Any]] = {name: [] for name in frames}
    for r in functools.reduce(lambda a, b: a.unionByName(b), tagged).collect():
        rows[r["part"]].append(json.loads(r["row"]))
    return {name: pd.DataFrame(rows[name], columns=df.columns) for name, df in frames.items()}


def _summarise(config: Settings, night: _Night) -> None:
    """Summarise: what the driver needs of the decisions, in one job (``_collect_small``): the
    day's paths (to fit the data-driven models), the admitted touches per campaign, the
    invalid-traffic verdicts and the refused events, and with ``rules.ivt_shape`` the
    click-to-order delays of the orders won by a click."""
    from pyspark.sql import functions as F  # noqa: N812

    decisions = night.decisions
    day_rows = decisions.filter(F.col("in_day") & F.col("kind").isin("order", "null"))
    frames = {
        "paths": day_rows.select(
            F.concat_ws(" > ", "path_channels").alias("path"),
            F.when(F.col("kind") == "order", 1).otherwise(0).alias("conv"),
            F.when(F.col("kind") == "order", F.col("amount_minor")).otherwise(0).alias("value"),
            F.when(F.col("kind") == "null", 1).otherwise(0).alias("null"),
        )
        .groupBy("path")
        .agg(F.sum("conv").alias("c"), F.sum("value").alias("v"), F.sum("null").alias("n")),
        "counted": decisions.filter(F.col("kind") == "count")
        .groupBy("campaign_id", "counter")
        .agg(F.sum("touches").alias("count")),
        "ivt": _ivt_verdicts(decisions)
        .groupBy("campaign_id", "reason", "scope", "outcome")
        .agg(
            F.count(F.lit(1)).alias("n"),
            F.sum("avoided_minor").alias("avoided_minor"),
            F.first("currency", ignorenulls=True).alias("currency"),
        ),
        "refused": _refused_events(night).groupBy("field").count(),
    }
    shape = config.rules.shape_rules()
    if shape is not None:
        frames["shape"] = _click_delays(decisions)
    got = _collect_small(frames)
    night.paths = got["paths"]
    night.counted = got["counted"]
    night.ivt_groups = got["ivt"]
    refused = got["refused"]
    night.refused = {str(f): int(n) for f, n in zip(refused["field"], refused["count"], strict=True)}
    night.ivt = {}
    for r in night.ivt_groups.to_dict("records"):
        name = f"{r['reason']}:{r['outcome']}"
        night.ivt[name] = night.ivt.get(name, 0) + int(r["n"])
    if shape is not None:
        counts: dict[str, list[int]] = {}
        for r in got["shape"].to_dict("records"):
            counts.setdefault(str(r["campaign_id"]), [0] * len(SHAPE_BUCKETS))[int(r["b"])] += int(r["count"])
        night.shape = ivt_shape_rows(counts, shape)


def _ivt_verdicts(decisions: Any) -> Any:
    from pyspark.sql import functions as F  # noqa: N812

    verdict = F.from_json("ivt", spark_schema(IVT_ROW))
    return decisions.filter(F.col("kind") == "ivt").select(verdict.alias("v")).select("v.*")


def _refused_events(night: _Night) -> Any:
    """The day's refused events as dead letters: the decide step's and the order picker's."""
    from pyspark.sql import functions as F  # noqa: N812

    letter = F.from_json("refusal", spark_schema(DEAD_LETTER_ROW))
    return (
        night.decisions.filter(F.col("kind") == "refused")
        .select("refusal")
        .unionByName(night.refused_orders)
        .select(letter.alias("r"))
        .select("r.*")
    )


def _click_delays(decisions: Any) -> Any:
    """Orders of the day won by a click, counted per campaign and delay bucket (``ivt.delay_bucket``)."""
    from pyspark.sql import functions as F  # noqa: N812
    from pyspark.sql.types import IntegerType

    bucket = F.udf(lambda ms: delay_bucket(ms), IntegerType())  # a lambda: no type hints for Spark to read
    won = decisions.filter(
        (F.col("kind") == "order")
        & F.col("in_day")
        & F.col("campaign_id").isNotNull()
        & (F.col("touch_kind") == int(TouchKind.CLICK))
    )
    return (
        won.select("campaign_id", bucket(F.col("order_time_ms") - F.col("touch_time_ms")).alias("b"))
        .groupBy("campaign_id", "b")
        .count()
    )


def _credit(spark: Any, lake: Lake, bounds: DayBounds, config: Settings, night: _Night) -> None:
    """Credit: fit the multi-touch models on the day's path aggregates, credit every journey."""
    from pyspark.sql import functions as F  # noqa: N812

    paths = night.paths
    night.orders = int(paths["c"].sum())  # every order of the day, organic ones under the empty path
    paths = paths[paths["path"] != ""]
    models = models_of(config.batch)
    aggregates = paths_from_columns(
        paths["path"].tolist(),
        paths["c"].to_numpy(dtype="float64"),
        paths["v"].to_numpy(dtype="float64"),
        paths["n"].to_numpy(dtype="float64"),
    )
    for model in models.values():
        if model.data_driven:
            model.fit(aggregates)
    cancelled_ids = night.cancels.select("order_id", F.lit(True).alias("cancelled"))
    journeys = (
        night.decisions.filter(
            F.col("in_day") & (F.col("kind") == "order") & F.col("campaign_id").isNotNull()
        )
        .join(cancelled_ids, "order_id", "left")
        .fillna(False, subset=["cancelled"])
    )
    night.facts = journeys.mapInPandas(credit_partitions(models, bounds.dt), spark_schema(FACT_ROW)).cache()
    night.facts.write.mode("overwrite").partitionBy("model", "dt").parquet(lake.uri(ATTRIBUTION.path))
    night.model_names = [BILLING_MODEL, *models]


def _count(
    spark: Any, lake: Lake, catalog: Catalog, bounds: DayBounds, config: Settings, night: _Night
) -> None:
    """Count: the day's metric rows per campaign and model (the admitted touches the decide step
    counted, spend from the ledger, credit from the facts, in one job), and write the day's
    refused events and invalid-traffic verdicts (no job for none: the commit writes them empty)."""
    from pyspark.sql import functions as F  # noqa: N812

    counts = (
        night.counted.pivot_table(index="campaign_id", columns="counter", values="count", aggfunc="sum")
        .reindex(columns=list(COUNTERS.values()))
        .fillna(0)
        .rename_axis(index="campaign_id", columns=None)
        .reset_index()
        .rename(columns={name: etype for etype, name in COUNTERS.items()})
    )
    # Per-campaign credit needs campaign channels; with another channel key the facts hold
    # credit per lever or placement and the campaign metrics keep the billing rows only.
    facts = night.facts
    if config.batch.channel_key != "campaign":
        facts = facts.filter(F.col("model") == BILLING_MODEL)
    got = _collect_small(
        {
            "spend": night.ledger.groupBy("campaign_id").agg(
                F.sum("charge_minor").alias("spend_minor"),
                F.sum(F.col("capped").cast("int")).alias("capped_orders"),
                F.sum((F.col("kind") == "charge").cast("int")).alias("charges"),
            ),
            "credited": facts.filter(~F.col("cancelled"))
            .groupBy(F.col("channel").alias("campaign_id"), "model")
            .agg(F.sum("credit").alias("orders"), F.sum("credited_revenue_minor").alias("revenue_minor")),
        }
    )
    night.spend = got["spend"]
    metric_rows = (
        got["credited"]
        .merge(night.spend, on="campaign_id", how="outer")
        .merge(counts, on="campaign_id", how="outer")
        .fillna(dict.fromkeys((*COUNTERS, "spend_minor", "capped_orders", "charges"), 0))
    )
    # No credit: no model (None, which pandas takes and its stubs refuse).
    metric_rows = metric_rows.astype(object).where(metric_rows.notna(), None)  # type: ignore[call-overload]
    measures = ivt_measures(summarize_ivt(bounds.dt, night.ivt_groups.to_dict("records")))
    night.metrics = metrics_frame(metric_rows, catalog, bounds.dt, night.model_names, measures)
    metrics_df = spark.createDataFrame(night.metrics, spark_schema(METRIC_ROW))
    metrics_df.write.mode("overwrite").partitionBy("dt").parquet(lake.uri(METRICS.path))
    if night.refused:
        _refused_events(night).withColumn("dt", F.lit(bounds.dt)).write.mode("overwrite").partitionBy(
            "dt"
        ).parquet(lake.uri(REFUSED.path))
    if night.ivt:
        _ivt_verdicts(night.decisions).withColumn("dt", F.lit(bounds.dt)).write.mode("overwrite").partitionBy(
            "dt"
        ).parquet(lake.uri(IVT.path))


def _commit(lake: Lake, bounds: DayBounds, night: _Night) -> None:
    """Commit: a manifest on each written partition, listing its files; the checkpoint last."""
    assert night.checkpoint is not None
    dt = bounds.dt
    meta: dict[str, Any] = {"job": "nightly"}
    lake.commit_written(partition(BATCH_LEDGER, dt=dt), meta)
    lake.commit_written(partition(METRICS, dt=dt), meta)
    if night.refused:
        lake.commit_written(partition(REFUSED, dt=dt), {**meta, "refused": night.refused})
    else:  # Spark writes no folder for no rows: replace the partition whole with an empty file
        lake.write_partition(partition(REFUSED, dt=dt), arrow_schema(DEAD_LETTER_ROW).empty_table(), meta)
    if night.ivt:
        lake.commit_written(partition(IVT, dt=dt), {**meta, "ivt": night.ivt})
    else:
        lake.write_partition(partition(IVT, dt=dt), arrow_schema(IVT_ROW).empty_table(), meta)
    if night.shape is not None:
        flagged = {r.campaign_id: r.flag for r in night.shape if r.flag}
        table = pa.Table.from_pylist([asdict(r) for r in night.shape], schema=arrow_schema(IVT_SHAPE_ROW))
        lake.write_partition(partition(IVT_SHAPE, dt=dt), table, {**meta, "flagged": flagged})
    for model_name in night.model_names:
        lake.commit_written(partition(ATTRIBUTION, model=model_name, dt=dt), meta)
    state_ref = partition(SETTLEMENT_STATE, dt=dt)
    state_meta = {
        **meta,
        **night.checkpoint.manifest(),
        "boundary_ms": bounds.boundary_ms,
        "read": {
            "events": [bounds.events_from.isoformat(), dt],
            "cancels": [bounds.cancels_from.isoformat(), dt],
        },
    }
    if night.state_rows:
        lake.commit_written(state_ref, state_meta)
    else:
        lake.write_partition(state_ref, arrow_schema(SETTLEMENT_STATE_ROW).empty_table(), state_meta)


def refuse_stale(lake: Lake, start: date, end: date, follow: bool) -> list[Checkpoint]:
    """The committed checkpoints after ``end``; without ``follow``, refuse (``StaleCheckpoints``,
    naming them) when there are any, since rerunning ``start..end`` may change the state they
    were built on. Cheap (manifests only): entry points call it before starting Spark."""
    later = later_checkpoints(lake, end)
    if later and not follow:
        raise StaleCheckpoints(
            f"rerunning {describe(days_between(start, end))} would leave the checkpoints of "
            f"{describe([c.day for c in later])} stale (they were built on its state): follow them "
            "(the default), or include them in the range",
            [c.day for c in later],
        )
    return later


def run_range(
    spark: Any,
    lake: Lake,
    catalog: Catalog,
    start: date,
    end: date,
    config: Settings,
    on_day: Callable[[DayResult], None] | None = None,
    *,
    from_scratch: bool = False,
    follow: bool = True,
) -> list[DayResult]:
    """Run the job for every day of ``start..end`` (inclusive), oldest first, each idempotently.

    ``from_scratch``: the first day settles from the start of history (the others go on from
    the checkpoints just written). Later days whose checkpoints were built on state this run
    changed are stale: with ``follow`` they are recomputed after the range, oldest first,
    until one is built on unchanged state; without, the run refuses before it starts when
    any later checkpoint exists (``StaleCheckpoints`` names them).
    """
    later = refuse_stale(lake, start, end, follow)
    results: list[DayResult] = []
    rerun: dict[date, tuple[str | None, str]] = {}

    def run(d: date, scratch: bool) -> None:
        result = run_day(spark, lake, catalog, d, config, from_scratch=scratch)
        assert result.checkpoint is not None
        rerun[d] = (result.replaced_digest, result.checkpoint.digest)
        results.append(result)
        if on_day is not None:
            on_day(result)

    for i, d in enumerate(days_between(start, end)):
        run(d, from_scratch and i == 0)
    followed = []
    for checkpoint in later:
        if is_stale(checkpoint, rerun):
            followed.append(checkpoint.day)
            run(checkpoint.day, False)
    if followed:
        log.info("followed %d later days whose checkpoints changed: %s", len(followed), describe(followed))
    return results
