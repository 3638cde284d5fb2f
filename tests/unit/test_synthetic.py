import itertools
from collections import Counter

import pytest

from devtools.synthetic import SyntheticConfig, generate
from shared_logic import InvalidEvent, Order, parse_event

pytestmark = pytest.mark.unit
SMALL = SyntheticConfig(users=300, days=3, duplicate_rate=0.02, late_rate=0.02, malformed_rate=0.01)


def test_same_seed_same_traffic_other_seed_other_traffic() -> None:
    a, b = generate(SMALL), generate(SMALL)
    assert list(a.jsonl()) == list(b.jsonl())
    c = generate(SyntheticConfig(seed=8, users=300, days=3))
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
