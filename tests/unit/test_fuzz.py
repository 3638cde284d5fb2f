"""``parse_event`` raises ``InvalidEvent`` and nothing else, whatever it is given."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared_logic import InvalidEvent, parse_event
from shared_logic.events import EVENT_TYPES
from tests.helpers import ORDER

pytestmark = pytest.mark.unit

VALID = ORDER

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=30,
)


def _parses_or_refuses(raw: Any) -> None:
    try:
        event = parse_event(raw)
    except InvalidEvent as exc:
        assert exc.field
        assert exc.rule
        assert len(str(exc)) < 400  # values are cut: an error never echoes a whole payload
    else:
        assert event.event_type in EVENT_TYPES


def _nested(depth: int, kind: str = "[") -> str:
    close = {"[": "]", "{": "}"}[kind]
    inner = '"x"' if kind == "[" else ""
    if kind == "{":
        return '{"a":' * depth + "1" + close * depth
    return kind * depth + inner + close * depth


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_arbitrary_bytes(raw: bytes) -> None:
    _parses_or_refuses(raw)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300))
def test_arbitrary_text_including_lone_surrogates(raw: str) -> None:
    _parses_or_refuses(raw)
    _parses_or_refuses(raw + "\ud800")


@settings(max_examples=300)
@given(json_values)
def test_arbitrary_json_as_text_and_as_objects(value: Any) -> None:
    _parses_or_refuses(json.dumps(value))
    if isinstance(value, dict):
        _parses_or_refuses(value)


@pytest.mark.parametrize("depth", [50, 1_000, 5_000, 100_000])
@pytest.mark.parametrize("kind", ["[", "{"])
def test_deep_nesting_alone_and_inside_a_valid_event(depth: int, kind: str) -> None:
    _parses_or_refuses(_nested(depth, kind))
    inside = json.dumps({**VALID, "extra": "X"}).replace('"X"', _nested(depth, kind))
    _parses_or_refuses(inside)
    _parses_or_refuses(inside.encode())


@settings(max_examples=500)
@given(
    key=st.sampled_from([*VALID, "extra", "event_type"]),
    value=json_values,
    drop=st.booleans(),
)
def test_mutations_of_a_valid_event(key: str, value: Any, drop: bool) -> None:
    mutated = dict(VALID)
    if drop:
        mutated.pop(key, None)
    else:
        mutated[key] = value
    _parses_or_refuses(mutated)
    _parses_or_refuses(json.dumps(mutated))


def test_odd_python_objects() -> None:
    class Hostile:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

        def __str__(self) -> str:
            raise RuntimeError("no str")

    for raw in (
        None,
        5,
        1.5,
        [VALID],
        Hostile(),
        {**VALID, "amount_minor": Hostile()},
        {1: 2},
        memoryview(b"{}"),
    ):
        _parses_or_refuses(raw)
