"""The batch layer's per-user step, on pandas, without Spark."""

import pandas as pd
import pytest

from batch.journeys import DaySpec, decide_user
from shared_logic import AttributionPolicy
from tests.factories import DAY, HOUR, MIN, T0, campaign, catalog, promo

pytestmark = pytest.mark.unit
DAY0 = T0 - T0 % DAY


def _rows() -> pd.DataFrame:
    base = {
        "campaign_id": None,
        "placement": None,
        "order_id": None,
        "merchant_id": None,
        "amount_minor": None,
        "currency": None,
        "promo_codes": None,
    }
    events = [
        {
            **base,
            "event_id": "i1",
            "event_type": "impression",
            "event_time": T0,
            "campaign_id": "ad1",
            "placement": "feed",
        },
        {
            **base,
            "event_id": "c1",
            "event_type": "click",
            "event_time": T0 + MIN,
            "campaign_id": "ad1",
            "placement": "search",
        },
        {
            **base,
            "event_id": "o1",
            "event_type": "order",
            "event_time": T0 + HOUR,
            "order_id": "o1",
            "merchant_id": "m1",
            "amount_minor": 4000,
            "currency": "USD",
            "promo_codes": ["SAVE"],
        },
        {
            **base,
            "event_id": "i2",
            "event_type": "impression",
            "event_time": T0 + 2 * HOUR,
            "campaign_id": "ad1",
            "placement": "video",
        },
    ]
    return pd.DataFrame([{**e, "ingested_at_ms": e["event_time"]} for e in events])


@pytest.mark.parametrize(
    ("key", "path"),
    [
        ("campaign", ["ad1", "ad1", "pr1"]),
        ("lever", ["ad", "ad", "promo"]),
        ("placement", ["feed", "search", "none"]),
    ],
)
def test_journeys_by_channel_key(key: str, path: list[str]) -> None:
    cat = catalog(campaign("ad1"), promo("pr1", codes=("SAVE",), merchant_ids=["m1"]))
    rows = decide_user("u1", _rows(), DaySpec(cat, AttributionPolicy(), DAY0, DAY0 + DAY, key))
    counted = {(r["campaign_id"], r["counter"]): r["touches"] for r in rows if r["kind"] == "count"}
    assert counted == {("ad1", "impressions"): 2, ("ad1", "clicks"): 1}  # the day's admitted touches
    order, null = (r for r in rows if r["kind"] != "count")
    assert (order["kind"], order["campaign_id"], order["touch_kind"]) == (
        "order",
        "pr1",
        3,
    )  # the redemption wins
    assert order["path_channels"] == path
    assert order["path_times"] == [T0, T0 + MIN, T0 + HOUR]
    # The impression after the order starts a journey that has not converted.
    assert null["kind"] == "null"
    assert len(null["path_channels"]) == 1
