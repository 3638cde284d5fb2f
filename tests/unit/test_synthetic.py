import dataclasses
import hashlib
import itertools
import json
import unicodedata
from collections import Counter
from typing import Any

import pytest

from devtools.awkward import AWKWARD_KINDS, BOUNDED_CAMPAIGNS
from devtools.synthetic import SyntheticConfig, SyntheticEvent, Traffic, generate
from shared_logic import (
    AttributionPolicy,
    Click,
    Event,
    Impression,
    InvalidEvent,
    Order,
    OrderCancel,
    PromoView,
    attribute_order,
    budget_day,
    day_bounds_ms,
    parse_event,
    touch_from_event,
)
from shared_logic.events import MAX_ID_LENGTH, MAX_PAYLOAD_BYTES, MAX_PROMO_CODES
from shared_logic.money import MAX_AMOUNT_MINOR
from shared_logic.policy import DEFAULT_MAX_FUTURE_MS
from shared_logic.timeutil import to_epoch_ms

pytestmark = pytest.mark.unit
# The regular traffic alone (awkward traffic is tested below, whatever the default rate).
SMALL = SyntheticConfig(
    users=300, days=3, duplicate_rate=0.02, late_rate=0.02, malformed_rate=0.01, awkward_rate=0.0
)


def test_same_seed_same_traffic_other_seed_other_traffic() -> None:
    a, b = generate(SMALL), generate(SMALL)
    assert list(a.jsonl()) == list(b.jsonl())
    c = generate(SyntheticConfig(seed=8, users=300, days=3, awkward_rate=0.0))
    assert list(a.jsonl())[:50] != list(c.jsonl())[:50]


def test_traffic_has_every_feature_and_arrives_in_order() -> None:
    t = generate(SMALL)
    arrivals = [e.arrival_ms for e in t.events]
    assert arrivals == sorted(arrivals)
    types = Counter(p["event_type"] for p in t.valid_payloads())
    assert set(types) == {"impression", "click", "promo_view", "order", "order_cancel"}
    assert any(e.duplicate for e in t.events)
    malformed = [e for e in t.events if e.malformed]
    assert malformed
    for e in malformed:
        with pytest.raises(InvalidEvent):
            parse_event(e.payload)
    late = [e for e in t.events if not e.malformed and e.arrival_ms - e.payload["event_time"] > 60_000]  # type: ignore[index]
    assert late
    # Out of order: some event arrives before an event with an earlier event time.
    times = [p["event_time"] for p in t.valid_payloads()]
    assert any(x > y for x, y in itertools.pairwise(times))


def test_every_valid_payload_parses_and_campaigns_exist() -> None:
    t = generate(SMALL)
    orders = 0
    with_both = 0
    for p in t.valid_payloads():
        event = parse_event(p)
        if "campaign_id" in p:
            assert p["campaign_id"] in t.catalog
        if isinstance(event, Order):
            orders += 1
            with_both += bool(event.promo_codes)
    assert orders > 50
    assert with_both > 5


# ---- awkward but valid traffic -------------------------------------------------------------------

AWKWARD = SyntheticConfig(users=300, days=3, duplicate_rate=0.02, awkward_rate=0.05)
# The digest of ``generate(OLD)`` before awkward traffic existed (commit c838c3e): with
# awkward_rate 0 the demo, ``make live`` and every test see the very same bytes.
OLD: dict[str, Any] = {
    "users": 120,
    "days": 2,
    "duplicate_rate": 0.02,
    "late_rate": 0.02,
    "malformed_rate": 0.01,
    "cancel_rate": 0.2,
}
OLD_DIGEST = "2bb12887559a8fe66da2f3a2dd36d80bfae1111e4532a57344c65e96447b760f"


def _digest(t: Traffic) -> str:
    h = hashlib.sha256()
    for e in t.events:
        h.update(f"{e.arrival_ms} {e.malformed:d} {e.duplicate:d} {e.to_json()}\n".encode())
    h.update(json.dumps(t.catalog.to_records(), sort_keys=True).encode())
    return h.hexdigest()


def _plain(events: list[SyntheticEvent]) -> list[tuple[int, str, bool, bool]]:
    return [(e.arrival_ms, e.to_json(), e.malformed, e.duplicate) for e in events]


@pytest.fixture(scope="module")
def awkward() -> Traffic:
    return generate(AWKWARD)


def test_awkward_rate_zero_is_the_old_traffic_byte_for_byte() -> None:
    t = generate(SyntheticConfig(**OLD))
    assert _digest(t) == OLD_DIGEST
    assert _digest(generate(SyntheticConfig(**OLD, awkward_rate=0.0))) == OLD_DIGEST
    assert t.awkward == {}
    assert not any(e.awkward for e in t.events)
    assert not set(BOUNDED_CAMPAIGNS) & {c.campaign_id for c in t.catalog}


def test_awkward_traffic_is_only_added(awkward: Traffic) -> None:
    """The regular deliveries and campaigns are those of awkward_rate 0, in the same order."""
    plain = generate(dataclasses.replace(AWKWARD, awkward_rate=0.0))
    assert _plain([e for e in awkward.events if e.awkward is None]) == _plain(plain.events)
    records = awkward.catalog.to_records()
    assert records[: len(plain.catalog)] == plain.catalog.to_records()
    assert [r["campaign_id"] for r in records[len(plain.catalog) :]] == list(BOUNDED_CAMPAIGNS)
    bounded = [awkward.catalog.get(cid) for cid in BOUNDED_CAMPAIGNS]
    assert all(c is not None and (c.start_ms is not None or c.end_ms is not None) for c in bounded)
    # No regular delivery touches a bounded campaign: they are the scenes' alone.
    assert not any(
        p.get("campaign_id") in BOUNDED_CAMPAIGNS
        for e in awkward.events
        if e.awkward is None
        for p in [e.payload]
        if isinstance(p, dict)
    )


def test_awkward_traffic_is_deterministic_by_seed(awkward: Traffic) -> None:
    again = generate(AWKWARD)
    assert [(*x, e.awkward) for x, e in zip(_plain(again.events), again.events, strict=True)] == [
        (*x, e.awkward) for x, e in zip(_plain(awkward.events), awkward.events, strict=True)
    ]
    other = generate(dataclasses.replace(AWKWARD, seed=8))
    assert [e.to_json() for e in other.events if e.awkward][:40] != [
        e.to_json() for e in awkward.events if e.awkward
    ][:40]


def test_every_awkward_kind_at_a_positive_rate_and_every_payload_valid(awkward: Traffic) -> None:
    kinds = Counter(e.awkward for e in awkward.events if e.awkward and not e.duplicate)
    assert set(kinds) == set(AWKWARD_KINDS)
    regular = sum(1 for e in awkward.events if e.awkward is None and not e.malformed and not e.duplicate)
    assert set(awkward.awkward) == set(AWKWARD_KINDS)
    assert sum(len(ids) for ids in awkward.awkward.values()) == sum(kinds.values())
    # About awkward_rate scenes per regular delivery, each of one to five events.
    assert AWKWARD.awkward_rate * regular <= sum(kinds.values()) <= 5 * AWKWARD.awkward_rate * regular
    assert any(e.duplicate for e in awkward.events if e.awkward)
    for e in awkward.events:
        if e.awkward:
            assert not e.malformed
            assert isinstance(e.payload, dict)
            event = parse_event(e.payload)
            assert parse_event(e.to_json()) == event  # the bytes a producer sends, unicode included
            assert len(e.to_json().encode()) <= MAX_PAYLOAD_BYTES


def test_awkward_kinds_pick_the_scenes() -> None:
    t = generate(
        SyntheticConfig(users=40, days=1, awkward_rate=0.5, awkward_kinds=("zero_amount", "cancel_twice"))
    )
    assert set(t.awkward) == {"zero_amount", "cancel_twice"}
    assert len(t.awkward["zero_amount"]) > 10
    with pytest.raises(ValueError, match="awkward_kinds"):
        SyntheticConfig(awkward_kinds=("no_such_kind",))
    with pytest.raises(ValueError, match="awkward_rate"):
        SyntheticConfig(awkward_rate=1.5)


def _scenes(t: Traffic) -> dict[str, list[list[SyntheticEvent]]]:
    """The deliveries of each kind, one list per user (a scene's fresh user, or a regular user)."""
    out: dict[str, dict[str, list[SyntheticEvent]]] = {}
    for e in t.events:
        if e.awkward and not e.duplicate:
            out.setdefault(e.awkward, {}).setdefault(e.payload["user_id"], []).append(e)  # type: ignore[index]
    return {kind: list(users.values()) for kind, users in out.items()}


# Scenes of a fresh user whose outcome the billing rule alone decides, and what it decides.
ATTRIBUTED = (
    "click_at_window_start",
    "view_at_window_start",
    "touch_at_order_time",
    "campaign_last_ms",
    "campaign_start_bound",
    "promo_code_before_end",
    "rfc3339_near_midnight",
    "zero_amount",
    "max_amount",
)
ORGANIC = (
    "click_before_window",
    "view_before_window",
    "touch_after_order",
    "campaign_ended",
    "campaign_end_bound",
    "campaign_not_started",
    "promo_code_ended",
    "promo_code_future",
    "promo_code_unknown",
    "currency_mismatch",
    "unknown_merchant",
    "unknown_campaign",
)


@pytest.mark.parametrize("kind", ATTRIBUTED + ORGANIC)
def test_bound_scenes_fall_on_the_side_their_name_says(awkward: Traffic, kind: str) -> None:
    """A touch exactly at a window's or a campaign's bound, or one millisecond past it, decides
    its order (or not) by that millisecond: the scenes sit on the bounds of the billing rule."""
    scenes = _scenes(awkward)[kind]
    assert scenes
    for scene in scenes:
        events = [parse_event(e.payload) for e in scene]
        touches = [x for x in map(touch_from_event, events) if x is not None]
        orders = [x for x in events if isinstance(x, Order)]
        assert orders
        for order in orders:
            decision = attribute_order(order, touches, awkward.catalog, AttributionPolicy())
            if kind in ORGANIC:
                assert decision is None, (kind, order)
            else:
                assert decision is not None, (kind, order)
                assert decision.campaign_id in {x.campaign_id for x in touches} | {
                    c.campaign_id for code in order.promo_codes if (c := awkward.catalog.by_promo_code(code))
                }


def _regular(t: Traffic) -> list[dict[str, Any]]:
    return [e.payload for e in t.events if e.awkward is None and not e.malformed]  # type: ignore[misc]


def _each(t: Traffic, kind: str) -> list[tuple[SyntheticEvent, Event]]:
    return [(e, parse_event(e.payload)) for e in t.events if e.awkward == kind and not e.duplicate]


def test_identity_scenes_copy_a_regular_event_as_named(awkward: Traffic) -> None:
    regular = [parse_event(p) for p in _regular(awkward)]
    touches = {(x.user_id, x.event_id): x for x in regular if not isinstance(x, Order | OrderCancel)}
    touch_ids = {event_id for _, event_id in touches}
    orders = {x.order_id: x for x in regular if isinstance(x, Order)}
    order_event_ids = {x.event_id for x in orders.values()}

    def order_of(x: Event) -> Order:
        assert isinstance(x, Order | OrderCancel)
        return orders[x.order_id]

    conflicts = [x for _, x in _each(awkward, "event_id_conflict")]
    assert all(x != touches[(x.user_id, x.event_id)] for x in conflicts)
    other_users = [x for _, x in _each(awkward, "event_id_other_user")]
    assert {x.event_id for x in other_users} <= touch_ids
    assert not {(x.user_id, x.event_id) for x in other_users} & set(touches)
    same_user = [(x, order_of(x)) for _, x in _each(awkward, "order_id_reused_same_user")]
    assert all(x.user_id == o.user_id and x.event_id != o.event_id for x, o in same_user)
    assert all(x != o for x, o in same_user)
    assert all(x.user_id != order_of(x).user_id for _, x in _each(awkward, "order_id_reused_other_user"))
    same_id = [(x, order_of(x)) for _, x in _each(awkward, "order_conflict_same_event_id")]
    assert all((x.event_id, x.user_id) == (o.event_id, o.user_id) for x, o in same_id)
    assert all(x != o for x, o in same_id)
    reused = [x for _, x in _each(awkward, "order_event_id_reused")]
    assert {x.event_id for x in reused} <= order_event_ids
    assert not {x.order_id for x in reused} & set(orders)  # type: ignore[attr-defined]

    early = [(x, order_of(x)) for _, x in _each(awkward, "cancel_before_order")]
    assert all(x.event_time < o.event_time and x.user_id == o.user_id for x, o in early)
    assert all(x.event_time == order_of(x).event_time for _, x in _each(awkward, "cancel_at_order_time"))
    assert all(x.user_id != order_of(x).user_id for _, x in _each(awkward, "cancel_other_user"))
    unknown = [x for _, x in _each(awkward, "cancel_unknown_order")]
    assert all(isinstance(x, OrderCancel) for x in unknown)
    assert not {x.order_id for x in unknown} & set(orders)  # type: ignore[attr-defined]
    twice = Counter(order_of(x).order_id for _, x in _each(awkward, "cancel_twice"))
    assert set(twice.values()) == {2}

    # A reformatted redelivery: other JSON, the same contract fields as a regular event.
    as_json = {json.dumps(p, separators=(",", ":")) for p in _regular(awkward)}
    redelivered = _each(awkward, "redelivery_reformatted")
    assert {x for _, x in redelivered} <= set(regular)
    assert not {e.to_json() for e, _ in redelivered} & as_json


def _touches(t: Traffic, kind: str) -> list[Impression | Click | PromoView]:
    return [x for _, x in _each(t, kind) if isinstance(x, Impression | Click | PromoView)]


def _orders(t: Traffic, kind: str) -> list[Order]:
    return [x for _, x in _each(t, kind) if isinstance(x, Order)]


def test_time_scenes_carry_what_they_are_named_for(awkward: Traffic) -> None:
    midnight = _each(awkward, "rfc3339_near_midnight")
    texts = [e.payload["event_time"] for e, _ in midnight]  # type: ignore[index]
    assert all(isinstance(text, str) for text in texts)
    assert [to_epoch_ms(text) for text in texts] == [x.event_time for _, x in midnight]
    assert {str(text)[-6:] for text in texts} & {"+14:00", "-12:00"}
    zones = {c.budget.timezone for c in awkward.catalog}
    for o in _orders(awkward, "rfc3339_near_midnight"):  # a local midnight of a budget zone, or 1 ms off
        assert any(
            day_bounds_ms(budget_day(o.event_time + d, z), z)[0] == o.event_time + d
            for z in zones
            for d in (-1, 0, 1)
        )
    for bound, kind in ((0, "future_at_bound"), (1, "future_past_bound")):
        ahead = [x.event_time - e.arrival_ms for e, x in _each(awkward, kind) if not isinstance(x, Order)]
        assert ahead
        assert set(ahead) == {DEFAULT_MAX_FUTURE_MS + bound}


def test_catalog_and_order_scenes_carry_what_they_are_named_for(awkward: Traffic) -> None:
    catalog = awkward.catalog

    def lever(campaign_id: str) -> str | None:
        campaign = catalog.get(campaign_id)
        return None if campaign is None else str(campaign.lever)

    assert {(x.event_type, lever(x.campaign_id)) for x in _touches(awkward, "lever_promo_view_on_ad")} == {
        ("promo_view", "ad")
    }
    assert {(x.event_type, lever(x.campaign_id)) for x in _touches(awkward, "lever_impression_on_promo")} == {
        ("impression", "promo")
    }
    assert {(x.event_type, lever(x.campaign_id)) for x in _touches(awkward, "lever_click_on_promo")} == {
        ("click", "promo")
    }
    assert {lever(x.campaign_id) for x in _touches(awkward, "unknown_campaign")} == {None}
    for o in _orders(awkward, "currency_mismatch"):
        assert o.currency not in {c.currency for c in catalog.by_merchant(o.merchant_id)}
    for o in _orders(awkward, "promo_code_other_merchant"):
        owner = catalog.by_promo_code(o.promo_codes[0])
        assert owner is not None
        assert o.merchant_id not in owner.merchant_ids
    assert {len(o.promo_codes) for o in _orders(awkward, "max_promo_codes")} == {MAX_PROMO_CODES}
    assert {o.amount_minor for o in _orders(awkward, "zero_amount")} == {0}
    assert {o.amount_minor for o in _orders(awkward, "max_amount")} == {MAX_AMOUNT_MINOR - 1}
    for x in _touches(awkward, "promo_view_foreign_code"):
        owner = catalog.get(x.campaign_id)
        assert owner is not None
        assert x.promo_code not in owner.promo_codes  # type: ignore[union-attr]


def test_producer_quirk_scenes_carry_what_they_are_named_for(awkward: Traffic) -> None:
    nulls = [e.payload for e, _ in _each(awkward, "null_optionals")]
    assert all(None in p.values() or "promo_codes" not in p for p in nulls)  # type: ignore[union-attr]
    unknown = [set(e.payload) - set(x.__dataclass_fields__) for e, x in _each(awkward, "unknown_fields")]
    assert unknown
    assert all(unknown)
    assert any(len(e.to_json()) > 12_000 for e, _ in _each(awkward, "unknown_fields"))
    # The unicode scenes take their styles in turn: enough scenes show them all.
    many = generate(SyntheticConfig(users=50, days=1, awkward_rate=0.05, awkward_kinds=("unicode_ids",)))
    unicode = [x for _, x in _each(many, "unicode_ids")]
    assert all(not (x.user_id + x.event_id).isascii() or "|" in x.user_id for x in unicode)
    users = {x.user_id for x in unicode}
    assert MAX_ID_LENGTH in {len(u) for u in users}
    assert {unicodedata.normalize("NFC", u) for u in users} < users  # the same text, composed or not
    ties = Counter((x.user_id, x.event_type, x.event_time) for _, x in _each(awkward, "same_time_ties"))
    assert set(ties.values()) == {2}
    impressions = {
        (p["user_id"], p["event_id"]) for p in _regular(awkward) if p["event_type"] == "impression"
    }
    orphans = [x for x in _touches(awkward, "click_orphan") if isinstance(x, Click)]
    assert orphans
    assert not {(x.user_id, x.impression_id) for x in orphans} & impressions


def test_fraud_scenes_add_labelled_touches_and_leave_the_regular_traffic_in_place() -> None:
    from devtools.fraud import FRAUD_KINDS, TOUCH_TYPES

    config = SyntheticConfig(users=120, days=3, seed=5)
    plain = generate(config)
    mixed = generate(dataclasses.replace(config, fraud_rate=0.05))
    added = {str(e.payload["event_id"]) for e in mixed.events if isinstance(e.payload, dict)} - {
        str(e.payload["event_id"]) for e in plain.events if isinstance(e.payload, dict)
    }
    assert set(mixed.fraud.values()) == set(FRAUD_KINDS)
    assert set(mixed.fraud) <= added  # every labelled touch is one the scenes added
    regular = [
        e for e in mixed.events if not isinstance(e.payload, dict) or e.payload["event_id"] not in added
    ]
    assert [e.arrival_ms for e in regular] == [e.arrival_ms for e in plain.events]
    for before, after in zip(plain.events, regular, strict=True):
        if before.malformed or not isinstance(before.payload, dict) or not isinstance(after.payload, dict):
            continue
        extra = {k: v for k, v in after.payload.items() if k not in before.payload}
        assert {k: after.payload[k] for k in before.payload} == before.payload
        if before.payload["event_type"] in TOUCH_TYPES:
            assert set(extra) == {"user_agent", "ip", "device_id"}
        else:
            assert extra == {}
