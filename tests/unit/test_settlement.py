"""ChargeBook snapshots: settling in one go equals settling up to a boundary, snapshotting,
restoring and settling the rest (what the nightly job's checkpoints rely on)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared_logic import Catalog, Lever, TouchKind
from shared_logic.rules import Decision
from shared_logic.settlement import BookState, ChargeBook, SettlementAction, cancel_counts
from tests.factories import DAY, HOUR, MIN, campaign

pytestmark = pytest.mark.unit

T0 = 1_793_491_200_000  # 2026-11-01T00:00:00Z
LATENESS = MIN
ZONES = ("Pacific/Kiritimati", "Pacific/Pago_Pago", "UTC", "America/New_York")  # +14, -11, 0, DST


def _catalog(caps: list[tuple[int | None, int | None, int]]) -> Catalog:
    return Catalog(
        campaign(
            f"c{i}",
            pricing={"model": "fixed", "fee_minor": 100},
            budget={"daily_minor": daily, "lifetime_minor": lifetime, "timezone": ZONES[zone]},
        )
        for i, (daily, lifetime, zone) in enumerate(caps)
    )


def _decision(order_id: str, t: int, campaign_id: str, price: int) -> Decision:
    return Decision(
        order_id, "u1", f"e{order_id}", t, "m1", 5_000, "USD", campaign_id, "adv1", Lever.AD,
        f"t{order_id}", TouchKind.CLICK, t - MIN, price,
    )  # fmt: skip


caps = st.tuples(
    st.one_of(st.none(), st.integers(100, 600)),
    st.one_of(st.none(), st.integers(200, 2_000)),
    st.integers(0, len(ZONES) - 1),
).filter(lambda c: c[0] is None or c[1] is None or c[0] <= c[1])
orders = st.lists(
    st.tuples(st.integers(0, 5 * 24 * 60), st.integers(0, 2), st.integers(0, 250)), min_size=1, max_size=40
)
# A cancel from 6 hours before its order (it comes first: the order, decided later, charges
# nothing) to 4 days after it, and some of orders never seen.
cancels = st.lists(
    st.tuples(st.integers(0, 45), st.one_of(st.integers(-6 * 60, 0), st.integers(0, 4 * 24 * 60))),
    max_size=25,
)
# Boundaries near actions (an action's due time plus a few minutes, ties included), where they bite.
boundaries = st.lists(st.tuples(st.integers(0, 80), st.integers(-90, 90)), min_size=1, max_size=4)


def _actions(
    order_specs: list[tuple[int, int, int]], cancel_specs: list[tuple[int, int]]
) -> tuple[list[SettlementAction], dict[str, int]]:
    actions: list[SettlementAction] = []
    times: dict[str, int] = {}
    for i, (minute, c, price) in enumerate(order_specs):
        t = T0 + minute * MIN
        times[f"o{i}"] = t
        actions.append(
            SettlementAction(t + LATENESS, "decide", f"o{i}", _decision(f"o{i}", t, f"c{c}", price))
        )
    for n, delta in cancel_specs:
        order_id = f"o{n}"  # beyond the orders: a cancel of an order never seen
        t = times.get(order_id, T0 + 3 * DAY) + delta * MIN
        actions.append(SettlementAction(t + LATENESS, "cancel", order_id))
    return actions, times


@settings(max_examples=300, deadline=None)
@given(st.lists(caps, min_size=3, max_size=3), orders, cancels, boundaries)
def test_settling_in_one_go_equals_settling_from_snapshots(
    cap_specs: list[tuple[int | None, int | None, int]],
    order_specs: list[tuple[int, int, int]],
    cancel_specs: list[tuple[int, int]],
    boundary_specs: list[tuple[int, int]],
) -> None:
    catalog = _catalog(cap_specs)
    actions, times = _actions(order_specs, cancel_specs)
    cuts = sorted({actions[i % len(actions)].due_ms + m * MIN for i, m in boundary_specs})

    def refundable_from(b: int) -> int:
        # The caller's promise: no cancel due at or after b names a charged order before this.
        named = [
            times[a.order_id] for a in actions if a.kind == "cancel" and a.due_ms >= b and a.order_id in times
        ]
        return min([b - LATENESS, *named])

    whole = ChargeBook(catalog).settle(actions)

    paused = ChargeBook(catalog)  # one book, paused at each cut: the reference for the snapshots
    state = BookState()
    ledger = []
    lo = -1
    for b in [*cuts, None]:
        part = [a for a in actions if a.due_ms >= lo and (b is None or a.due_ms < b)]
        book = ChargeBook.restore(catalog, state)
        ledger += book.settle(part)
        paused.settle(part)
        if b is not None:
            state = book.snapshot(b - LATENESS, refundable_from(b))
            assert state == paused.snapshot(b - LATENESS, refundable_from(b))
            lo = b
    assert ledger == whole
    assert {c: v for c, v in book.spend_lifetime.items() if v} == {
        c: v for c, v in paused.spend_lifetime.items() if v
    }


def test_a_snapshot_keeps_the_budget_days_a_later_order_can_fall_on_in_its_own_zone() -> None:
    catalog = _catalog([(300, None, 0), (300, None, 1), (300, None, 2)])  # +14, -11, UTC
    book = ChargeBook(catalog)
    evening = T0 + 20 * HOUR  # 2026-11-01T20:00Z: Nov 2 in Kiritimati, Nov 1 in Pago Pago and UTC
    book.settle(
        SettlementAction(t + LATENESS, "decide", f"{c}-{t}", _decision(f"{c}-{t}", t, c, 100))
        for c in ("c0", "c1", "c2")
        for t in (T0 - 2 * HOUR, evening)
    )
    state = book.snapshot(open_from_ms=T0 + DAY, refundable_from_ms=T0 + DAY)  # Nov 2 00:00Z
    # Nov 2 00:00Z is Nov 2 14:00 in Kiritimati (Nov 2 still open), Nov 1 13:00 in Pago Pago
    # (Nov 1 open), Nov 2 in UTC (only later days open: none spent).
    assert state.spend_day == {("c0", "2026-11-02"): 100, ("c1", "2026-11-01"): 100}
    assert state.spend_lifetime == {"c0": 200, "c1": 200, "c2": 200}
    assert state.charges == {}  # past the promised horizon
    later = ChargeBook.restore(catalog, state)
    t = T0 + DAY + HOUR  # Nov 2 01:00Z: Nov 2 15:00 in Kiritimati, Nov 1 14:00 in Pago Pago
    later.settle(
        SettlementAction(t + LATENESS, "decide", f"n{c}", _decision(f"n{c}", t, c, 250))
        for c in ("c0", "c1", "c2")
    )
    assert [(e.campaign_id, e.charge_minor, e.capped) for e in later.ledger] == [
        ("c0", 200, True),
        ("c1", 200, True),
        ("c2", 250, False),
    ]


def test_a_snapshot_keeps_refundable_charges_and_cancels_that_came_first() -> None:
    catalog = _catalog([(None, 1_000, 2)])
    book = ChargeBook(catalog)
    d1, d2 = _decision("o1", T0, "c0", 400), _decision("o2", T0 + HOUR, "c0", 400)
    book.settle(
        [
            SettlementAction(T0 + LATENESS, "decide", "o1", d1),
            SettlementAction(T0 + HOUR + LATENESS, "decide", "o2", d2),
            SettlementAction(T0 + 2 * HOUR, "cancel", "o2"),
            SettlementAction(T0 + 3 * HOUR, "cancel", "o3"),  # o3 is decided after the boundary
        ]
    )
    state = book.snapshot(T0 + DAY, T0)
    assert state.spend_lifetime == {"c0": 400}
    assert {o: (r.charge_minor, r.refunded) for o, r in state.charges.items()} == {
        "o1": (400, False),
        "o2": (400, True),
    }
    assert state.cancelled == frozenset({"o3"})
    later = ChargeBook.restore(catalog, state)
    d3 = replace(d1, order_id="o3", order_time_ms=T0 + DAY)
    later.settle(
        [
            SettlementAction(T0 + DAY, "cancel", "o1"),
            SettlementAction(T0 + DAY, "cancel", "o2"),  # refunded already: nothing
            SettlementAction(T0 + DAY + LATENESS, "decide", "o3", d3),
        ]
    )
    assert [(e.kind, e.order_id, e.charge_minor) for e in later.ledger] == [
        ("refund", "o1", -400),
        ("cancelled", "o3", 0),
    ]
    assert later.spend_lifetime == {"c0": 0}


@pytest.mark.parametrize(
    ("order", "cancel", "counts"),
    [
        (T0 + 5 * HOUR, T0 + 5 * HOUR, True),
        (T0 + 5 * HOUR, T0 - 2 * DAY, True),  # the first day of the look-back
        (T0 + 5 * HOUR, T0 - 2 * DAY - 1, False),
        (T0 + 5 * HOUR, T0 + 3 * DAY - 1, True),  # the last instant of the horizon's last day
        (T0 + 5 * HOUR, T0 + 3 * DAY, False),
        (T0, T0 + 3 * DAY - 1, True),
    ],
)
def test_a_cancel_counts_within_the_look_back_and_the_horizon_of_its_order_day(
    order: int, cancel: int, counts: bool
) -> None:
    assert cancel_counts(order, cancel, lookback_days=2, horizon_days=2) is counts
