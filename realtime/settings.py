"""Settings of the speed layer: one frozen object, read from ``ATTRIBUTION_*`` variables."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared_logic.policy import DEFAULT_ALLOWED_LATENESS_MS


class RealtimeSettings(BaseSettings):
    """Where the worker reads, where it keeps state, and how long it waits for late touches."""

    model_config = SettingsConfigDict(env_prefix="ATTRIBUTION_", frozen=True, extra="forbid")

    broker_url: str = Field(
        "memory://", description="kafka://host:port for Kafka, memory:// for in-memory channels"
    )
    redis_url: str = "redis://127.0.0.1:6379/0"
    catalog_path: str = Field("", description="campaign catalog file (YAML/JSON); empty: the demo catalog")
    lake_url: str = Field("file://./var/lake", description="lake root for the ledger (file:// or s3://)")
    app_id: str = "attribution"
    key_prefix: str = Field("attr", pattern=r"^[A-Za-z0-9_-]{1,32}$")
    topic_prefix: str = "attribution"
    topic_partitions: int = Field(12, ge=1)
    allowed_lateness_ms: int = Field(DEFAULT_ALLOWED_LATENESS_MS, ge=0)
    user_buckets: int = Field(
        64,
        ge=1,
        le=16384,
        description="hash-tag buckets for user state (Redis Cluster slots it can spread over)",
    )
    budget_shards: int = Field(1, ge=1, le=1024, description="hash-tag shards for budget state")
    batch_size: int = Field(4_000, ge=1, description="events taken from the stream per batch")
    batch_within_s: float = Field(0.05, gt=0, description="longest wait to fill a batch")
    decision_ttl_ms: int = Field(35 * 86_400_000, gt=0, description="how long claims and charges are kept")
    counts_ttl_ms: int = Field(10 * 86_400_000, gt=0)
    budget_events_maxlen: int = Field(100_000, ge=1)
    dead_letter_maxlen: int = Field(1_000_000, ge=1)
    timer_interval_s: float = Field(1.0, gt=0, description="live mode: how often the clock releases orders")

    def topic(self, event_type: str) -> str:
        return f"{self.topic_prefix}.{event_type}"
