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


# Secured brokers: ATTRIBUTION_REALTIME_SECURITY_PROTOCOL, _SSL_*, _SASL_* -------------------


def _secured(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(f"ATTRIBUTION_REALTIME_{name.upper()}", value)


def test_security_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    _secured(
        monkeypatch,
        security_protocol="SASL_SSL",
        ssl_cafile=str(ca),
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="svc-attribution",
        sasl_password="hunter2-secret",
    )
    cfg = load_settings().realtime
    assert (cfg.security_protocol, cfg.ssl_cafile, cfg.ssl_check_hostname) == ("SASL_SSL", str(ca), True)
    assert (cfg.sasl_mechanism, cfg.sasl_username) == ("SCRAM-SHA-512", "svc-attribution")
    assert cfg.sasl_password is not None
    assert cfg.sasl_password.get_secret_value() == "hunter2-secret"
    assert "hunter2" not in repr(cfg)
    assert "hunter2" not in str(cfg)
    # replace() keeps the secret (it re-validates the section from a python dump).
    again = load_settings(realtime_batch_size=7).realtime
    assert again.sasl_password == cfg.sasl_password
    assert type(cfg)().security_protocol == "PLAINTEXT"  # the default


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"security_protocol": "SASL_SSL", "sasl_username": "u", "sasl_password": "p"},
            r"ATTRIBUTION_REALTIME_SASL_MECHANISM' = None: SASL_SSL needs PLAIN, SCRAM-SHA-256 or SCRAM",
        ),
        (
            {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_password": "p"},
            r"ATTRIBUTION_REALTIME_SASL_USERNAME' = None: SASL_PLAINTEXT needs a SASL user",
        ),
        (
            {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-256", "sasl_username": "u"},
            r"ATTRIBUTION_REALTIME_SASL_PASSWORD' = None: SASL_SSL needs the SASL user's password",
        ),
        (
            {
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "SCRAM-SHA-256",
                "sasl_username": "u",
                "sasl_password": "",
            },
            r"ATTRIBUTION_REALTIME_SASL_PASSWORD' = None: SASL_SSL needs",
        ),
        (
            {"security_protocol": "SSL", "ssl_cafile": "/nonexistent/ca.pem"},
            r"ATTRIBUTION_REALTIME_SSL_CAFILE' = '/nonexistent/ca.pem': no such file",
        ),
        (
            {"security_protocol": "SSL", "ssl_certfile": "/nonexistent/client.pem"},
            r"ATTRIBUTION_REALTIME_SSL_CERTFILE' = '/nonexistent/client.pem': no such file",
        ),
        (
            {"security_protocol": "PLAINTEXT", "ssl_cafile": "/nonexistent/ca.pem"},
            r"ATTRIBUTION_REALTIME_SSL_CAFILE'.*PLAINTEXT uses no TLS: set it to SSL or SASL_SSL",
        ),
        (
            {"security_protocol": "SSL", "sasl_username": "u"},
            r"ATTRIBUTION_REALTIME_SASL_USERNAME' = 'u': security_protocol SSL sends no credentials",
        ),
        (
            {"sasl_mechanism": "PLAIN"},
            r"ATTRIBUTION_REALTIME_SASL_MECHANISM' = 'PLAIN': .*PLAINTEXT sends no",
        ),
        ({"security_protocol": "TLS"}, r"ATTRIBUTION_REALTIME_SECURITY_PROTOCOL' = 'TLS': Input should be"),
        (
            {"security_protocol": "SASL_SSL", "sasl_mechanism": "GSSAPI"},
            r"ATTRIBUTION_REALTIME_SASL_MECHANISM' = 'GSSAPI': Input should be",
        ),
        ({"ssl_check_hostname": "maybe"}, r"ATTRIBUTION_REALTIME_SSL_CHECK_HOSTNAME.*valid boolean"),
    ],
)
def test_security_settings_that_cannot_work_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    _secured(monkeypatch, **env)
    with pytest.raises(InvalidSetting, match=message):
        load_settings()


def test_a_client_key_needs_its_certificate(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    key = tmp_path / "client.key"
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    _secured(monkeypatch, security_protocol="SSL", ssl_keyfile=str(key))
    with pytest.raises(
        InvalidSetting, match=r"SSL_KEYFILE.*a client key needs its certificate: set ssl_certfile"
    ):
        load_settings()
    # A certificate alone is enough (its PEM file may hold the key too).
    monkeypatch.delenv("ATTRIBUTION_REALTIME_SSL_KEYFILE")
    _secured(monkeypatch, ssl_certfile=str(key))
    assert load_settings().realtime.ssl_certfile == str(key)


def test_the_sasl_password_is_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not by the error of the password itself, nor by an error of another field of its section
    (a plain ValueError of the section's validator would show the section's whole input)."""
    _secured(monkeypatch, sasl_password="hunter2-secret")  # with PLAINTEXT: refused
    with pytest.raises(InvalidSetting, match="SASL_PASSWORD' = '<hidden>'") as info:
        load_settings()
    assert "hunter2" not in str(info.value)
    _secured(monkeypatch, security_protocol="SASL_SSL", sasl_mechanism="PLAIN", ssl_cafile="/nonexistent.pem")
    with pytest.raises(InvalidSetting) as info:
        load_settings()
    assert "hunter2" not in str(info.value)
    assert "SSL_CAFILE" in str(info.value)
    monkeypatch.delenv("ATTRIBUTION_REALTIME_SASL_PASSWORD")
    with pytest.raises(ValidationError) as raw:
        Settings().replace(
            realtime_security_protocol="SASL_SSL",
            realtime_sasl_mechanism="PLAIN",
            realtime_sasl_password="hunter2-secret",
            realtime_ssl_cafile="/nonexistent.pem",
        )
    assert "hunter2" not in str(raw.value)
    assert "hunter2" not in repr(raw.value.errors())


def test_a_whole_tree_rule_does_not_echo_the_tree(monkeypatch: pytest.MonkeyPatch) -> None:
    """A rule over the whole tree (the decision TTL against the cancel horizon) names its values in its
    message, and never echoes the tree's input, where secrets live."""
    monkeypatch.setenv("ATTRIBUTION_S3_SECRET_KEY", "s3cr3t-value")
    monkeypatch.setenv("ATTRIBUTION_REALTIME_DECISION_TTL_MS", "1000")
    with pytest.raises(InvalidSetting, match="decision_ttl_ms = 1000") as caught:
        load_settings()
    assert "s3cr3t-value" not in str(caught.value)


def test_the_decision_ttl_is_derived_from_the_cancel_horizon_unless_given() -> None:
    """By default claims and charges live as long as a refund may need them (the horizon's days plus
    the order's own, plus the lateness) plus the slack, not a flat figure: a longer horizon keeps
    them longer. A given TTL is taken as it is."""
    day = 86_400_000
    assert Settings().decision_ttl_ms == 8 * day + 60_000 + day
    longer = Settings().replace(rules_cancel_horizon_days=30, realtime_state_slack_ms=0)
    assert longer.decision_ttl_ms == 31 * day + 60_000
    assert Settings().replace(realtime_decision_ttl_ms=35 * day).decision_ttl_ms == 35 * day


def test_the_default_windows_come_from_the_settings_and_set_the_look_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A campaign without windows of its own counts touches over ``rules.default_*_window_ms``,
    and the longest of them sets the nightly look-back (kills the mutant that leaves
    ``policy()`` on the policy's built-in 7 days)."""
    from shared_logic import Windows
    from tests.factories import campaign

    day = 86_400_000
    assert Settings().rules.policy().lookback_days() == 8  # 7 days of clicks, a minute late
    monkeypatch.setenv("ATTRIBUTION_RULES_DEFAULT_CLICK_WINDOW_MS", str(2 * day))
    monkeypatch.setenv("ATTRIBUTION_RULES_DEFAULT_VIEW_WINDOW_MS", str(day // 4))
    policy = load_settings().rules.policy()
    assert policy.default_windows == Windows(click_ms=2 * day, view_ms=day // 4)
    assert policy.lookback_days() == 3
    own = campaign("c1", windows={"click_ms": day, "view_ms": day})
    bare = campaign("c2")
    assert policy.windows_for(own).click_ms == day
    assert policy.windows_for(bare).click_ms == 2 * day
    monkeypatch.setenv("ATTRIBUTION_RULES_DEFAULT_CLICK_WINDOW_MS", "0")
    with pytest.raises(InvalidSetting, match="ATTRIBUTION_RULES_DEFAULT_CLICK_WINDOW_MS"):
        load_settings()
