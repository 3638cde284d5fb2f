"""Kafka clients as every service here builds them: one place for the bootstrap list, the client
settings (security included), the topics and the consumer group.

The speed layer's worker (``realtime.kafka``), the lake sink (``realtime.lakesink``), the traffic
generators and the CLI's broker check all take their clients from here, so a setting of the
``realtime`` section (a bootstrap host, a timeout, TLS or SASL) reaches every one of them.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from typing import Any

from aiokafka import AIOKafkaClient, AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import KafkaConnectionError
from aiokafka.helpers import create_ssl_context
from prometheus_client import start_http_server

from realtime.errors import BrokerUnavailable
from shared_logic.errors import InvalidSetting
from shared_logic.events import EVENT_TYPES
from shared_logic.settings import RealtimeSettings

log = logging.getLogger(__name__)


def bootstrap(url: str) -> str:
    """``kafka://h1:9092;h2:9092`` -> ``h1:9092,h2:9092``."""
    return url.split("://", 1)[-1].replace(";", ",")


def client_options(cfg: RealtimeSettings) -> dict[str, Any]:
    """The keyword arguments every aiokafka client of this project is built with: the bootstrap
    list and the security settings (TLS context, SASL mechanism and credentials).

    The password is handed to aiokafka only here, as the plain string it needs; it stays a
    ``SecretStr`` in the settings, and nothing here logs it."""
    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap(cfg.broker_url),
        "security_protocol": cfg.security_protocol,
    }
    if cfg.security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = _ssl_context(cfg)
    if cfg.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        logging.getLogger("aiokafka.conn").addFilter(_HIDE_SASL_TOKENS)  # once: a logger keeps one copy
        password = cfg.sasl_password.get_secret_value() if cfg.sasl_password is not None else None
        options |= {
            "sasl_mechanism": cfg.sasl_mechanism,
            "sasl_plain_username": cfg.sasl_username,
            "sasl_plain_password": password,
        }
    return options


class _HideSaslTokens(logging.Filter):
    """aiokafka logs every request it sends at DEBUG, SaslAuthenticate's too, whose PLAIN token is
    the user and the password in the clear: such a request is logged as ``<hidden>`` instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(_is_sasl_token(a) for a in record.args):
            record.args = tuple(
                "SaslAuthenticateRequest(<hidden>)" if _is_sasl_token(a) else a for a in record.args
            )
        return True


def _is_sasl_token(arg: object) -> bool:
    return type(arg).__name__.startswith("SaslAuthenticateRequest")


_HIDE_SASL_TOKENS = _HideSaslTokens()


def _ssl_context(cfg: RealtimeSettings) -> ssl.SSLContext:
    """TLS as aiokafka's helper builds it (the system's CAs unless ``ssl_cafile``; a client
    certificate when ``ssl_certfile``), the host name checked unless ``ssl_check_hostname`` is off."""
    try:
        context: ssl.SSLContext = create_ssl_context(
            cafile=cfg.ssl_cafile, certfile=cfg.ssl_certfile, keyfile=cfg.ssl_keyfile
        )
    except OSError as exc:  # ssl.SSLError included: not PEM, or a key not of its certificate
        raise InvalidSetting(
            "ATTRIBUTION_REALTIME_SSL_CAFILE/_CERTFILE/_KEYFILE",
            [p for p in (cfg.ssl_cafile, cfg.ssl_certfile, cfg.ssl_keyfile) if p],
            f"cannot be loaded as PEM ({exc})",
        ) from None
    context.check_hostname = cfg.ssl_check_hostname
    return context


def input_topics(cfg: RealtimeSettings) -> list[str]:
    return [cfg.topic(t) for t in EVENT_TYPES]


def producer(cfg: RealtimeSettings, **options: Any) -> AIOKafkaProducer:
    """A producer to the configured broker (``options``: aiokafka's producer settings)."""
    return AIOKafkaProducer(**client_options(cfg), **options)


def admin(cfg: RealtimeSettings) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**client_options(cfg), request_timeout_ms=10_000)


async def probe(cfg: RealtimeSettings) -> None:
    """Fail fast, in one line, when no broker answers (the Kafka client would retry forever)."""
    client = AIOKafkaClient(**client_options(cfg), request_timeout_ms=5_000)
    try:
        await client.bootstrap()
    except Exception as exc:  # a refused handshake surfaces as a connection error, or worse
        raise BrokerUnavailable(f"broker_url = {cfg.broker_url!r}: {_why(cfg, exc)}") from None
    finally:
        await client.close()


def _why(cfg: RealtimeSettings, exc: BaseException) -> str:
    """One line on why a client could not start: with security configured, the handshake is as
    likely as the address (aiokafka logs the broker's own reason just before)."""
    detail = f"{type(exc).__name__}: {exc}" if not isinstance(exc, KafkaConnectionError) else str(exc)
    if cfg.security_protocol == "PLAINTEXT":
        return f"no Kafka broker answers ({detail})"
    how = cfg.security_protocol + (
        f" {cfg.sasl_mechanism} as {cfg.sasl_username!r}" if cfg.sasl_mechanism else ""
    )
    return f"no Kafka broker answers, or it refused the handshake ({how}): {detail}"


async def ensure_topics(cfg: RealtimeSettings) -> None:
    """Create the input and dead-letter topics with the configured partition count if missing, and
    refuse to start when an existing input topic has another count (the settlement bound is the
    minimum over every partition: a worker must know them all)."""
    client = admin(cfg)
    try:
        await client.start()
    except Exception as exc:
        raise BrokerUnavailable(f"broker_url = {cfg.broker_url!r}: {_why(cfg, exc)}") from None
    try:
        wanted = [*input_topics(cfg), cfg.topic("dead_letters")]
        existing = set(await client.list_topics())
        missing = [t for t in wanted if t not in existing]
        if missing:
            await client.create_topics([NewTopic(t, cfg.topic_partitions, 1) for t in missing])
            log.info("created topics %s with %d partitions", missing, cfg.topic_partitions)
        for meta in await client.describe_topics(input_topics(cfg)):
            n = len(meta.get("partitions", []))
            if n and n != cfg.topic_partitions:
                raise InvalidSetting(
                    "ATTRIBUTION_REALTIME_TOPIC_PARTITIONS",
                    cfg.topic_partitions,
                    f"topic {meta['topic']} has {n} partitions: every input topic needs this count",
                )
    finally:
        await client.close()


def group_consumer(cfg: RealtimeSettings, group: str, max_poll_records: int) -> AIOKafkaConsumer:
    """A member of consumer group ``group`` over the input topics as every service here consumes:
    offsets committed by hand after the effects, from the earliest offset when the group has none,
    the Range assignor (a member gets the same partition numbers of every topic)."""
    return AIOKafkaConsumer(
        **client_options(cfg),
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        partition_assignment_strategy=(RangePartitionAssignor,),
        session_timeout_ms=cfg.session_timeout_ms,
        heartbeat_interval_ms=cfg.heartbeat_interval_ms,
        max_poll_records=max_poll_records,
    )


async def serve(service: Any, registry: Any, metrics_host: str, metrics_port: int) -> None:
    """Run a consumer service (``start``, ``run``, ``stop``) until SIGTERM or SIGINT, its Prometheus
    registry served on ``metrics_host:metrics_port`` unless the port is 0."""
    if metrics_port:
        start_http_server(metrics_port, addr=metrics_host, registry=registry)
        log.info("metrics on http://%s:%d/metrics", metrics_host, metrics_port)
    await service.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.stop)
    await service.run()
