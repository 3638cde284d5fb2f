"""The contract: every row that crosses a layer, every lake dataset, every record Redis holds.

Declared once, here; every other form is derived:

- Row schemas (``RowSchema``) come from frozen dataclasses: the events of
  ``shared_logic.events`` make the raw row, ``Decision`` and ``LedgerEntry``
  the decision and ledger rows, and ``FactRow`` and ``MetricRow`` below the
  outputs of the nightly job. ``storage.arrow`` turns a schema into pyarrow's,
  ``batch.spark`` into Spark's, ``reporting.stores`` into SQL DDL, and
  ``reporting.schemas`` into the API's pydantic models. Declaring a new metric
  column is one field on ``MetricRow``; only the code that computes it changes
  besides.
- Lake datasets (``Dataset``): where each row lives and how it is partitioned.
- Record encodings shared with the Lua scripts (``LUA_CONTRACT``): each script
  names, in its header, the encodings it uses; a test holds the two equal.

Pure: no I/O, no third-party imports.
"""

from __future__ import annotations

import hashlib
import json
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum, IntEnum, StrEnum
from typing import Any, Final, Literal

from shared_logic.campaigns import Lever
from shared_logic.events import EVENT_TYPES, Click, Impression, Order, OrderCancel, PromoView
from shared_logic.ivt import SHAPE_BUCKETS, Flag, Outcome, ShapeRules, shape_flag
from shared_logic.rules import Decision, OrderVerdict, TouchKind
from shared_logic.settlement import KIND_RANK, BookState, ChargeRecord, LedgerEntry

# Column types and row schemas -------------------------------------------------------------


class ColumnType(StrEnum):
    """The few types a row of the engine uses; every engine's form is derived from these."""

    STRING = "string"
    INT64 = "int64"
    FLOAT64 = "float64"
    BOOL = "bool"
    STRING_LIST = "list<string>"
    INT64_LIST = "list<int64>"


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: ColumnType
    nullable: bool = True
    doc: str = ""


@dataclass(frozen=True, slots=True)
class RowSchema:
    """An ordered list of typed columns with a name (for messages and table names)."""

    name: str
    columns: tuple[Column, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"{self.name} has no column {name!r}")

    def select(self, *names: str) -> RowSchema:
        return RowSchema(self.name, tuple(self.column(n) for n in names))

    def without(self, *names: str) -> RowSchema:
        return RowSchema(self.name, tuple(c for c in self.columns if c.name not in names))

    def plus(self, *columns: Column) -> RowSchema:
        return RowSchema(self.name, self.columns + columns)

    def nullable(self) -> RowSchema:
        """Every column nullable (a row that only some kinds of record fill)."""
        return RowSchema(self.name, tuple(Column(c.name, c.type, True, c.doc) for c in self.columns))


_SCALARS: Final = {
    str: ColumnType.STRING,
    int: ColumnType.INT64,
    float: ColumnType.FLOAT64,
    bool: ColumnType.BOOL,
}
_LISTS: Final = {str: ColumnType.STRING_LIST, int: ColumnType.INT64_LIST}


def _column_type(hint: Any, where: str) -> tuple[ColumnType, bool]:
    """The column type of a resolved annotation, and whether it admits None."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"{where}: a column is one type or that type or None, not {hint!r}")
        return _column_type(args[0], where)[0], True
    if origin is Literal:
        values = typing.get_args(hint)
        return _column_type(type(values[0]), where)[0], False
    if origin in (tuple, list):
        item = typing.get_args(hint)[0]
        if item in _LISTS:
            return _LISTS[item], False
    if isinstance(hint, type) and issubclass(hint, Enum):
        # StrEnum and IntEnum are stored as their values.
        return (ColumnType.STRING if issubclass(hint, str) else ColumnType.INT64), False
    if hint in _SCALARS:
        return _SCALARS[hint], False
    raise TypeError(f"{where}: no column type for {hint!r}")


def schema_of(cls: type, name: str | None = None) -> RowSchema:
    """The row schema of a dataclass, field by field, in declaration order."""
    if not is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    columns = []
    for f in fields(cls):
        ctype, nullable = _column_type(hints[f.name], f"{cls.__name__}.{f.name}")
        columns.append(Column(f.name, ctype, nullable, f.metadata.get("doc", "")))
    return RowSchema(name or cls.__name__, tuple(columns))


def _union(name: str, schemas: Iterable[RowSchema], first: tuple[str, ...]) -> RowSchema:
    """One row holding the columns of several schemas; columns of only some are nullable."""
    schemas = list(schemas)
    seen: dict[str, Column] = {}
    for s in schemas:
        for c in s.columns:
            prior = seen.get(c.name)
            if prior is not None and prior.type is not c.type:
                raise TypeError(f"{name}: column {c.name!r} is {prior.type} and {c.type}")
            if prior is None:
                seen[c.name] = c
    everywhere = {n for n in seen if all(n in s.names for s in schemas)}
    ordered = [*first, *(n for n in seen if n not in first)]
    return RowSchema(
        name,
        tuple(Column(n, seen[n].type, seen[n].nullable or n not in everywhere) for n in ordered),
    )


# Rows ---------------------------------------------------------------------------------------

EVENT_CLASSES: Final = {
    "impression": Impression,
    "click": Click,
    "promo_view": PromoView,
    "order": Order,
    "order_cancel": OrderCancel,
}
assert tuple(EVENT_CLASSES) == EVENT_TYPES

#: A raw event as the lake holds it: every field of every event type (unused ones null)
#: plus the time it arrived.
RAW_ROW: Final = _union(
    "raw_event",
    (schema_of(cls) for cls in EVENT_CLASSES.values()),
    first=("event_id", "event_type", "event_time", "user_id"),
).plus(Column("ingested_at_ms", ColumnType.INT64, False))

#: A decision of the billing rule (what the speed layer claims, what the batch layer joins).
DECISION_ROW: Final = schema_of(Decision, "decision")

#: A settlement: a charge (possibly capped to 0), a stopped charge, or a refund.
LEDGER_ROW: Final = schema_of(LedgerEntry, "ledger")

#: The records of a settlement checkpoint (``settlement.BookState``), in the order they are written.
STATE_RECORDS: Final = ("lifetime", "day", "charge", "cancel")

#: A settlement checkpoint: what a later night needs to go on settling in the same action order.
#: One row per campaign's lifetime spend (``lifetime``), per budget day a later order can fall on
#: (``day``), per charge a later cancel may still refund (``charge``: the decision's columns), and
#: per cancel that came before its order was decided (``cancel``).
SETTLEMENT_STATE_ROW: Final = RowSchema(
    "settlement_state",
    (
        Column("record", ColumnType.STRING, False, "lifetime, day, charge or cancel"),
        Column("campaign_id", ColumnType.STRING, True, "every record but a cancel's"),
        Column(
            "budget_day", ColumnType.STRING, True, "day: the campaign's local day; charge: the day charged"
        ),
        Column("spend_minor", ColumnType.INT64, True, "lifetime and day: spend so far, minor units"),
        Column("charge_minor", ColumnType.INT64, True, "charge: what was charged, minor units"),
        Column("refunded", ColumnType.BOOL, True, "charge: refunded, or stopped by a cancel that came first"),
        *(c for c in DECISION_ROW.nullable().columns if c.name != "campaign_id"),
    ),
)

#: The speed layer's ledger in the lake: a ledger row and the stream entry it came from.
REALTIME_LEDGER_ROW: Final = LEDGER_ROW.plus(Column("stream_id", ColumnType.STRING, False))

#: The nightly job's per-user output: one row per order (decided or organic), one ``null`` row
#: per user-day of touches that did not convert, with the journey's path; one ``count`` row per
#: campaign and counter of the user's admitted touches of the day (``counter``, ``touches``);
#: one ``refused`` row per event of the day refused when deciding (``refusal``: its
#: ``DEAD_LETTER_ROW`` as JSON).
JOURNEY_ROW: Final = RowSchema(
    "journey",
    (
        Column("kind", ColumnType.STRING, False),
        *DECISION_ROW.nullable().columns,
        Column("order_ingested_ms", ColumnType.INT64),
        Column("touch_ingested_ms", ColumnType.INT64),
        Column("path_channels", ColumnType.STRING_LIST, False),
        Column("path_times", ColumnType.INT64_LIST, False),
        Column("in_day", ColumnType.BOOL, False),
        Column("counter", ColumnType.STRING),
        Column("touches", ColumnType.INT64),
        Column("refusal", ColumnType.STRING),
        Column("ivt", ColumnType.STRING, True, "kind ivt: its IVT_ROW as JSON"),
    ),
)


@dataclass(frozen=True, slots=True)
class IvtRow:
    """``ivt/``: one invalid-traffic verdict (``shared_logic.ivt``). ``scope`` ``touch``: a touch
    the general rules flagged at admission (``outcome`` ``refused`` under enforce, else
    ``flagged``), dated by the touch; ``order``: the verdict on the touch that would have won an
    order without the rules (``outcome`` ``flagged``, ``changed`` or ``unattributed``), dated by
    the order, with the charge it kept from the touch's campaign (price before caps)."""

    scope: str
    campaign_id: str
    reason: str
    mode: str
    outcome: str
    user_id: str
    event_id: str
    time_ms: int
    order_id: str | None = None
    avoided_minor: int = 0
    currency: str | None = None


IVT_ROW: Final = schema_of(IvtRow, "ivt")


def ivt_touch_row(campaign_id: str, user_id: str, event_id: str, time_ms: int, flag: Flag) -> IvtRow:
    """The verdict row of a touch the general rules flagged (``admission.traffic_flag``)."""
    outcome = Outcome.REFUSED if flag.enforced else Outcome.FLAGGED
    return IvtRow("touch", campaign_id, flag.reason, flag.mode, outcome, user_id, event_id, time_ms)


def ivt_order_row(user_id: str, v: OrderVerdict) -> IvtRow:
    """The verdict row of an order (``rules.judge_order``)."""
    return IvtRow(
        "order",
        v.campaign_id,
        v.reason,
        v.mode,
        v.outcome,
        user_id,
        v.touch_event_id,
        v.order_time_ms,
        v.order_id,
        v.avoided_minor,
        v.currency,
    )


@dataclass(frozen=True, slots=True)
class IvtSummary:
    """Invalid traffic of one campaign and day (``summarize_ivt``): touches judged invalid by
    reason, orders whose winner a verdict changed or left unattributed, orders only flagged
    (report mode), and the charges avoided (price before caps, the campaign's currency)."""

    dt: str
    campaign_id: str
    reason: str
    touches: int = 0
    touches_refused: int = 0
    orders_changed: int = 0
    orders_unattributed: int = 0
    orders_flagged: int = 0
    avoided_minor: int = 0
    currency: str | None = None


def summarize_ivt(dt: str, rows: Iterable[Mapping[str, Any]]) -> list[IvtSummary]:
    """One ``IvtSummary`` per (campaign, reason) of a day's ``IVT_ROW`` records, sorted. A touch
    counts once per verdict: the touch-scope verdicts and the would-be winners of orders. A record
    may stand for ``n`` verdicts of one scope and outcome (``avoided_minor`` their sum), as the
    nightly job's grouped verdicts do."""
    acc: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        n = int(r.get("n", 1))
        slot = acc.setdefault((str(r["campaign_id"]), str(r["reason"])), {"currency": None})
        slot["touches"] = slot.get("touches", 0) + n
        outcome = str(r["outcome"])
        name = {
            "refused": "touches_refused",
            "changed": "orders_changed",
            "unattributed": "orders_unattributed",
        }.get(outcome, "orders_flagged" if r["scope"] == "order" else None)
        if name is not None:
            slot[name] = slot.get(name, 0) + n
        slot["avoided_minor"] = slot.get("avoided_minor", 0) + int(r.get("avoided_minor") or 0)
        slot["currency"] = slot["currency"] or r.get("currency")
    return [IvtSummary(dt, cid, reason, **slot) for (cid, reason), slot in sorted(acc.items())]


@dataclass(frozen=True, slots=True)
class IvtShapeRow:
    """``ivt_shape/``: the nightly job's whole-day report of one campaign's click-to-order delays
    (``shared_logic.ivt.shape_flag``): its orders won by a click (as decided) per delay bucket
    (``SHAPE_BUCKETS``) and the ``flag`` (``injection_spike``, ``flat_spread``) or null. A report
    only: it never changes a charge."""

    campaign_id: str
    orders: int
    under_10s: int
    s10_to_1h: int
    h1_to_2h: int
    h2_to_24h: int
    over_24h: int
    flag: str | None = None


IVT_SHAPE_ROW: Final = schema_of(IvtShapeRow, "ivt_shape")


def ivt_shape_rows(counts: Mapping[str, Sequence[int]], rules: ShapeRules) -> list[IvtShapeRow]:
    """One ``IvtShapeRow`` per campaign of ``counts`` (orders per ``SHAPE_BUCKETS``), sorted."""
    out = []
    for cid, c in sorted(counts.items()):
        flag = shape_flag(c, rules)
        if len(c) != len(SHAPE_BUCKETS):
            raise ValueError(f"counts of {cid} = {list(c)!r}: one per bucket of {SHAPE_BUCKETS}")
        buckets = dict(zip(SHAPE_BUCKETS, (int(n) for n in c), strict=True))
        out.append(IvtShapeRow(cid, sum(buckets.values()), **buckets, flag=flag.value if flag else None))
    return out


#: The invalid-traffic columns of a metric row, from a day's ``IvtSummary`` rows (``ivt_measures``).
IVT_MEASURES: Final = ("ivt_touches", "ivt_orders_changed", "ivt_orders_unattributed", "ivt_avoided_minor")


def ivt_measures(summaries: Iterable[IvtSummary]) -> dict[str, dict[str, int]]:
    """The ``IVT_MEASURES`` of each campaign of one day's ``IvtSummary`` rows (``summarize_ivt``),
    every reason summed: what the batch metrics, the speed view and the lake view put on a
    campaign's metric rows, one rule for all three. A campaign without a verdict is absent (its
    columns are 0, ``ivt_columns``)."""
    out: dict[str, dict[str, int]] = {}
    for s in summaries:
        slot = out.setdefault(s.campaign_id, dict.fromkeys(IVT_MEASURES, 0))
        slot["ivt_touches"] += s.touches
        slot["ivt_orders_changed"] += s.orders_changed
        slot["ivt_orders_unattributed"] += s.orders_unattributed
        slot["ivt_avoided_minor"] += s.avoided_minor
    return out


def ivt_columns(measures: Mapping[str, Mapping[str, int]], campaign_id: str) -> dict[str, int]:
    """A campaign's ``IVT_MEASURES`` from ``ivt_measures``' answer, 0 when it had no verdict."""
    found = measures.get(campaign_id, {})
    return {name: int(found.get(name, 0)) for name in IVT_MEASURES}


def ivt_field(row: IvtRow) -> str:
    """Where the speed layer keeps a verdict in its day's hash: one field per touch or order, so a
    replay writes the same field again."""
    if row.scope == "order":
        return f"o{SEP}{row.order_id}"
    return f"t{SEP}{row.user_id}{SEP}{row.event_id}"


@dataclass(frozen=True, slots=True)
class FactRow:
    """``attribution/``: one row per order and credited channel under one model."""

    order_id: str
    user_id: str
    channel: str
    credit: float
    credited_revenue_minor: float
    amount_minor: int
    currency: str
    order_time_ms: int
    cancelled: bool
    model: str
    dt: str


FACT_ROW: Final = schema_of(FactRow, "fact")


@dataclass(frozen=True, slots=True)
class MetricRow:
    """``metrics/campaign_daily/``: one row per day, campaign and model.

    ``orders`` and ``revenue_minor`` are credited (fractional under the
    multi-touch models); ``spend_minor`` is what billing charged.
    """

    dt: str = field(metadata={"doc": "UTC day, YYYY-MM-DD"})
    campaign_id: str
    advertiser_id: str
    lever: str = field(metadata={"doc": "ad or promo"})
    currency: str = field(metadata={"doc": "ISO 4217 code of every amount of the row"})
    model: str = field(metadata={"doc": "billing, or the multi-touch model that credited the orders"})
    impressions: int
    clicks: int
    promo_views: int
    orders: float = field(metadata={"doc": "orders credited to the campaign (fractional under multi-touch)"})
    revenue_minor: float = field(metadata={"doc": "credited order value, minor units"})
    spend_minor: int = field(metadata={"doc": "what billing charged, minor units"})
    capped_orders: int = field(metadata={"doc": "orders charged less than their price by a cap"})
    roas: float | None = field(metadata={"doc": "revenue / spend; null when nothing was spent"})
    ivt_touches: int = field(
        metadata={"doc": "invalid-traffic verdicts on the campaign's touches, every reason (ivt_measures)"}
    )
    ivt_orders_changed: int = field(metadata={"doc": "orders whose winner an enforced verdict changed"})
    ivt_orders_unattributed: int = field(metadata={"doc": "orders an enforced verdict left without a winner"})
    ivt_avoided_minor: int = field(
        metadata={"doc": "charges kept from the campaign's invalid touches, minor units, before caps"}
    )


METRIC_ROW: Final = schema_of(MetricRow, "campaign_daily")
#: The columns that identify a metric row; the others but ``dt`` are measures.
METRIC_DIMENSIONS: Final = ("campaign_id", "advertiser_id", "lever", "currency", "model")
METRIC_KEY: Final = ("dt", "campaign_id", "model")
METRIC_MEASURES: Final = tuple(n for n in METRIC_ROW.names if n != "dt" and n not in METRIC_DIMENSIONS)


@dataclass(frozen=True, slots=True)
class DeadLetterRow:
    """``dead_letters/``: a payload that broke the contract, cut to a bounded size, and why."""

    raw: str
    raw_bytes: int
    raw_sha256: str
    field: str
    value: str
    rule: str
    ingested_at_ms: int


DEAD_LETTER_ROW: Final = schema_of(DeadLetterRow, "dead_letter")
#: How much of a bad payload a dead letter keeps by default (the rest is named by length and hash).
DEAD_LETTER_PAYLOAD_BYTES: Final = 4096


def payload_bytes(raw: Any) -> bytes:
    """A payload as the bytes it came as (a decoded object is re-encoded as JSON, whatever it holds)."""
    try:
        if isinstance(raw, (bytes, bytearray, memoryview)):
            return bytes(raw)
        if isinstance(raw, str):
            return raw.encode("utf-8", errors="surrogatepass")  # lone surrogates kept as they came
        return json.dumps(raw, default=str, separators=(",", ":")).encode("utf-8", errors="surrogatepass")
    except Exception:  # deep nesting, cycles, hostile __str__: say what it was, never fail
        return f"<unencodable {type(raw).__name__}>".encode()


def dead_letter(
    raw: Any, reason: Mapping[str, str], at_ms: int, max_bytes: int = DEAD_LETTER_PAYLOAD_BYTES
) -> DeadLetterRow:
    """A bounded record of a bad payload: its first ``max_bytes`` bytes, length, SHA-256 and reason."""
    data = payload_bytes(raw)
    return DeadLetterRow(
        raw=data[:max_bytes].decode("utf-8", errors="replace"),
        raw_bytes=len(data),
        raw_sha256=hashlib.sha256(data).hexdigest(),
        field=str(reason.get("field", "")),
        value=str(reason.get("value", "")),
        rule=str(reason.get("rule", "")),
        ingested_at_ms=at_ms,
    )


def roas(revenue_minor: float, spend_minor: float) -> float | None:
    """Return on ad spend: credited revenue over what billing charged; None when nothing was spent
    (the ``roas`` column's rule, for both layers and every report)."""
    return revenue_minor / spend_minor if spend_minor > 0 else None


def metric_row(**values: Any) -> dict[str, Any]:
    """A metric row as a dict in column order; raises naming a missing or unknown column."""
    unknown = set(values) - set(METRIC_ROW.names)
    if unknown:
        raise KeyError(f"campaign_daily has no column {sorted(unknown)[0]!r}")
    return {n: values[n] for n in METRIC_ROW.names}


#: The ``model`` column: the billing rule's own credit, then the multi-touch models.
BILLING_MODEL: Final = "billing"
MODEL_NAMES: Final = (
    "last_touch",
    "first_touch",
    "linear",
    "position_based",
    "time_decay",
    "markov",
    "shapley",
)
REPORT_MODELS: Final = (BILLING_MODEL, *MODEL_NAMES)

# Lake datasets ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Dataset:
    """A folder of the lake: its path (``{event_type}`` filled per type), partition keys and row."""

    path: str
    keys: tuple[str, ...]
    row: RowSchema | None = None

    def at(self, **values: Any) -> str:
        return self.path.format(**values)


RAW: Final = Dataset("raw/{event_type}", ("dt", "hour"), RAW_ROW)
#: Completeness markers of raw hours: every partition of the input has passed the hour's end plus
#: the allowed lateness (the lake sink), or the hour was backfilled whole. The nightly DAG's sensor
#: waits for the 24 of its day.
LANDED: Final = Dataset("raw/_landed", ("dt", "hour"))
DEAD_LETTERS: Final = Dataset("dead_letters", ("dt",), DEAD_LETTER_ROW)
#: Landed events the nightly job refused when deciding (admission's catalog stage, the identity
#: rule), by the day they are dated: the batch layer's dead letters, as the speed layer's.
REFUSED: Final = Dataset("refused", ("dt",), DEAD_LETTER_ROW)
REALTIME_LEDGER: Final = Dataset("realtime_ledger", ("dt",), REALTIME_LEDGER_ROW)
BATCH_LEDGER: Final = Dataset("batch_ledger", ("dt",), LEDGER_ROW)
ATTRIBUTION: Final = Dataset("attribution", ("model", "dt"), FACT_ROW)
METRICS: Final = Dataset("metrics/campaign_daily", ("dt",), METRIC_ROW)
RECONCILIATION: Final = Dataset("reconciliation", ("dt",))
#: Invalid-traffic verdicts of the nightly job, by the day of the touch or order they judge.
IVT: Final = Dataset("ivt", ("dt",), IVT_ROW)
#: The nightly job's report of each campaign's click-to-order delays (``IvtShapeRow``).
IVT_SHAPE: Final = Dataset("ivt_shape", ("dt",), IVT_SHAPE_ROW)
#: The nightly job's settlement checkpoints: the state after day D, for the job of a later day.
SETTLEMENT_STATE: Final = Dataset("settlement_state", ("dt",), SETTLEMENT_STATE_ROW)

# Records shared with the Lua scripts --------------------------------------------------------

SEP: Final = "|"
#: A cap argument of the charge and refund scripts when the campaign has no such cap.
NO_CAP: Final = -1
TOUCH_CODES: Final = {TouchKind.VIEW: "v", TouchKind.CLICK: "c"}
_CODE_KINDS: Final = {code: kind for kind, code in TOUCH_CODES.items()}
#: Per-campaign, per-day counters of the speed layer (hash fields ``<campaign>|<counter>``).
COUNTERS: Final = {"impression": "impressions", "click": "clicks", "promo_view": "promo_views"}
#: Fields of a campaign's daily stats hash, moved by the charge and refund scripts.
STATS_FIELDS: Final = ("orders", "revenue", "spend", "capped_orders", "refunds")
#: Fields of one entry of the ledger stream.
LEDGER_STREAM_FIELDS: Final = ("kind", "charge", "capped", "day", "due", "d")
#: Fields of one entry of the budget-events stream (what the ad server follows).
BUDGET_EVENT_FIELDS: Final = ("type", "scope", "campaign_id", "day", "spend", "cap", "due_ms")
PENDING_PREFIX: Final = {"decide": "o:", "cancel": "x:"}


class SettleStatus(IntEnum):
    """What the settle script did with one action (its second return value per action)."""

    NOTHING = 0  # settled before: a redelivery
    CHARGED = 1
    STOPPED = 2  # its cancel came first: never charged
    REFUNDED = 3
    REFUSED = -1  # a counter would pass 2^53 - 1


class IngestStatus(IntEnum):
    """What the ingest script did with one op (when it does not return the standing copy)."""

    KNOWN = 0  # the same copy is stored (a touch), or the same order was decided
    NEW = 1
    PENDING = 2  # the same copy is pending
    CONFLICT_DECIDED = 3  # another copy of the order was decided
    REPLACED = 4
    CHANGED = 5  # a replace found another standing copy than the one given: nothing done
    TOO_LATE = 6  # a touch older than its bucket's trim floor minus its retention: nothing done


#: One released action's payload in a budget shard's queue (the settle script reads ``p.<field>``):
#: mode, campaign, price, daily and lifetime caps (``NO_CAP``: none), budget day, order amount,
#: the charge record, budget-day spend, lifetime spend and stats keys, and the decision (JSON).
SETTLE_PAYLOAD_FIELDS: Final = (
    "m",
    "cid",
    "price",
    "dcap",
    "lcap",
    "day",
    "amount",
    "ch",
    "sd",
    "sl",
    "st",
    "d",
)
#: The settle payload's modes: charge a decision, stop one a cancel came before, refund one.
SETTLE_MODES: Final = ("charge", "cancelled", "refund")


def settle_payload(**fields: Any) -> dict[str, Any]:
    """A settle payload, refusing a field the settle script does not read or a missing one."""
    if tuple(fields) != SETTLE_PAYLOAD_FIELDS or fields["m"] not in SETTLE_MODES:
        raise ValueError(
            f"settle payload {sorted(fields)}: fields must be {', '.join(SETTLE_PAYLOAD_FIELDS)}"
        )
    return fields


#: The ingest script's op codes.
INGEST_OPS: Final = {"touch": "t", "pending": "p", "replace_touch": "r", "replace_pending": "P"}
#: The claim script's op codes, and its answer for an order another copy superseded.
CLAIM_OPS: Final = {"decide": "o", "cancel": "x"}
CLAIM_SUPERSEDED: Final = "-"


#: What each Lua script may name in its ``-- contract:`` header, as the header spells it.
LUA_CONTRACT: Final = {
    "touch_member": "kind|campaign_id|arrival_wm|digest|event_id",
    "touch_ids": "event_id -> score",
    "pending_record": "digest|payload",
    "queue_member": "kind|order_id",
    "count_field": "campaign_id|counter",
    "pending_field": "o:order_id x:order_id|digest",
    "claim": "cancelled|digest|decision",
    "charge_record": "charge|day|refunded",
    "no_cap": str(NO_CAP),
    "stats_fields": " ".join(STATS_FIELDS),
    "ledger_fields": " ".join(LEDGER_STREAM_FIELDS),
    "budget_event_fields": " ".join(BUDGET_EVENT_FIELDS),
    "ledger_intent": "first_id last_id",
    "settle_status": " ".join(f"{s.name.lower()}:{s.value}" for s in SettleStatus),
    "ingest_ops": " ".join(f"{name}:{code}" for name, code in INGEST_OPS.items()),
    "ingest_status": " ".join(f"{s.name.lower()}:{s.value}" for s in IngestStatus),
    "claim_ops": " ".join(f"{name}:{code}" for name, code in CLAIM_OPS.items()),
    "claim_superseded": CLAIM_SUPERSEDED,
    "settle_payload": " ".join(SETTLE_PAYLOAD_FIELDS),
    "settle_modes": " ".join(SETTLE_MODES),
}


def touch_member(kind: TouchKind, campaign_id: str, event_id: str, arrival_wm: int, digest: str) -> str:
    """A touch in a user's sorted set (scored by its time), with the watermark of its partition
    when it arrived (an order released before that watermark passed it cannot use it) and the
    digest of its fields (``identity.digest``). The user's ``touch_ids`` hash maps each event id
    to its score (its time): the identity rule's lookup finds the member of that score that ends
    with the event id (one per event id), so the hash need not repeat the member."""
    return f"{TOUCH_CODES[kind]}{SEP}{campaign_id}{SEP}{arrival_wm}{SEP}{digest}{SEP}{event_id}"


@dataclass(frozen=True, slots=True)
class TouchMember:
    kind: TouchKind
    campaign_id: str
    event_id: str
    arrival_wm: int
    digest: str


def parse_touch_member(member: str) -> TouchMember:
    """A member's fields; the event id is last, so it may hold the separator."""
    code, campaign_id, arrival_wm, digest, event_id = member.split(SEP, 4)
    return TouchMember(_CODE_KINDS[code], campaign_id, event_id, int(arrival_wm), digest)


def pending_record(digest: str, payload: str) -> str:
    """A pending order or cancel: the digest of its event's fields (what identifies a copy), then
    its payload (JSON: the order's fields, its partition ``tp`` and arrival watermark ``awm``)."""
    return f"{digest}{SEP}{payload}"


def parse_pending_record(raw: bytes | str) -> tuple[str, str]:
    text = raw.decode() if isinstance(raw, bytes) else raw
    digest, payload = text.split(SEP, 1)
    return digest, payload


def queue_member(kind: str, order_id: str) -> str:
    """A settlement queue entry: ties of release time sort decisions ('0') before cancels ('1'),
    then by order id, byte for byte (the order of ``settlement.action_key``)."""
    return f"{KIND_RANK[kind]}{SEP}{order_id}"


def count_field(campaign_id: str, event_type: str) -> str:
    return f"{campaign_id}{SEP}{COUNTERS[event_type]}"


def parse_count_field(name: str) -> tuple[str, str]:
    campaign_id, counter = name.split(SEP, 1)
    return campaign_id, counter


def pending_field(kind: str, order_id: str, digest: str = "") -> str:
    """An order's field in its bucket's pending hash (``o:<order_id>``: one order per id, the
    identity rule picks the copy), or a cancel's (``x:<order_id>|<digest>``: every distinct cancel
    of an order waits for its own release, so the earliest that counts is the order's cancel
    whichever lands first; a redelivered copy finds its own field)."""
    if kind == "cancel":
        if not digest:
            raise ValueError(f"digest = {digest!r}: a pending cancel's field names its digest")
        return f"{PENDING_PREFIX[kind]}{order_id}{SEP}{digest}"
    return PENDING_PREFIX[kind] + order_id


def pending_kind(name: str) -> str:
    return "decide" if name.startswith(PENDING_PREFIX["decide"]) else "cancel"


def parse_claim(claim: bytes) -> tuple[bool, str, bytes]:
    """``cancelled|digest|decision``: whether a cancel came first, the digest of the order event
    that was decided (a later copy with another digest is a conflicting order), and the decision
    (empty: organic)."""
    cancelled, digest, decision = claim.split(SEP.encode(), 2)
    return cancelled == b"1", digest.decode(), decision


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A partition's state in the speed layer's ``clocks`` hash, written after a batch's effects:
    the next offset to read, the partition's event-time watermark, and the release bound its owner
    had reached (every action released below it is enqueued for settlement). Encoded
    ``offset|watermark|released``; a two-field value (an older worker's) reads as released 0."""

    offset: int
    watermark: int
    released: int = 0

    def encode(self) -> str:
        return f"{self.offset}{SEP}{self.watermark}{SEP}{self.released}"

    @classmethod
    def parse(cls, raw: bytes | str) -> Checkpoint:
        text = raw.decode() if isinstance(raw, bytes) else raw
        parts = [int(x) for x in text.split(SEP)]
        return cls(*parts[:3])


#: The one mapping between an order event and its fields: the speed layer's pending payload, a
#: raw row of the lake (``RAW_ROW`` columns of the same names), the nightly job's orders.
ORDER_FIELDS: Final = tuple(f for f in Order.__dataclass_fields__ if f != "event_type")


def order_payload(order: Order) -> dict[str, Any]:
    """An order's fields (promo codes as a list: JSON- and Arrow-ready)."""
    out: dict[str, Any] = {name: getattr(order, name) for name in ORDER_FIELDS}
    out["promo_codes"] = list(order.promo_codes)
    return out


def order_from_payload(p: Mapping[str, Any]) -> Order:
    """The order ``order_payload`` wrote, or a raw row held (extra keys ignored, null codes: none)."""
    values = {name: p[name] for name in ORDER_FIELDS}
    values["event_time"] = int(values["event_time"])
    values["amount_minor"] = int(values["amount_minor"])
    values["promo_codes"] = tuple(values["promo_codes"]) if values["promo_codes"] is not None else ()
    return Order(**values)


def order_decision_fields(order: Order) -> dict[str, Any]:
    """The order's own columns of a ``DECISION_ROW`` (an organic order has no campaign)."""
    return {
        "order_id": order.order_id,
        "user_id": order.user_id,
        "order_event_id": order.event_id,
        "order_time_ms": order.event_time,
        "merchant_id": order.merchant_id,
        "amount_minor": order.amount_minor,
        "currency": order.currency,
    }


def cap_arg(cap: int | None) -> int:
    return NO_CAP if cap is None else cap


_DECISION_NAMES: Final = DECISION_ROW.names


def decision_record(d: Decision) -> dict[str, Any]:
    """A decision as plain values, in ``DECISION_ROW`` order (JSON- and Arrow-ready)."""
    out: dict[str, Any] = {}
    for name in _DECISION_NAMES:
        v = getattr(d, name)
        out[name] = v.value if isinstance(v, Enum) else v
    return out


def decision_from_record(rec: Mapping[str, Any]) -> Decision:
    """The inverse of ``decision_record`` (also reads a row with extra columns)."""
    values = {name: rec[name] for name in _DECISION_NAMES}
    values["lever"] = Lever(values["lever"])
    values["touch_kind"] = TouchKind(int(values["touch_kind"]))
    for name in ("order_time_ms", "amount_minor", "touch_time_ms", "price_minor"):
        values[name] = int(values[name])
    return Decision(**values)


def decision_values(d: Decision) -> list[Any]:
    """A decision as Redis holds it (a claim, a queued settlement, the ledger stream): its values in
    ``DECISION_ROW`` order, no names (``encode``d as a JSON array: about half the bytes of the
    record). Declared here once; ``codec.encode_decision`` writes it, ``decision_from_values`` reads it."""
    out: list[Any] = []
    for name in _DECISION_NAMES:
        v = getattr(d, name)
        out.append(v.value if isinstance(v, Enum) else v)
    return out


def decision_from_values(values: Iterable[Any]) -> Decision:
    """The inverse of ``decision_values``; refuses a list of another length (another layout's record)."""
    items = list(values)
    if len(items) != len(_DECISION_NAMES):
        raise ValueError(
            f"decision = {items!r}: must hold {len(_DECISION_NAMES)} values ({', '.join(_DECISION_NAMES)})"
        )
    return decision_from_record(dict(zip(_DECISION_NAMES, items, strict=True)))


def state_records(state: BookState) -> list[dict[str, Any]]:
    """A settlement state as ``SETTLEMENT_STATE_ROW`` records (sorted, so equal states give equal rows)."""
    empty: dict[str, Any] = dict.fromkeys(SETTLEMENT_STATE_ROW.names)
    out: list[dict[str, Any]] = []
    for cid, spend in sorted(state.spend_lifetime.items()):
        out.append({**empty, "record": "lifetime", "campaign_id": cid, "spend_minor": spend})
    for (cid, day), spend in sorted(state.spend_day.items()):
        out.append({**empty, "record": "day", "campaign_id": cid, "budget_day": day, "spend_minor": spend})
    for _, r in sorted(state.charges.items()):
        out.append(
            {
                **empty,
                **decision_record(r.decision),
                "record": "charge",
                "budget_day": r.budget_day,
                "charge_minor": r.charge_minor,
                "refunded": r.refunded,
            }
        )
    out.extend({**empty, "record": "cancel", "order_id": order_id} for order_id in sorted(state.cancelled))
    return out


def state_from_records(records: Iterable[Mapping[str, Any]]) -> BookState:
    """The inverse of ``state_records`` (also reads rows with extra columns, in any order)."""
    lifetime: dict[str, int] = {}
    days: dict[tuple[str, str], int] = {}
    charges: dict[str, ChargeRecord] = {}
    cancelled: set[str] = set()
    for rec in records:
        kind = rec["record"]
        if kind == "lifetime":
            lifetime[rec["campaign_id"]] = int(rec["spend_minor"])
        elif kind == "day":
            days[(rec["campaign_id"], rec["budget_day"])] = int(rec["spend_minor"])
        elif kind == "charge":
            charges[rec["order_id"]] = ChargeRecord(
                decision_from_record(rec), int(rec["charge_minor"]), rec["budget_day"], bool(rec["refunded"])
            )
        elif kind == "cancel":
            cancelled.add(rec["order_id"])
        else:
            raise ValueError(f"record = {kind!r}: must be one of {', '.join(STATE_RECORDS)}")
    return BookState(lifetime, days, charges, frozenset(cancelled))
