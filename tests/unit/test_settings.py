"""One settings tree: ATTRIBUTION_<SECTION>_<NAME>, unknown names refused, one section per concern."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared_logic.errors import InvalidSetting, MissingExtra
from shared_logic.settings import Settings, load_settings
from storage.errors import UnknownBackend
from storage.registry import Backend, Registry, scheme_of

pytestmark = pytest.mark.unit


def test_environment_names_are_section_and_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTRIBUTION_REDIS_URL", "redis://elsewhere:7000/3")
    monkeypatch.setenv("ATTRIBUTION_KEYS_USER_BUCKETS", "16")
    monkeypatch.setenv("ATTRIBUTION_REALTIME_BATCH_SIZE", "123")
    monkeypatch.setenv("ATTRIBUTION_BATCH_MODELS", '["markov", "shapley"]')
    s = load_settings()
    assert s.redis.url == "redis://elsewhere:7000/3"
    assert s.keys.user_buckets == 16
    assert s.realtime.batch_size == 123
    assert s.batch.models == ("markov", "shapley")


def test_the_worker_and_the_api_read_one_key_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    from realtime.keys import Keys

    monkeypatch.setenv("ATTRIBUTION_KEYS_BUDGET_SHARDS", "4")
    s = load_settings()
    # Both build their key builder from the same section; there is no second default to drift.
    assert Keys.of(s.keys) == Keys(s.keys.prefix, s.keys.user_buckets, 4)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("ATTRIBUTION_BOGUS", "1", "ATTRIBUTION_BOGUS.*is not a setting"),
        ("ATTRIBUTION_ALLOWED_LATENESS_MS", "5", "ATTRIBUTION_ALLOWED_LATENESS_MS.*is not a setting"),
        ("ATTRIBUTION_KEYS_USER_BUCKETS", "0", "ATTRIBUTION_KEYS_USER_BUCKETS.*greater than or equal to 1"),
        ("ATTRIBUTION_KEYS_COLOUR", "blue", "ATTRIBUTION_KEYS_COLOUR.*Extra inputs are not permitted"),
        ("ATTRIBUTION_BATCH_MODELS", '["nope"]', "ATTRIBUTION_BATCH_MODELS.*must be among"),
    ],
)
def test_unknown_or_bad_settings_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(InvalidSetting, match=message):
        load_settings()


def test_secrets_are_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTRIBUTION_S3SECRET", "hunter2")
    with pytest.raises(InvalidSetting) as info:
        load_settings()
    assert "hunter2" not in str(info.value)
    monkeypatch.delenv("ATTRIBUTION_S3SECRET")
    s = Settings().replace(s3_secret_key="hunter2")
    assert "hunter2" not in repr(s)
    assert s.s3.secret_key is not None
    assert s.s3.secret_key.get_secret_value() == "hunter2"


def test_replace_changes_only_what_it_names() -> None:
    base = Settings()
    s = base.replace(redis_url="redis://x:1/0", keys_user_buckets=8, lake_url=None)
    assert (s.redis.url, s.keys.user_buckets, s.lake.url) == ("redis://x:1/0", 8, base.lake.url)
    assert s.keys.prefix == base.keys.prefix
    with pytest.raises(KeyError, match="section"):
        base.replace(nonsense_value=1)
    with pytest.raises(ValidationError):
        base.replace(keys_user_buckets=0)


def test_a_registry_picks_by_scheme_and_names_what_is_missing() -> None:
    reg: Registry[object] = Registry(
        "thing",
        {
            "": Backend("storage.catalog:FileCatalog", "realtime"),
            "x": Backend("no_such_module_for_test:Thing", "xtra"),
        },
    )
    assert scheme_of("var/a.yaml") == ""
    assert scheme_of("Cassandra://h/k") == "cassandra"
    assert reg.resolve("var/a.yaml").__name__ == "FileCatalog"
    with pytest.raises(MissingExtra, match=r"pip install 'attribution-engine\[xtra\]'"):
        reg.resolve("x://host")
    with pytest.raises(UnknownBackend, match=r"thing url.*scheme must be one of x://"):
        reg.resolve("y://host")


def test_a_charge_record_must_outlive_the_cancel_horizon() -> None:
    with pytest.raises(ValidationError, match=r"realtime\.decision_ttl_ms = 86400000"):
        Settings().replace(rules_cancel_horizon_days=3, realtime_decision_ttl_ms=86_400_000)
    ok = Settings().replace(rules_cancel_horizon_days=0, realtime_decision_ttl_ms=2 * 86_400_000)
    assert ok.rules.policy().cancel_horizon_days == 0
