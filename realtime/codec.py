"""Between events and Redis: a batch of records to the ingest script's arguments, and Redis
records back to the rules' types. The encodings are the contract's (``shared_logic.contract``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from realtime.clock import TP, Clocks, tp_name
from realtime.deadletters import DeadLetter
from realtime.keys import Keys
from realtime.routing import UserPartitions
from shared_logic import (
    Catalog,
    Decision,
    InvalidEvent,
    Lever,
    Order,
    PromoView,
    Touch,
    TouchKind,
    parse_event,
)
from shared_logic.admission import refusal, traffic_flag
from shared_logic.contract import (
    INGEST_OPS,
    IvtRow,
    count_field,
    decision_from_values,
    decision_values,
    ivt_touch_row,
    order_from_payload,
    order_payload,
    parse_pending_record,
    parse_touch_member,
    pending_field,
    pending_record,
    touch_member,
)
from shared_logic.errors import short_repr
from shared_logic.events import Click, Impression
from shared_logic.identity import Rank, digest, rank
from shared_logic.ivt import GivtLists, IvtPolicy
from shared_logic.rules import TOUCH_KINDS
from shared_logic.settlement import LedgerEntry
from shared_logic.timeutil import MS_PER_DAY, utc_day


@dataclass(slots=True)
class BucketOps:
    """One ingest call's arguments: its KEYS (by first use), ops, and what each op was."""

    index: dict[str, int] = field(default_factory=dict)
    args: list[Any] = field(default_factory=list)
    tags: list[tuple[str, Any]] = field(default_factory=list)

    def key(self, name: str) -> int:
        """1-based position of ``name`` in the call's KEYS, adding it on first use."""
        pos = self.index.get(name)
        if pos is None:
            pos = self.index[name] = len(self.index) + 1
        return pos


#: (topic-partition, offset, raw value, arrival ms): the arrival is the record's timestamp, what
#: landing stamps the event with too, so both apply the future bound against the same instant;
#: None (a record with no timestamp) is the batch's wall clock.
Record = tuple[TP, int, Any, int | None]


@dataclass(slots=True)
class Batch:
    """A parsed batch: ingest calls per user bucket, the dead letters and the counts."""

    ops: dict[int, BucketOps] = field(default_factory=dict)
    dead: list[DeadLetter] = field(default_factory=list)
    accepted: Counter[str] = field(default_factory=Counter)
    dead_fields: Counter[str] = field(default_factory=Counter)
    too_late: int = 0  # touches that arrived too far behind their partition to earn any order
    misrouted: Counter[str] = field(default_factory=Counter)  # by topic: not in their user's partition
    ivt: list[IvtRow] = field(default_factory=list)  # touches the general invalid-traffic rules flagged


@dataclass(frozen=True, slots=True)
class BuildContext:
    """What parsing a batch needs besides the records."""

    catalog: Catalog
    keys: Keys
    retention_ms: Mapping[TouchKind, int]  # each touch kind's: its longest window + allowed lateness
    max_future_ms: int
    now_ms: int
    user_partitions: UserPartitions | None = None  # to count events outside their user's partition
    ivt: IvtPolicy = field(default_factory=IvtPolicy)
    lists: GivtLists = field(default_factory=GivtLists)


def build(records: Iterable[Record], ctx: BuildContext, clocks: Clocks, day_cache: dict[int, str]) -> Batch:
    """Parse and validate a batch into per-bucket ingest calls, stamping each event with its
    partition's arrival watermark and moving the partitions' clocks.

    Any failure with one record (bad bytes, a broken rule, a bug) makes that record a dead
    letter, with the exception's class as the rule when it is not a contract error; a dead
    letter moves its partition's offset, never its watermark.
    """
    batch = Batch()
    for tp, offset, raw, arrival in records:
        clock = clocks.parts.get(tp) or clocks.assign(tp, offset)
        if offset < clock.next_offset:  # applied before the checkpoint: a redelivery
            continue
        try:
            moved = _add(batch, raw, clock.watermark, tp, ctx, day_cache, arrival)
        except InvalidEvent as exc:
            batch.dead.append((raw, exc.as_dict()))
            batch.dead_fields[exc.field] += 1
            moved = None
        except Exception as exc:  # whatever one record does, it is that record's dead letter
            batch.dead.append(
                (raw, {"field": "<payload>", "value": short_repr(raw), "rule": type(exc).__name__})
            )
            batch.dead_fields["<payload>"] += 1
            moved = None
        clock.next_offset = offset + 1
        if moved is not None and moved > clock.watermark:
            clock.watermark = moved
    return batch


@dataclass(frozen=True, slots=True)
class TouchItem:
    """What the engine needs of an ingested touch when the ingest script answers for it."""

    raw: Any
    event_type: str
    user_id: str
    event_id: str
    time_ms: int
    digest: str
    member: str
    bucket: int
    counts_key: str
    count_field: str


@dataclass(frozen=True, slots=True)
class PendingItem:
    """An ingested order or cancel: its payload (what the queue releases) and its pending record."""

    raw: Any
    kind: str  # "decide" or "cancel"
    data: dict[str, Any]
    bucket: int
    digest: str
    record: str


def _add(
    batch: Batch,
    raw: Any,
    awm: int,
    tp: TP,
    ctx: BuildContext,
    day_cache: dict[int, str],
    arrival_ms: int | None = None,
) -> int | None:
    """Add one record's op; returns the event time that moves its partition (None: it moves nothing)."""
    event = parse_event(raw)
    t = event.event_time
    arrival = ctx.now_ms if arrival_ms is None or arrival_ms <= 0 else arrival_ms
    refused = refusal(event, arrival, ctx.max_future_ms, ctx.catalog)
    if refused is not None:
        raise refused
    etype = event.event_type
    if ctx.user_partitions is not None and tp[1] != ctx.user_partitions.of(event.user_id):
        batch.misrouted[tp[0]] += 1
    kind = TOUCH_KINDS.get(etype)
    keys = ctx.keys
    dg = digest(event)
    if kind is not None:
        touching: Impression | Click | PromoView = event  # type: ignore[assignment]  # a touch, by its tag
        campaign_id = touching.campaign_id
        if touching.user_agent is not None or touching.ip is not None:
            flag = traffic_flag(event, ctx.ivt, ctx.lists)
            if flag is not None:
                batch.ivt.append(ivt_touch_row(campaign_id, touching.user_id, touching.event_id, t, flag))
                if flag.enforced:  # valid data, but no candidate and no count: it moves the clock only
                    return t
        batch.accepted[etype] += 1
        if t < awm - ctx.retention_ms[kind]:
            batch.too_late += 1  # no order still to be released may use it (see engine): keep nothing
            return t
        user = touching.user_id
        bucket = keys.bucket(user)
        ops = batch.ops.get(bucket) or batch.ops.setdefault(bucket, BucketOps())
        day = day_cache.get(t // MS_PER_DAY)
        if day is None:
            day = day_cache[t // MS_PER_DAY] = utc_day(t)
        member = touch_member(kind, campaign_id, touching.event_id, awm, dg)
        counts_key = keys.counts(bucket, day)
        item = TouchItem(
            raw,
            etype,
            user,
            touching.event_id,
            t,
            dg,
            member,
            bucket,
            counts_key,
            count_field(campaign_id, etype),
        )
        add_op(ops, keys, item)
        return t
    if isinstance(event, Order):
        action = "decide"
        data = order_payload(event)
    else:
        action = "cancel"
        data = {
            "order_id": event.order_id,  # type: ignore[union-attr]  # a cancel, by its tag
            "event_time": t,
            "user_id": event.user_id,
            "event_id": event.event_id,
        }
    data["tp"], data["awm"], data["dg"] = tp_name(tp), awm, dg
    # Orders and cancels live in their order id's bucket: an order is named by its id whoever
    # the user (``shared_logic.identity``), and a cancel finds its order whatever its user_id.
    bucket = keys.bucket(data["order_id"])
    ops = batch.ops.get(bucket) or batch.ops.setdefault(bucket, BucketOps())
    record = pending_record(dg, orjson.dumps(data).decode())
    add_op(ops, keys, PendingItem(raw, action, data, bucket, dg, record))
    batch.accepted[etype] += 1
    return t


def add_op(ops: BucketOps, keys: Keys, item: TouchItem | PendingItem) -> None:
    """Add the ingest op of a touch, or of an order or a cancel, to its bucket's call."""
    if isinstance(item, TouchItem):
        ops.args.append(
            (
                INGEST_OPS["touch"],
                ops.key(keys.touches_in(item.bucket, item.user_id)),
                ops.key(keys.touch_ids_in(item.bucket, item.user_id)),
                ops.key(item.counts_key),
                item.event_id,
                item.member,
                item.time_ms,
                item.count_field,
                item.digest,
            )
        )
        ops.tags.append(("touch", item))
        return
    oid = item.data["order_id"]
    ops.args.append(
        (
            INGEST_OPS["pending"],
            ops.key(keys.claim(item.bucket, oid)) if item.kind == "decide" else 0,
            ops.key(keys.pending(item.bucket)),
            pending_field(item.kind, oid, item.digest),
            item.record,
            item.digest,
        )
    )
    ops.tags.append((item.kind, item))


def replace_op(
    ops: BucketOps, keys: Keys, item: TouchItem | PendingItem, standing: Any, catalog: Catalog
) -> None:
    """Add the op that replaces the standing copy of ``item`` with it (the ingest script's
    ``replace_touch`` / ``replace_pending``, done only while that copy still stands)."""
    if isinstance(item, TouchItem):
        old_member, old_time = standing[0].decode(), int(standing[1])
        old = parse_touch_member(old_member)
        ops.args.append(
            (
                INGEST_OPS["replace_touch"],
                ops.key(keys.touches_in(item.bucket, item.user_id)),
                ops.key(keys.touch_ids_in(item.bucket, item.user_id)),
                ops.key(keys.counts(item.bucket, utc_day(old_time))),
                ops.key(item.counts_key),
                item.event_id,
                old_member,
                item.member,
                item.time_ms,
                count_field(old.campaign_id, touch_type(old.kind, old.campaign_id, catalog)),
                item.count_field,
            )
        )
    else:
        oid = item.data["order_id"]
        ops.args.append(
            (
                INGEST_OPS["replace_pending"],
                ops.key(keys.claim(item.bucket, oid)),
                ops.key(keys.pending(item.bucket)),
                pending_field(item.kind, oid),
                standing.decode(),
                item.record,
            )
        )
    ops.tags.append(("replace", item))


def touch_type(kind: TouchKind, campaign_id: str, catalog: Catalog) -> str:
    """The event type of a stored touch: a click, or a view of an admitted campaign, whose lever
    says which (admission lets a promo view touch promo campaigns only, an impression ad ones)."""
    if kind is TouchKind.CLICK:
        return "click"
    campaign = catalog.get(campaign_id)
    return "promo_view" if campaign is not None and campaign.lever is Lever.PROMO else "impression"


def standing_rank(item: TouchItem | PendingItem, standing: Any) -> tuple[Rank, Rank, Any]:
    """The ranks of a new copy and of the copy standing (as the ingest script returned it), and
    the standing copy as a dead letter's payload."""
    if isinstance(item, TouchItem):
        old = parse_touch_member(standing[0].decode())
        old_time = int(standing[1])
        copy = {  # what the store keeps of the displaced copy, for its dead letter
            "touch_kind": old.kind.name.lower(),
            "event_id": old.event_id,
            "user_id": item.user_id,
            "event_time": old_time,
            "campaign_id": old.campaign_id,
            "digest": old.digest,
        }
        return rank(item.time_ms, item.event_id, item.digest), rank(old_time, old.event_id, old.digest), copy
    old_digest, old_payload = parse_pending_record(standing)
    old_data = orjson.loads(old_payload)
    return (
        rank(item.data["event_time"], item.data["event_id"], item.digest),
        rank(old_data["event_time"], old_data["event_id"], old_digest),
        old_payload,
    )


def order_of(p: dict[str, Any]) -> Order:
    """The order a pending payload holds (validated when it was ingested)."""
    return order_from_payload(p)


def touches_of(
    members: Iterable[tuple[bytes, float]],
    user_id: str,
    release_ms: int,
    retention_ms: Mapping[TouchKind, int],
) -> list[Touch]:
    """The touches of a user an order released at ``release_ms`` may use: those that arrived
    before their partition's watermark passed the release, no older than the release minus their
    kind's retention (member, score = touch time). The second bound holds whether or not the
    ingest script has trimmed such a touch yet, so the decision does not depend on batching."""
    out = []
    for member, score in members:
        m = parse_touch_member(member.decode())
        if m.arrival_wm <= release_ms and score >= release_ms - retention_ms[m.kind]:
            out.append(Touch(m.event_id, user_id, m.campaign_id, m.kind, int(score)))
    return out


def encode_decision(d: Decision) -> bytes:
    """A decision as Redis holds it (``contract.decision_values``: a JSON array, no names)."""
    return orjson.dumps(decision_values(d))


def decode_decision(raw: bytes) -> Decision:
    return decision_from_values(orjson.loads(raw))


def ledger_entry(fields: dict[bytes, bytes]) -> LedgerEntry:
    """A ledger line from one entry of the ledger stream (``LEDGER_STREAM_FIELDS``)."""
    return LedgerEntry.of(
        fields[b"kind"].decode(),  # type: ignore[arg-type]  # one of the three kinds the scripts write
        decode_decision(fields[b"d"]),
        int(fields[b"due"]),
        int(fields[b"charge"]),
        fields[b"capped"] == b"1",
        fields[b"day"].decode(),
    )
