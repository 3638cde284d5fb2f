"""Whole quantities are integers in API answers and CLI tables; fractional only for multi-touch
credit; money per currency; a reconciliation's missing rows say from which layer."""

from __future__ import annotations

import json

import pytest

from cli.batch import _causes, _spend
from reporting.schemas import CREDIT_PRECISION, RoasReport, RoasRow, whole_unless_split
from tests.factories import campaign, catalog

pytestmark = pytest.mark.unit

BASE = {
    "day": "2026-11-01",
    "campaign_id": "c1",
    "advertiser_id": "adv",
    "lever": "ad",
    "currency": "USD",
    "source": "batch",
    "windows": {"click_ms": 1, "view_ms": 1},
    "impressions": 5,
    "clicks": 2,
    "promo_views": 0,
    "spend_minor": 100,
    "capped_orders": 0,
    "roas": 131.27,
    "ivt_touches": 0,
    "ivt_orders_changed": 0,
    "ivt_orders_unattributed": 0,
    "ivt_avoided_minor": 0,
}


def test_the_billing_model_answers_whole_orders_and_revenue() -> None:
    row = whole_unless_split({**BASE, "model": "billing", "orders": 2.0, "revenue_minor": 13127.0})
    text = json.dumps(row)
    assert '"orders": 2,' in text
    assert '"revenue_minor": 13127}' in text
    assert isinstance(RoasRow.model_validate(row).model_dump()["orders"], int)


def test_multi_touch_credit_stays_fractional_to_its_documented_precision() -> None:
    row = whole_unless_split({**BASE, "model": "markov", "orders": 1 / 3, "revenue_minor": 4375.666666666})
    assert row["orders"] == 1 / 3  # as credited, unrounded: a campaign's credit sums back to its orders
    assert isinstance(row["orders"], float)
    assert row["revenue_minor"] == 4375.666666666


def test_the_openapi_schema_says_integer_or_number_with_the_precision() -> None:
    orders = RoasReport.model_json_schema()["$defs"]["RoasRow"]["properties"]["orders"]
    assert {"type": "integer"} in orders["anyOf"]
    assert CREDIT_PRECISION in orders["description"]
    assert (
        RoasReport.model_json_schema()["$defs"]["RoasRow"]["properties"]["impressions"]["type"] == "integer"
    )


def test_batch_run_spend_is_per_currency_never_one_sum() -> None:
    cat = catalog(
        campaign("u1", currency="USD"), campaign("u2", currency="USD"), campaign("e1", currency="EUR")
    )
    said = _spend({"u1": 150, "u2": 50, "e1": 999}, cat)
    assert "EUR" in said
    assert "USD" in said
    assert "11.99" not in said  # no sum across the two currencies
    assert "2.00" in said  # 150 + 50 USD minor units
    assert "9.99" in said


def test_reconciliation_causes_say_from_which_layer_orders_are_missing() -> None:
    said = _causes({"missing": 3, "late touch": 1}, {"realtime": 2, "batch": 1})
    assert said == "late touch: 1, missing: 3 (from batch 1, from realtime 2)"
