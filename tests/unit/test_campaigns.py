import json
from pathlib import Path

import pytest

from devtools.synthetic import SyntheticConfig, make_catalog
from shared_logic import Catalog, InvalidCampaign
from storage.catalog import open_catalog as load_catalog
from tests.factories import campaign

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("change", "field", "text"),
    [
        ({"currency": "XYZ"}, "currency", "ISO 4217"),
        ({"pricing": {"model": "fixed", "fee_minor": 0}}, "pricing.fee_minor", "greater than 0"),
        ({"pricing": {"model": "fixed", "bps": 10}}, "pricing", "fixed pricing needs fee_minor"),
        ({"pricing": {"model": "bps", "bps": 20_000}}, "pricing.bps", "less than or equal"),
        ({"budget": {"daily_minor": -5}}, "budget.daily_minor", "greater than 0"),
        ({"budget": {"daily_minor": 500, "lifetime_minor": 100}}, "budget", "may not exceed"),
        ({"budget": {"timezone": "Mars/Olympus"}}, "budget.timezone", "IANA"),
        ({"windows": {"click_ms": 0}}, "windows.click_ms", "greater than 0"),
        ({"lever": "tv"}, "lever", "'ad' or 'promo'"),
        ({"merchant_ids": []}, "<record>", "needs merchant_ids or promo_codes"),
        ({"promo_codes": ["X"]}, "<record>", "only a promo campaign"),
        ({"unknown": 1}, "unknown", "Extra inputs"),
        ({"start_ms": "2026-11-02T00:00:00Z", "end_ms": "2026-11-01T00:00:00Z"}, "<record>", "end_ms"),
    ],
)
def test_bad_campaign_names_campaign_field_and_rule(change, field: str, text: str) -> None:
    with pytest.raises(InvalidCampaign) as info:
        campaign("c7", **change)
    assert info.value.field == f"c7.{field}"
    assert text in info.value.rule


def test_times_accept_rfc3339_and_active_period() -> None:
    c = campaign(start_ms="2026-11-01T00:00:00Z", end_ms=1_793_577_600_000)
    assert c.start_ms == 1_793_491_200_000
    assert c.active_at(c.start_ms)
    assert not c.active_at(c.start_ms - 1)
    assert not c.active_at(c.end_ms)  # type: ignore[arg-type]


def test_catalog_refuses_duplicates_and_shared_codes() -> None:
    with pytest.raises(InvalidCampaign, match="defined twice"):
        Catalog([campaign("a"), campaign("a")])
    p1 = campaign("p1", lever="promo", promo_codes=["X"])
    p2 = campaign("p2", lever="promo", promo_codes=["X"])
    with pytest.raises(InvalidCampaign, match="belongs to both p1 and p2"):
        Catalog([p1, p2])


def test_catalog_files_round_trip(tmp_path: Path) -> None:
    cat = make_catalog(SyntheticConfig())
    as_json = tmp_path / "catalog.json"
    as_json.write_text(json.dumps({"campaigns": cat.to_records()}))
    as_yaml = tmp_path / "catalog.yaml"
    import yaml

    as_yaml.write_text(yaml.safe_dump({"campaigns": cat.to_records()}))
    for path in (as_json, as_yaml):
        loaded = load_catalog(path)
        assert [c.model_dump() for c in loaded] == [c.model_dump() for c in cat]


def test_catalog_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "c.yaml"
    bad.write_text("campaigns: {not: a list}")
    with pytest.raises(InvalidCampaign, match="'campaigns' list"):
        load_catalog(bad)
    broken = tmp_path / "c.json"
    broken.write_text("{")
    with pytest.raises(InvalidCampaign, match="not valid JSON"):
        load_catalog(broken)


def test_indexes() -> None:
    cat = Catalog([campaign("a", merchant_ids=["m1", "m2"]), campaign("p", lever="promo", promo_codes=["S"])])
    assert [c.campaign_id for c in cat.by_merchant("m2")] == ["a"]
    assert cat.by_promo_code("S").campaign_id == "p"  # type: ignore[union-attr]
    assert cat.by_promo_code("T") is None
    assert "a" in cat
    assert len(cat.advertiser_campaigns("adv1")) == 2
