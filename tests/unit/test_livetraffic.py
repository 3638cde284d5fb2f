"""The live loop's traffic is of today: every event time it sends, an epoch number or RFC 3339 text in
any offset, is the wall clock as it leaves (so the live loop carries no late data it does not mean to)."""

from __future__ import annotations

import pytest

from devtools.livetraffic import stamped
from shared_logic.timeutil import to_epoch_ms

pytestmark = pytest.mark.unit

NOW = 1_796_504_024_144


@pytest.mark.parametrize(
    ("sent", "expected"),
    [
        (1_700_000_000_000, NOW),
        ("2026-12-04T23:59:59.999+05:30", "2026-12-06T02:23:44.144+05:30"),
        ("2026-12-04T10:00:00.123000000-12:00", "2026-12-05T08:53:44.144000000-12:00"),
        ("2026-12-04T23:59:59Z", "2026-12-05T20:53:44Z"),
    ],
)
def test_event_times_are_restamped_in_their_own_form(sent: object, expected: object) -> None:
    out = stamped({"event_type": "click", "event_time": sent}, NOW)
    assert out["event_time"] == expected
    assert NOW - to_epoch_ms(out["event_time"]) < 1000


@pytest.mark.parametrize("payload", [{"event_time": "yesterday"}, {"event_time": True}, ["x"], b"\x00"])
def test_malformed_payloads_go_out_as_they_are(payload: object) -> None:
    assert stamped(payload, NOW) == payload
