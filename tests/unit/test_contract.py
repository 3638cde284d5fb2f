"""The contract is declared once and every form is derived from it; the Lua scripts say what they share."""

from __future__ import annotations

import hashlib
import re
from dataclasses import fields, replace

import pyarrow as pa
import pytest

from realtime import scripts
from reporting.schemas import RoasRow
from reporting.stores.base import sql_ddl
from shared_logic import Lever, TouchKind
from shared_logic.contract import (
    COUNTERS,
    DECISION_ROW,
    LEDGER_ROW,
    LUA_CONTRACT,
    METRIC_DIMENSIONS,
    METRIC_KEY,
    METRIC_MEASURES,
    METRIC_ROW,
    RAW_ROW,
    SETTLEMENT_STATE_ROW,
    Column,
    ColumnType,
    RowSchema,
    SettleStatus,
    count_field,
    dead_letter,
    decision_from_record,
    decision_record,
    parse_count_field,
    parse_touch_member,
    schema_of,
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


def test_decision_and_record_encodings_round_trip() -> None:
    rec = decision_record(DECISION)
    assert rec["lever"] == "ad"
    assert rec["touch_kind"] == 2
    assert decision_from_record(rec) == DECISION
    member = touch_member(TouchKind.VIEW, "ad1", "i|9", 1_793_527_100_000)  # an id may hold "|": it is last
    assert member == "v|ad1|1793527100000|i|9"
    assert parse_touch_member(member) == (TouchKind.VIEW, "ad1", "i|9", 1_793_527_100_000)
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


@pytest.mark.parametrize("name", scripts.NAMES)
def test_each_lua_script_names_the_contract_it_uses(name: str) -> None:
    header = scripts.contract_header(name)
    assert header, f"{name}.lua has no contract header"
    for key, value in header.items():
        assert LUA_CONTRACT.get(key) == value, (name, key)
    body = scripts.source(name)
    # Every hash field the script writes by name is one the contract declares for it.
    declared = set(" ".join(header.values()).replace("|", " ").split())
    for written in re.findall(r"'HINCRBY', KEYS\[\d\], '(\w+)'", body):
        assert written in declared, (name, written)
    for args in _xadd_fields(body):
        assert args, name
        assert set(args) <= declared, (name, args)


def test_the_settle_statuses_are_the_contracts() -> None:
    """Every status the settle script returns is declared (``SettleStatus``), and each declared one
    is returned somewhere: a new or renumbered status fails here before Python misreads it."""
    body = scripts.source("settle")
    returned = {int(v) for v in re.findall(r"\bstatus\b[^=\n]*= (-?\d+)", body)}
    assert returned == {s.value for s in SettleStatus}
    assert scripts.contract_header("settle")["settle_status"] == LUA_CONTRACT["settle_status"]


def _xadd_fields(body: str) -> list[list[str]]:
    """The field names of each stream entry a script writes: the arguments after ``'*'`` of an
    XADD, or the field table a script builds for its XADDs (``{KEYS[n], {'f', v, …}}``), at even
    positions."""
    out = []
    for match in re.finditer(r"redis\.call\('XADD',|\{KEYS\[\d\], \{", body):
        opening = "(" if "XADD" in match.group(0) else "{"
        closing = {"(": ")", "{": "}"}[opening]
        depth, i = 1, match.end()
        while depth:
            depth += {opening: 1, closing: -1}.get(body[i], 0)
            i += 1
        args = [a.strip() for a in body[match.end() : i - 1].replace("\n", " ").split(",")]
        if "unpack(" in args[-1]:
            continue  # the XADD of a table built elsewhere in the script (checked there)
        pairs = args[args.index("'*'") + 1 :] if "'*'" in args else args
        out.append([f.strip("'") for f in pairs[::2]])
    return out
