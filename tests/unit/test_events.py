import contextlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared_logic import Click, Impression, InvalidEvent, Order, OrderCancel, PromoView, parse_event
from shared_logic.events import MAX_PAYLOAD_BYTES, event_to_dict
from tests.helpers import ORDER

pytestmark = pytest.mark.unit


def test_parses_every_type_from_json_and_dict() -> None:
    base = {"event_id": "e", "event_time": 1_793_527_200_000, "user_id": "u"}
    samples = [
        ({**base, "event_type": "impression", "campaign_id": "c", "placement": "feed"}, Impression),
        ({**base, "event_type": "click", "campaign_id": "c", "impression_id": "i"}, Click),
        ({**base, "event_type": "promo_view", "campaign_id": "p", "promo_code": "X"}, PromoView),
        (ORDER, Order),
        ({**base, "event_type": "order_cancel", "order_id": "o"}, OrderCancel),
    ]
    for payload, cls in samples:
        from_dict = parse_event(payload)
        from_json = parse_event(json.dumps(payload).encode())
        assert isinstance(from_dict, cls)
        assert from_dict == from_json


def test_rfc3339_and_epoch_ms_agree() -> None:
    a = parse_event({**ORDER, "event_time": "2026-11-01T10:00:00Z"})
    b = parse_event({**ORDER, "event_time": "2026-11-01T12:00:00+02:00"})
    c = parse_event({**ORDER, "event_time": 1_793_527_200_000})
    assert a.event_time == b.event_time == c.event_time == 1_793_527_200_000


def test_round_trip_through_wire_form() -> None:
    event = parse_event(ORDER)
    assert parse_event(event_to_dict(event)) == event
    assert isinstance(event, Order)
    assert event.promo_codes == ("SAVE10",)


def test_unknown_keys_are_ignored_for_forward_compatibility() -> None:
    assert parse_event({**ORDER, "new_field": 1}) == parse_event(ORDER)


@pytest.mark.parametrize(
    ("change", "field", "rule"),
    [
        ({"event_id": None}, "event_id", "must be a string"),
        ({"amount_minor": 12.5}, "amount_minor", "integer"),
        ({"amount_minor": "1234"}, "amount_minor", "integer"),
        ({"amount_minor": True}, "amount_minor", "integer"),
        ({"amount_minor": -1}, "amount_minor", "negative"),
        ({"currency": "XYZ"}, "currency", "ISO 4217"),
        ({"currency": "usd"}, "currency", "upper-case"),
        ({"currency": "XAU"}, "currency", "minor unit"),
        ({"event_time": "yesterday"}, "event_time", "RFC 3339"),
        ({"event_time": "2026-11-01T10:00:00"}, "event_time", "offset"),
        ({"event_time": 1_700_000_000}, "event_time", "seconds instead of milliseconds"),
        ({"event_time": 99_999_999_999_999}, "event_time", "outside"),
        ({"event_time": 1.7e12}, "event_time", "epoch milliseconds"),
        ({"user_id": "x" * 129}, "user_id", "at most 128"),
        ({"user_id": ""}, "user_id", "empty"),
        ({"user_id": 5}, "user_id", "string"),
        ({"promo_codes": "SAVE"}, "promo_codes", "list"),
        ({"event_type": "purchase"}, "event_type", "must be one of"),
    ],
)
def test_each_broken_rule_names_field_value_and_rule(change: dict[str, Any], field: str, rule: str) -> None:
    payload = {**ORDER, **change}
    with pytest.raises(InvalidEvent) as info:
        parse_event(json.dumps(payload))
    err = info.value
    assert err.field == field
    assert err.value == next(iter(change.values())) or field == "user_id"
    assert rule in err.rule
    assert field in str(err)


def test_missing_field_and_missing_type() -> None:
    payload = dict(ORDER)
    del payload["merchant_id"]
    with pytest.raises(InvalidEvent, match=r"merchant_id.*is required"):
        parse_event(payload)
    with pytest.raises(InvalidEvent) as info:
        parse_event({"event_id": "e"})
    assert info.value.field == "event_type"


@pytest.mark.parametrize("raw", ["not json", "[1, 2]", "42", b"\xff\xfe", "{", "null"])
def test_non_object_payloads(raw: str | bytes) -> None:
    with pytest.raises(InvalidEvent) as info:
        parse_event(raw)
    assert info.value.field == "<payload>"


def test_oversized_payload_is_refused_before_parsing() -> None:
    big = json.dumps({**ORDER, "pad": "x" * MAX_PAYLOAD_BYTES})
    with pytest.raises(InvalidEvent, match="exceeds"):
        parse_event(big)


def test_unsupported_input_type() -> None:
    with pytest.raises(InvalidEvent, match="must be JSON"):
        parse_event(12)  # type: ignore[arg-type]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(
    base=st.sampled_from(
        [ORDER, {"event_id": "e", "event_type": "click", "user_id": "u", "campaign_id": "c"}]
    ),
    key=st.sampled_from([*ORDER.keys(), "campaign_id", "impression_id"]),
    value=json_values,
)
def test_any_mutation_raises_invalid_event_or_parses(base: dict[str, Any], key: str, value: Any) -> None:
    payload = {**base, "event_time": 1_793_527_200_000, key: value}
    try:
        event = parse_event(json.dumps(payload))
    except InvalidEvent as err:
        assert err.field
        assert err.rule
    else:
        assert event.event_id == payload["event_id"]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=300))
def test_arbitrary_bytes_only_ever_raise_invalid_event(raw: bytes | str) -> None:
    # Any exception other than InvalidEvent escapes and fails the test.
    with contextlib.suppress(InvalidEvent):
        parse_event(raw)
