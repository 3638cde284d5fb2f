"""Between events and Redis: a batch of records to the ingest script's arguments, and Redis
records back to the rules' types. The encodings are the contract's (``shared_logic.contract``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from realtime.clock import TP, Clocks, tp_name
from realtime.deadletters import DeadLetter
from realtime.keys import Keys
from realtime.routing import UserPartitions
from shared_logic import Catalog, Decision, InvalidEvent, Lever, Order, PromoView, Touch, parse_event
from shared_logic.contract import (
    count_field,
    decision_from_record,
    decision_record,
    parse_touch_member,
    pending_field,
    touch_member,
)
from shared_logic.errors import short_repr
from shared_logic.events import Click, Event, Impression
from shared_logic.policy import FUTURE_RULE, in_future
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


Record = tuple[TP, int, Any]  # (topic-partition, offset, raw value)


@dataclass(slots=True)
class Batch:
    """A parsed batch: ingest calls per user bucket, the dead letters and the counts."""

    ops: dict[int, BucketOps] = field(default_factory=dict)
    dead: list[DeadLetter] = field(default_factory=list)
    accepted: Counter[str] = field(default_factory=Counter)
    dead_fields: Counter[str] = field(default_factory=Counter)
    too_late: int = 0  # touches that arrived too far behind their partition to earn any order
    misrouted: Counter[str] = field(default_factory=Counter)  # by topic: not in their user's partition


@dataclass(frozen=True, slots=True)
class BuildContext:
    """What parsing a batch needs besides the records."""

    catalog: Catalog
    keys: Keys
    retention_ms: int  # longest window + allowed lateness
    max_future_ms: int
    now_ms: int
    user_partitions: UserPartitions | None = None  # to count events outside their user's partition


def check_touch(event: Event, catalog: Catalog) -> str | None:
    """Rules beyond the wire contract for a touch: the broken rule, or None."""
    campaign = catalog.get(event.campaign_id)  # type: ignore[union-attr]  # touches carry a campaign
    if campaign is None:
        return "is not a campaign of the catalog"
    if isinstance(event, PromoView) != (campaign.lever is Lever.PROMO):
        return f"is a {campaign.lever} campaign, which a {event.event_type} cannot touch"
    return None


def build(records: Iterable[Record], ctx: BuildContext, clocks: Clocks, day_cache: dict[int, str]) -> Batch:
    """Parse and validate a batch into per-bucket ingest calls, stamping each event with its
    partition's arrival watermark and moving the partitions' clocks.

    Any failure with one record (bad bytes, a broken rule, a bug) makes that record a dead
    letter, with the exception's class as the rule when it is not a contract error; a dead
    letter moves its partition's offset, never its watermark.
    """
    batch = Batch()
    for tp, offset, raw in records:
        clock = clocks.parts.get(tp) or clocks.assign(tp, offset)
        if offset < clock.next_offset:  # applied before the checkpoint: a redelivery
            continue
        try:
            moved = _add(batch, raw, clock.watermark, tp, ctx, day_cache)
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


def _add(
    batch: Batch, raw: Any, awm: int, tp: TP, ctx: BuildContext, day_cache: dict[int, str]
) -> int | None:
    """Add one record's op; returns the event time that moves its partition (None: it moves nothing)."""
    event = parse_event(raw)
    t = event.event_time
    if in_future(t, ctx.now_ms, ctx.max_future_ms):
        raise InvalidEvent("event_time", t, FUTURE_RULE)
    etype = event.event_type
    if ctx.user_partitions is not None and tp[1] != ctx.user_partitions.of(event.user_id):
        batch.misrouted[tp[0]] += 1
    kind = TOUCH_KINDS.get(etype)
    keys = ctx.keys
    if kind is not None:
        touching: Impression | Click | PromoView = event  # type: ignore[assignment]  # a touch, by its tag
        campaign_id = touching.campaign_id
        broken = check_touch(event, ctx.catalog)
        if broken is not None:
            raise InvalidEvent("campaign_id", campaign_id, broken)
        batch.accepted[etype] += 1
        if t < awm - ctx.retention_ms:
            batch.too_late += 1  # no order still to be released may use it (see engine): keep nothing
            return t
        user = touching.user_id
        bucket = keys.bucket(user)
        ops = batch.ops.get(bucket) or batch.ops.setdefault(bucket, BucketOps())
        day = day_cache.get(t // MS_PER_DAY)
        if day is None:
            day = day_cache[t // MS_PER_DAY] = utc_day(t)
        ops.args.append(
            (
                "t",
                ops.key(keys.touches_in(bucket, user)),
                ops.key(keys.counts(bucket, day)),
                touch_member(kind, campaign_id, touching.event_id, awm),
                t,
                count_field(campaign_id, etype),
            )
        )
        ops.tags.append(("touch", etype))
        return t
    data: dict[str, Any] = {"order_id": event.order_id, "event_time": t, "user_id": event.user_id}  # type: ignore[union-attr]
    if isinstance(event, Order):
        data.update(
            event_id=event.event_id,
            merchant_id=event.merchant_id,
            amount_minor=event.amount_minor,
            currency=event.currency,
            promo_codes=list(event.promo_codes),
        )
    action = "decide" if isinstance(event, Order) else "cancel"
    data["tp"], data["awm"] = tp_name(tp), awm
    bucket = keys.bucket(event.user_id)
    ops = batch.ops.get(bucket) or batch.ops.setdefault(bucket, BucketOps())
    claim = ops.key(keys.claim(bucket, data["order_id"])) if action == "decide" else 0
    ops.args.append(
        (
            "p",
            claim,
            ops.key(keys.pending(bucket)),
            pending_field(action, data["order_id"]),
            orjson.dumps(data).decode(),
        )
    )
    ops.tags.append((action, data))
    batch.accepted[etype] += 1
    return t


def order_of(p: dict[str, Any]) -> Order:
    """The order a pending payload holds (validated when it was ingested)."""
    return Order(
        p["event_id"],
        p["event_time"],
        p["user_id"],
        p["order_id"],
        p["merchant_id"],
        p["amount_minor"],
        p["currency"],
        tuple(p["promo_codes"]),
    )


def touches_of(members: Iterable[tuple[bytes, float]], user_id: str, release_ms: int) -> list[Touch]:
    """The touches of a user an order released at ``release_ms`` may use: those that arrived
    before their partition's watermark passed the release (member, score = touch time)."""
    out = []
    for member, score in members:
        kind, campaign_id, event_id, arrival_wm = parse_touch_member(member.decode())
        if arrival_wm <= release_ms:
            out.append(Touch(event_id, user_id, campaign_id, kind, int(score)))
    return out


def encode_decision(d: Decision) -> bytes:
    return orjson.dumps(decision_record(d))


def decode_decision(raw: bytes) -> Decision:
    return decision_from_record(orjson.loads(raw))


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
