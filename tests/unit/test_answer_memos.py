"""The ad-request reader's memos: a budget day taken from the zone's remembered day bounds, and
keys built once a campaign and day, answer what the direct computations answer, across day turns
and clock changes, in time order and out of it."""

import random
from datetime import UTC, datetime

import hiredis
import pytest

from realtime.client import Packed
from realtime.keys import Keys
from serving import AnswerReader
from shared_logic import Catalog, budget_day
from shared_logic.settings import KeySettings
from tests.factories import campaign

pytestmark = pytest.mark.unit

ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Pacific/Chatham", "Asia/Kolkata", "America/Santiago"]
# Around 2026's clock changes in these zones, and ordinary midnights.
AROUND = [
    datetime(2026, 3, 8, 6, 59, tzinfo=UTC),  # New York springs forward at 07:00 UTC
    datetime(2026, 3, 29, 0, 59, tzinfo=UTC),  # Berlin springs forward at 01:00 UTC
    datetime(2026, 4, 4, 13, 0, tzinfo=UTC),  # Chatham falls back (14:00 UTC, 03:45 local)
    datetime(2026, 4, 5, 2, 30, tzinfo=UTC),  # Santiago falls back (03:00 UTC)
    datetime(2026, 9, 6, 3, 0, tzinfo=UTC),  # Santiago springs forward (04:00 UTC)
    datetime(2026, 10, 25, 0, 30, tzinfo=UTC),  # Berlin falls back
    datetime(2026, 11, 1, 5, 30, tzinfo=UTC),  # New York falls back
    datetime(2026, 12, 31, 23, 0, tzinfo=UTC),
]


def _instants(rng: random.Random) -> list[int]:
    out = []
    for at in AROUND:
        base = int(at.timestamp() * 1000)
        out += [base + rng.randint(-36, 36) * 3_600_000 + rng.randint(-60_000, 60_000) for _ in range(40)]
        out += [base + k * 60_000 for k in range(-90, 91, 7)]
    return out


@pytest.mark.parametrize("order", ["sorted", "shuffled"])
def test_the_remembered_budget_day_is_the_zone_conversions_day(order: str) -> None:
    rng = random.Random(7)
    instants = _instants(rng)
    if order == "sorted":
        instants.sort()
    else:
        rng.shuffle(instants)
    reader = AnswerReader(None, Catalog([]), Keys.of(KeySettings()))
    for t in instants:
        for zone in ZONES:
            assert reader.day(zone, t) == budget_day(t, zone).isoformat(), (zone, t)


def test_memoised_keys_are_the_layouts_keys_for_each_day() -> None:
    keys = Keys.of(KeySettings(budget_shards=7))
    cat = Catalog([campaign(f"c{i}") for i in range(30)])
    reader = AnswerReader(None, cat, keys)
    for day in ("2026-11-01", "2026-11-02", "2026-11-01"):
        for c in cat:
            cid = c.campaign_id
            shard, triple, packed = reader._budget_keys(cid, day)
            assert shard == keys.shard(cid)
            assert triple == (keys.spend_day(cid, day), keys.spend_lifetime(cid), keys.published(cid))
            # The same keys as MGET's arguments, as hiredis packs them.
            mget = hiredis.pack_command(("MGET", *triple))
            assert Packed.of(b"MGET", [packed], 3) == mget


def test_an_answer_follows_a_reloaded_catalog_record_and_a_new_published_state() -> None:
    """The flattened campaign record is remembered per record, not per id: a catalog reloaded with
    a new cap answers with it (mutant: keying the memo by id alone keeps the old cap); the
    published state's parse is remembered per string, so a new step's string gives its probability."""
    from serving import Reason
    from shared_logic.pacing import PacingState, encode_published

    now = int(datetime(2026, 12, 7, 12, tzinfo=UTC).timestamp() * 1000)
    day = budget_day(now, "UTC").isoformat()
    reader = AnswerReader(
        None, Catalog([campaign("c1", budget={"daily_minor": 1_000})]), Keys.of(KeySettings())
    )
    state = encode_published(PacingState(day, now - 60_000, 0.25, 0.0, 0.5, liability_minor=3.0)).encode()
    first = reader.one("c1", [b"600", b"600", state], None, day, now)
    assert (first.servable, first.remaining_minor, first.serve_probability) == (True, 400, 0.25)
    reader.catalog = Catalog([campaign("c1", budget={"daily_minor": 500, "lifetime_minor": 650})])
    again = reader.one("c1", [b"600", b"600", state], None, day, now)
    assert (again.reason, again.remaining_minor) == (Reason.BUDGET_EXHAUSTED, 0)
    stepped = encode_published(PacingState(day, now, 0.5, 0.0, 0.5)).encode()
    reader.catalog = Catalog([campaign("c1", budget={"daily_minor": 1_000})])
    later = reader.one("c1", [b"600", b"600", stepped], None, day, now)
    assert (later.serve_probability, later.state_age_ms, later.liability_minor) == (0.5, 0, 0.0)
