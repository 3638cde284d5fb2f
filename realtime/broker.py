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
from typing import Any

from aiokafka import AIOKafkaClient, AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import KafkaConnectionError
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
    """The keyword arguments every aiokafka client of this project is built with."""
    return {"bootstrap_servers": bootstrap(cfg.broker_url)}


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
    except KafkaConnectionError as exc:
        raise BrokerUnavailable(f"broker_url = {cfg.broker_url!r}: no Kafka broker answers ({exc})") from None
    finally:
        await client.close()


async def ensure_topics(cfg: RealtimeSettings) -> None:
    """Create the input and dead-letter topics with the configured partition count if missing, and
    refuse to start when an existing input topic has another count (the settlement bound is the
    minimum over every partition: a worker must know them all)."""
    client = admin(cfg)
    try:
        await client.start()
    except Exception as exc:
        raise BrokerUnavailable(f"broker_url = {cfg.broker_url!r}: no Kafka broker answers ({exc})") from None
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
