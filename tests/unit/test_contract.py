"""The contract is declared once and every form is derived from it; the Lua scripts say what they share."""

from __future__ import annotations

import hashlib
import re
from dataclasses import fields, replace
from importlib import resources

import orjson
import pyarrow as pa
import pytest

from realtime import codec, scripts
from reporting.schemas import RoasRow
from reporting.stores.base import sql_ddl
from shared_logic import Lever, TouchKind
from shared_logic.contract import (
    CLAIM_OPS,
    CLAIM_SUPERSEDED,
    COUNTERS,
    DECISION_ROW,
    INGEST_OPS,
    LEDGER_ROW,
    LUA_CONTRACT,
    METRIC_DIMENSIONS,
    METRIC_KEY,
    METRIC_MEASURES,
    METRIC_ROW,
    RAW_ROW,
    SETTLE_MODES,
    SETTLE_PAYLOAD_FIELDS,
    SETTLEMENT_STATE_ROW,
    Column,
    ColumnType,
    IngestStatus,
    RowSchema,
    SettleStatus,
    TouchMember,
    count_field,
    dead_letter,
    decision_from_record,
    decision_from_values,
    decision_record,
    decision_values,
    parse_count_field,
    parse_touch_member,
    schema_of,
    settle_payload,
    state_from_records,
    state_records,
    touch_member,
)
from shared_logic.events import EVENT_TYPES, Order
from shared_logic.rules import Decision
from shared_logic.settlement import BookState, ChargeRecord, LedgerEntry
from storage.arrow import arrow_schema

pytestmark = pytest.mark.unit

DECISION = Decision(
    "o1", "u1", "e1", 1_793_527_200_000, "m1", 5_000, "USD", "ad1", "adv1", Lever.AD, "c1", TouchKind.CLICK,
    1_793_527_100_000, 100,
)  # fmt: skip


def test_rows_derive_from_the_dataclasses() -> None:
    assert LEDGER_ROW.names == tuple(f.name for f in fields(LedgerEntry))
    assert DECISION_ROW.names == tuple(f.name for f in fields(Decision))
    order = {f.name for f in fields(Order)}
    assert order < set(RAW_ROW.names)
    assert RAW_ROW.names[-1] == "ingested_at_ms"
    # A field every event type has is required; one only some types have is nullable.
    assert not RAW_ROW.column("event_id").nullable
    assert RAW_ROW.column("amount_minor").nullable
    assert RAW_ROW.column("promo_codes").type is ColumnType.STRING_LIST
    assert LEDGER_ROW.column("touch_kind").type is ColumnType.INT64  # an IntEnum is stored as its value
    assert METRIC_ROW.column("roas").nullable
    assert not METRIC_ROW.column("spend_minor").nullable


def test_every_form_of_a_row_has_its_columns_in_order() -> None:
    row = RowSchema(
        "t",
        (
            Column("a", ColumnType.STRING, False),
            Column("b", ColumnType.INT64_LIST),
            Column("c", ColumnType.FLOAT64, True, "a doc"),
        ),
    )
    assert arrow_schema(row) == pa.schema(
        [pa.field("a", pa.string(), False), pa.field("b", pa.list_(pa.int64())), pa.field("c", pa.float64())]
    )
    ddl = sql_ddl(row.without("b"), "t", ("a",))
    assert ddl.splitlines() == [
        "CREATE TABLE IF NOT EXISTS t (",
        "    a text NOT NULL,",
        "    c double precision,",
        "    PRIMARY KEY (a)",
        ")",
    ]


def test_the_api_row_is_the_metric_row_plus_day_source_and_windows() -> None:
    api_fields = set(RoasRow.model_fields)
    assert api_fields == {"day", "source", "windows", *METRIC_DIMENSIONS, *METRIC_MEASURES}
    assert set(METRIC_KEY) <= {"dt", *METRIC_DIMENSIONS}
    assert RoasRow.model_fields["roas"].description == METRIC_ROW.column("roas").doc


def test_a_column_type_outside_the_contract_is_refused() -> None:
    from dataclasses import dataclass

    @dataclass
    class Bad:
        when: complex

    with pytest.raises(TypeError, match=r"Bad\.when"):
        schema_of(Bad)


def test_redis_holds_a_decision_as_its_values_in_row_order_and_refuses_another_length() -> None:
    values = decision_values(DECISION)
    assert values == list(decision_record(DECISION).values())
    assert decision_from_values(values) == DECISION
    raw = codec.encode_decision(DECISION)
    assert raw.startswith(b'["')
    assert b"order_id" not in raw  # no names: about half the record's bytes
    assert len(raw) * 3 < len(orjson.dumps(decision_record(DECISION))) * 2
    assert codec.decode_decision(raw) == DECISION
    with pytest.raises(ValueError, match="must hold 14 values"):
        decision_from_values(values[:-1])


def test_decision_and_record_encodings_round_trip() -> None:
    rec = decision_record(DECISION)
    assert rec["lever"] == "ad"
    assert rec["touch_kind"] == 2
    assert decision_from_record(rec) == DECISION
    member = touch_member(TouchKind.VIEW, "ad1", "i|9", 1_793_527_100_000, "0123abcd")  # an id may hold "|"
    assert member == "v|ad1|1793527100000|0123abcd|i|9"
    assert parse_touch_member(member) == TouchMember(
        TouchKind.VIEW, "ad1", "i|9", 1_793_527_100_000, "0123abcd"
    )
    assert parse_count_field(count_field("ad1", "click")) == ("ad1", "clicks")
    assert set(COUNTERS) == set(EVENT_TYPES) - {"order", "order_cancel"}


def test_settlement_state_records_round_trip_through_their_row() -> None:
    state = BookState(
        {"ad1": 700, "ad2": 50},
        {("ad1", "2026-11-02"): 300},
        {
            "o1": ChargeRecord(DECISION, 100, "2026-11-01"),
            "o2": ChargeRecord(replace(DECISION, order_id="o2"), 0, "2026-11-01", True),
        },
        frozenset({"o9"}),
    )
    records = state_records(state)
    assert [r["record"] for r in records] == ["lifetime", "lifetime", "day", "charge", "charge", "cancel"]
    assert all(tuple(r) == SETTLEMENT_STATE_ROW.names for r in records)
    assert arrow_schema(SETTLEMENT_STATE_ROW).names == list(SETTLEMENT_STATE_ROW.names)
    pa.Table.from_pylist(records, schema=arrow_schema(SETTLEMENT_STATE_ROW))  # the row holds every record
    assert state_from_records(reversed(records)) == state
    with pytest.raises(ValueError, match="record = 'x'"):
        state_from_records([{"record": "x"}])


def test_dead_letters_are_bounded_and_identified() -> None:
    big = b"x" * 10_000
    row = dead_letter(big, {"field": "f", "value": "v", "rule": "r"}, 5, max_bytes=100)
    assert (len(row.raw), row.raw_bytes, row.field, row.ingested_at_ms) == (100, 10_000, "f", 5)
    assert row.raw_sha256 == hashlib.sha256(big).hexdigest()
    nested: list[object] = []
    for _ in range(5_000):
        nested = [nested]
    assert dead_letter(nested, {}, 0).raw.startswith("<unencodable list>")


def test_every_lua_file_is_a_script_the_checks_cover() -> None:
    """The checks below run over ``scripts.NAMES``: a script added to ``realtime/lua/`` without
    being named there would escape them."""
    lua_dir = resources.files("realtime").joinpath("lua")
    assert {p.name.removesuffix(".lua") for p in lua_dir.iterdir() if p.name.endswith(".lua")} == set(
        scripts.NAMES
    )


@pytest.mark.parametrize("name", scripts.NAMES)
def test_each_lua_script_names_the_contract_it_uses(name: str) -> None:
    header = scripts.contract_header(name)
    assert header, f"{name}.lua has no contract header"
    for key, value in header.items():
        assert LUA_CONTRACT.get(key) == value, (name, key)


@pytest.mark.parametrize("name", scripts.NAMES)
def test_each_lua_script_uses_only_the_fields_its_header_declares(name: str) -> None:
    """Every hash field and stream field a script names in its code (a hash command's field, a
    call of a ``(key, field, …)`` helper, an XADD's or a stream entry table's fields) is one its
    header's ``*_fields`` entries declare, every declared one is used, and each stream entry has
    exactly the fields of one declared list. A script that declares no fields names none: its
    fields are values (an event id, ``campaign_id|counter``) its other header entries encode."""
    assert _lua_field_problems(scripts.source(name), scripts.contract_header(name)) == []


def test_every_lua_field_pattern_matches_some_script() -> None:
    """A pattern that matches nothing checks nothing (the ``HINCRBY`` pattern this check once had
    matched no script): each form of naming a field is found in at least one script."""
    code = {name: _lua_code(scripts.source(name)) for name in scripts.NAMES}
    for form, pattern in _FIELD_FORMS.items():
        assert any(pattern.search(body) for body in code.values()), f"{form}: the pattern matches no script"
    helpers = {h for body in code.values() for h in _FIELD_FORMS["hash helper"].findall(body)}
    assert helpers, "no script has a hash helper taking (key, field, …)"
    for helper in helpers:
        assert any(_helper_calls(body, helper) for body in code.values()), f"{helper}() is never called"


_SETTLE_LEDGER = (
    "'kind', kind, 'charge', fmt(charge), 'capped', capped,\n    'day', day, 'due', fmt(due), 'd', d"
)


@pytest.mark.parametrize(
    ("name", "old", "new", "problem"),
    [
        # a literal hash field written through a helper that the header does not declare
        ("settle", "hadd(p.st, 'refunds', 1)", "hadd(p.st, 'refunded', 1)", "'refunded'"),
        # a declared field the script no longer writes
        ("settle", "hadd(p.st, 'capped_orders', capped)", "hadd(p.st, 'orders', capped)", "capped_orders"),
        # a literal field in a plain hash command, in a script that declares no fields
        (
            "ingest",
            "redis.call('HINCRBY', ckey, field, n)",
            "redis.call('HINCRBY', ckey, 'total', n)",
            "'total'",
        ),
        # (appended: a command anywhere in the script is read)
        ("claim", "", "\nredis.call('HGET', KEYS[1], 'digest')\n", "'digest'"),
        # a stream entry with a field outside the contract, and one missing a field
        ("settle", "'due_ms', fmt(due)}}", "'due_at', fmt(due)}}", "due_at"),
        (
            "settle",
            _SETTLE_LEDGER,
            "'kind', kind, 'charge', fmt(charge), 'capped', capped, 'day', day, 'd', d",
            "due",
        ),
        # a direct XADD with literal fields in a script that declares none
        (
            "flush",
            "redis.call('DEL', KEYS[1])",
            "redis.call('XADD', KEYS[3], '*', 'note', ARGV[2])",
            "'note'",
        ),
        # a field built from a literal
        (
            "ingest",
            "redis.call('HINCRBY', ckey, field, n)",
            "redis.call('HINCRBY', ckey, 'c' .. field, n)",
            "'c'",
        ),
    ],
)
def test_the_lua_field_check_fails_on_a_changed_script(name: str, old: str, new: str, problem: str) -> None:
    """The check itself can fail: each edit of a real script (or line appended to it) is one it
    must report."""
    body = scripts.source(name)
    assert old in body, f"{name}.lua no longer holds {old!r}: update this case"
    changed = body.replace(old, new, 1) if old else body + new
    assert _lua_field_problems(body, scripts.contract_header(name)) == []
    problems = _lua_field_problems(changed, scripts.contract_header(name))
    assert any(problem in p for p in problems), problems


def test_the_settle_statuses_are_the_contracts() -> None:
    """Every status the settle script returns is declared (``SettleStatus``), and each declared one
    is returned somewhere: a new or renumbered status fails here before Python misreads it."""
    body = scripts.source("settle")
    returned = {int(v) for v in re.findall(r"\bstatus\b[^=\n]*= (-?\d+)", body)}
    assert returned == {s.value for s in SettleStatus}
    assert scripts.contract_header("settle")["settle_status"] == LUA_CONTRACT["settle_status"]


# Where a script names a hash or stream field in its code; each match is followed by its
# arguments (a call's up to its closing parenthesis, a table's up to its closing brace).
_FIELD_FORMS: dict[str, re.Pattern[str]] = {
    # redis.call('HSET' | 'HGET' | 'HINCRBY' | 'HDEL' | …, key, field, …)
    "hash command": re.compile(r"redis\.call\('H[A-Z]+',"),
    # a local function whose parameters are (key, field, …): each of its calls names a field
    "hash helper": re.compile(r"local function (\w+)\(\w+, field\b"),
    # redis.call('XADD', key, [MAXLEN …,] '*', field, value, …)
    "stream command": re.compile(r"redis\.call\('XADD',"),
    # a stream entry built as a table for a later XADD … unpack(entry): {KEYS[n], {'field', value, …}}
    "stream entry table": re.compile(r"\{KEYS\[\d\], \{"),
}
_LITERAL = re.compile(r"^'(\w+)'$")


def _lua_code(source: str) -> str:
    """A script without its comments (its header and prose name fields too)."""
    return re.sub(r"--[^\n]*", "", source)


def _arguments(body: str, start: int) -> list[str]:
    """The top-level arguments from ``start`` (just inside an opening bracket) to its closing one,
    quoted strings and nested calls and tables kept whole."""
    args, depth, quote, current = [], 0, "", ""
    for ch in body[start:]:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "({[":
            depth += 1
        elif ch in ")}]":
            if depth == 0:
                break
            depth -= 1
        elif ch == "," and depth == 0:
            args.append(current.strip())
            current = ""
            continue
        current += ch
    return [*args, current.strip()]


def _helper_calls(body: str, helper: str) -> list[list[str]]:
    """The arguments of each call of a hash helper (its definition excluded)."""
    return [_arguments(body, m.end()) for m in re.finditer(rf"(?<!function )\b{helper}\(", body)]


def _lua_field_problems(source: str, header: dict[str, str]) -> list[str]:
    """What is wrong with the fields a script names, against its header's ``*_fields`` entries
    (hash and stream field names; its other entries encode values and members, not fields)."""
    body = _lua_code(source)
    lists = {key: value.split() for key, value in header.items() if key.endswith("_fields")}
    declared = {f for names in lists.values() for f in names}
    problems: list[str] = []
    used: set[str] = set()

    def field(expr: str, where: str) -> None:
        literal = _LITERAL.match(expr)
        if literal:
            used.add(literal.group(1))
            if literal.group(1) not in declared:
                problems.append(f"{where} names {expr}, not declared in {sorted(lists)}")
        elif re.search(r"'\s*\.\.|\.\.\s*'", expr):
            problems.append(f"{where} names a field built from a literal: {expr}")

    calls = [_arguments(body, m.end()) for m in _FIELD_FORMS["hash command"].finditer(body)]
    for args in calls:
        if len(args) < 2:
            problems.append(f"a hash command without a field: {args}")
        else:
            field(args[1], "a hash command")
    for helper in _FIELD_FORMS["hash helper"].findall(body):
        for args in _helper_calls(body, helper):
            field(args[1] if len(args) > 1 else "", f"{helper}()")
    entries, unpacked = [], 0
    for match in _FIELD_FORMS["stream command"].finditer(body):
        args = _arguments(body, match.end())
        if args[-1].startswith("unpack("):
            unpacked += 1  # the XADD of a table built elsewhere in the script (read there)
        elif "'*'" in args:
            entries.append(args[args.index("'*'") + 1 :][::2])
        else:
            problems.append(f"an XADD the check cannot read: {args}")
    tables = [_arguments(body, m.end())[::2] for m in _FIELD_FORMS["stream entry table"].finditer(body)]
    if unpacked and not tables:
        problems.append("an XADD of a table the check found no construction of")
    for entry in entries + tables:
        for expr in entry:
            field(expr, "a stream entry")
        names = sorted(e.strip("'") for e in entry)
        if not any(names == sorted(d) for d in lists.values()):
            problems.append(f"a stream entry with fields {names}, none of the declared lists {lists}")
    problems += [f"declared field {f!r} never used" for f in sorted(declared - used)]
    return problems


def test_the_settle_payload_is_the_contracts() -> None:
    """The settle script reads exactly the declared payload fields (``p.<field>``) and modes; the
    engine's encoder refuses any other field, so a renamed field fails here, not in Redis."""
    body = scripts.source("settle")
    assert set(re.findall(r"\bp\.(\w+)", body)) == set(SETTLE_PAYLOAD_FIELDS)
    assert set(re.findall(r"p\.m == '(\w+)'", body)) | {"refund"} == set(SETTLE_MODES)
    fields = dict.fromkeys(SETTLE_PAYLOAD_FIELDS, 0) | {"m": "charge"}
    assert list(settle_payload(**fields)) == list(SETTLE_PAYLOAD_FIELDS)
    with pytest.raises(ValueError, match="fields must be"):
        settle_payload(**{**fields, "extra": 1})
    with pytest.raises(ValueError, match="fields must be"):
        settle_payload(**{**fields, "m": "charged"})


def test_the_ingest_and_claim_codes_are_the_contracts() -> None:
    """Every op code and status the ingest and claim scripts use is declared once (``INGEST_OPS``,
    ``IngestStatus``, ``CLAIM_OPS``) and named in their headers."""
    ingest, claim = scripts.source("ingest"), scripts.source("claim")
    used = set(re.findall(r"code == '(\w)'", ingest)) | {"P"}  # the last branch is the else
    assert used == set(INGEST_OPS.values())
    returned = {int(v) for v in re.findall(r"out\[i\] = (\d)\b", ingest)}
    returned |= {int(v) for v in re.findall(r"and (\d) or (\d)", ingest) for v in v}
    assert returned == {s.value for s in IngestStatus}
    assert set(re.findall(r"a\[1\] == '(\w)'", claim)) == {CLAIM_OPS["decide"]}
    assert f"out[i] = '{CLAIM_SUPERSEDED}'" in claim
