"""One settings tree for every service: ``ATTRIBUTION_<SECTION>_<NAME>``.

Each section is a frozen pydantic model that refuses unknown keys; the tree
reads the environment once, when a service builds it (``Settings()``), and
every service takes the sections it needs from that one object, so the
worker and the API cannot disagree on, say, the Redis key layout: both read
``keys``. The environment spells a value with the section and the field
joined by one underscore, e.g. ``ATTRIBUTION_REDIS_URL``,
``ATTRIBUTION_KEYS_USER_BUCKETS``, ``ATTRIBUTION_REALTIME_BATCH_SIZE``.

No module reads ``os.environ`` for a setting; tests and entry points change
a value with ``settings.replace(redis_url=..., keys_user_buckets=16)``, the
same names without the prefix.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from shared_logic.campaigns import DEFAULT_CLICK_WINDOW_MS, DEFAULT_VIEW_WINDOW_MS, Windows
from shared_logic.contract import MODEL_NAMES
from shared_logic.errors import InvalidSetting
from shared_logic.ivt import (
    DEFAULT_ENGAGEMENT_CLICKS,
    DEFAULT_ENGAGEMENT_WINDOW_MS,
    DEFAULT_FLAT_HOUR_SHARE,
    DEFAULT_FLAT_SHARE,
    DEFAULT_FLOOD_CLICKS,
    DEFAULT_FLOOD_WINDOW_MS,
    DEFAULT_INJECTION_MS,
    DEFAULT_SHAPE_MIN_ORDERS,
    DEFAULT_SPIKE_SHARE,
    IvtPolicy,
    IvtRules,
    Mode,
    ShapeRules,
)
from shared_logic.pacing import PacingConfig
from shared_logic.policy import (
    DEFAULT_ALLOWED_LATENESS_MS,
    DEFAULT_CANCEL_HORIZON_DAYS,
    DEFAULT_MAX_FUTURE_MS,
    AttributionPolicy,
)
from shared_logic.timeutil import MS_PER_DAY


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RedisSettings(_Section):
    """Where the speed layer keeps its state; the API and the budget reader read the same."""

    url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="redis://host:port/db, rediss://…, or redis+cluster://host:port[,host:port…] "
        "for Redis Cluster",
    )


class KeySettings(_Section):
    """The Redis key layout. Writers and readers must agree, so they share this one section."""

    prefix: str = Field("attr", pattern=r"^[A-Za-z0-9_-]{1,32}$")
    user_buckets: int = Field(
        64, ge=1, le=16384, description="hash-tag buckets for user state (cluster slots it spreads over)"
    )
    budget_shards: int = Field(
        16,
        ge=1,
        le=1024,
        description="hash-tag shards for budget state (charges, spend, stats, the ledger): enough that no "
        "node of a 3-master cluster holds much more than a third of it",
    )


class LakeSettings(_Section):
    url: str = Field("file://./var/lake", description="lake root: file:///path or s3://bucket/prefix")


class S3Settings(_Section):
    """Connection to S3 or an S3-compatible endpoint (for an ``s3://`` lake)."""

    endpoint_url: str | None = Field(None, description="e.g. http://127.0.0.1:9000; empty for AWS")
    access_key: str | None = None
    secret_key: SecretStr | None = None
    region: str = "us-east-1"


class SparkSettings(_Section):
    master: str = Field("local[2]", description="local[N], spark://…, k8s://…")
    shuffle_partitions: int = Field(8, ge=1)
    driver_memory: str = "4g"
    class_archive: str = Field(
        "auto",
        min_length=1,
        description="a class-data archive of Spark's classes the driver's JVM starts from (about half "
        "its start-up CPU): 'auto' (this environment's, recorded by `attribution batch class-archive`, "
        "when there is one), a path, or 'off'",
    )


class StoreSettings(_Section):
    url: str = Field("duckdb://", description="duckdb://[path], postgresql://…, druid://host:port")


class CatalogSettings(_Section):
    url: str = Field(
        "var/demo/catalog.yaml",
        description="a catalog file (YAML or JSON, a path or file://…) or cassandra://host[,host]:port/keyspace",
    )


class IvtOverride(_Section):
    """One campaign's invalid-traffic rules where they differ from the defaults
    (``ATTRIBUTION_RULES_IVT_OVERRIDES='{"c1": {"click_injection": "enforce", "injection_ms": 30000}}'``)."""

    bot_user_agent: Mode | None = None
    datacenter_ip: Mode | None = None
    click_injection: Mode | None = None
    injection_ms: int | None = Field(None, ge=0)
    click_flooding: Mode | None = None
    flood_clicks: int | None = Field(None, ge=0)
    flood_window_ms: int | None = Field(None, gt=0)
    hyper_engagement: Mode | None = None


class RulesSettings(_Section):
    """Rules both layers apply: time and invalid traffic (they must agree, so they live in one
    section). The invalid-traffic rules and their anchors are in ``shared_logic.ivt`` and the
    README ("Invalid traffic")."""

    allowed_lateness_ms: int = Field(DEFAULT_ALLOWED_LATENESS_MS, ge=0)
    default_click_window_ms: int = Field(
        DEFAULT_CLICK_WINDOW_MS,
        gt=0,
        description="how long before an order a click counts, for a campaign whose record has no windows",
    )
    default_view_window_ms: int = Field(
        DEFAULT_VIEW_WINDOW_MS,
        gt=0,
        description="how long before an order a view counts, for a campaign whose record has no windows",
    )
    max_future_ms: int = Field(
        DEFAULT_MAX_FUTURE_MS, ge=0, description="an event dated further ahead of its clock is a dead letter"
    )
    cancel_horizon_days: int = Field(
        DEFAULT_CANCEL_HORIZON_DAYS,
        ge=0,
        description="a cancel refunds its order when dated up to this many days after the order's "
        "day; later it counts for nothing (so a day's figures are final once its horizon has landed)",
    )

    ivt_bot_user_agent: Mode = Field(
        Mode.ENFORCE, description="touches whose user_agent is a known crawler (crawler-user-agents)"
    )
    ivt_datacenter_ip: Mode = Field(
        Mode.ENFORCE, description="touches whose ip is in a range of ivt_datacenter_ranges"
    )
    ivt_datacenter_ranges: str | None = Field(
        None, description="a file of data-centre IP ranges, one CIDR a line (# comments); none: no ranges"
    )
    ivt_click_injection: Mode = Field(
        Mode.REPORT, description="clicks less than ivt_injection_ms before the order"
    )
    ivt_injection_ms: int = Field(DEFAULT_INJECTION_MS, ge=0)
    ivt_click_flooding: Mode = Field(
        Mode.REPORT,
        description="clicks in a rolling ivt_flood_window_ms holding more than ivt_flood_clicks "
        "of the user's clicks on one campaign",
    )
    ivt_flood_clicks: int = Field(DEFAULT_FLOOD_CLICKS, ge=0)
    ivt_flood_window_ms: int = Field(DEFAULT_FLOOD_WINDOW_MS, gt=0)
    ivt_hyper_engagement: Mode = Field(
        Mode.REPORT,
        description="clicks in a rolling ivt_engagement_window_ms holding more than "
        "ivt_engagement_clicks of the user's clicks on any campaign",
    )
    ivt_engagement_clicks: int = Field(DEFAULT_ENGAGEMENT_CLICKS, ge=0)
    ivt_engagement_window_ms: int = Field(DEFAULT_ENGAGEMENT_WINDOW_MS, gt=0)
    ivt_overrides: dict[str, IvtOverride] = Field(
        default_factory=dict, description="per campaign id, rules that differ from the defaults (JSON)"
    )

    ivt_shape: Literal["off", "report"] = Field(
        "report",
        description="the nightly job's whole-day report of each campaign's click-to-order delays "
        "(ivt_shape/): a report only, never enforced",
    )
    ivt_shape_min_orders: int = Field(DEFAULT_SHAPE_MIN_ORDERS, ge=1)
    ivt_shape_spike_share: float = Field(DEFAULT_SPIKE_SHARE, ge=0, le=1)
    ivt_shape_flat_share: float = Field(DEFAULT_FLAT_SHARE, ge=0, le=1)
    ivt_shape_flat_hour_share: float = Field(DEFAULT_FLAT_HOUR_SHARE, ge=0, le=1)

    def shape_rules(self) -> ShapeRules | None:
        """The delay report's thresholds, or None when the report is off."""
        if self.ivt_shape == "off":
            return None
        return ShapeRules(
            self.ivt_shape_min_orders,
            self.ivt_shape_spike_share,
            self.ivt_shape_flat_share,
            self.ivt_shape_flat_hour_share,
        )

    def ivt_policy(self) -> IvtPolicy:
        """The invalid-traffic rules these settings describe."""
        defaults = IvtRules(
            bot_user_agent=self.ivt_bot_user_agent,
            datacenter_ip=self.ivt_datacenter_ip,
            click_injection=self.ivt_click_injection,
            injection_ms=self.ivt_injection_ms,
            click_flooding=self.ivt_click_flooding,
            flood_clicks=self.ivt_flood_clicks,
            flood_window_ms=self.ivt_flood_window_ms,
            hyper_engagement=self.ivt_hyper_engagement,
            engagement_clicks=self.ivt_engagement_clicks,
            engagement_window_ms=self.ivt_engagement_window_ms,
        )
        overrides = {
            cid: replace(defaults, **{k: v for k, v in o.model_dump().items() if v is not None})
            for cid, o in self.ivt_overrides.items()
        }
        return IvtPolicy(defaults, MappingProxyType(overrides))

    def policy(self) -> AttributionPolicy:
        """The rules' policy these settings describe (what both layers decide and settle with)."""
        return AttributionPolicy(
            default_windows=Windows(
                click_ms=self.default_click_window_ms, view_ms=self.default_view_window_ms
            ),
            allowed_lateness_ms=self.allowed_lateness_ms,
            cancel_horizon_days=self.cancel_horizon_days,
            ivt=self.ivt_policy(),
        )


RateRole = Literal["admin", "advertiser", "ad_server", "anonymous"]


class ApiSettings(_Section):
    """The HTTP API: where it listens, its keys, and the limits it puts on every caller.

    Rate limits are token buckets (GCRA) kept in the speed layer's Redis, so every API process
    shares them: a key of a role gets ``rate_<role>_per_s`` requests a second on average and up
    to ``rate_<role>_burst`` at once; requests without a valid key share one bucket per client
    address (``anonymous``)."""

    keys_path: str = Field("var/demo/api-keys.yaml", description="file of hashed API keys")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    docs_public: bool = Field(
        False, description="serve /docs, /redoc and /openapi.json without a key (default: a key is needed)"
    )
    metrics_public: bool = Field(
        False, description="serve /metrics without a key (default: an admin key is needed)"
    )
    rate_limit: bool = Field(True, description="apply the per-key and per-address rate limits")
    rate_admin_per_s: float = Field(20.0, gt=0, description="requests a second an admin key may average")
    rate_admin_burst: int = Field(60, ge=1, description="requests an admin key may send at once")
    rate_advertiser_per_s: float = Field(5.0, gt=0, description="requests a second per advertiser key")
    rate_advertiser_burst: int = Field(20, ge=1, description="burst per advertiser key")
    rate_ad_server_per_s: float = Field(500.0, gt=0, description="requests a second per ad-server key")
    rate_ad_server_burst: int = Field(1_000, ge=1, description="burst per ad-server key")
    rate_anonymous_per_s: float = Field(
        1.0, gt=0, description="requests a second per client address without a valid key"
    )
    rate_anonymous_burst: int = Field(10, ge=1, description="burst per client address without a valid key")
    rate_limit_fail_open: bool = Field(
        True,
        description="when Redis cannot answer the limiter, serve the request (true) or answer 503 (false)",
    )
    rate_limit_timeout_ms: int = Field(
        250, ge=1, le=10_000, description="longest wait for the limiter's Redis before it counts as down"
    )
    roas_max_cost: int = Field(
        5_000,
        ge=1,
        description="most (days x campaigns) one ROAS request may ask for; more answers 422",
    )
    max_url_bytes: int = Field(
        32_768, ge=256, description="longest path plus query string; longer answers 414"
    )
    max_header_bytes: int = Field(
        8_192, ge=1_024, description="largest request header block; larger answers 431"
    )
    max_body_bytes: int = Field(
        0, ge=0, description="largest request body (all routes are GETs: none by default); larger answers 413"
    )

    def rate(self, role: RateRole) -> tuple[float, int]:
        """``(requests a second, burst)`` for a role, or ``anonymous`` for callers without a valid key."""
        per_s: float = getattr(self, f"rate_{role}_per_s")
        burst: int = getattr(self, f"rate_{role}_burst")
        return per_s, burst


class BatchSettings(_Section):
    """What the nightly job runs and how far it looks."""

    models: tuple[str, ...] = MODEL_NAMES
    channel_key: Literal["campaign", "lever", "placement"] = Field(
        "campaign", description="what a touch's channel is for the multi-touch models"
    )
    markov_order: int = Field(1, ge=1, le=4)
    time_decay_half_life_ms: int = Field(7 * MS_PER_DAY, gt=0)
    refresh_days: int | None = Field(
        None,
        ge=0,
        description="the nightly run for D also recomputes this many days before D, oldest first, so "
        "cancels landed since reach their order's day; default: rules.cancel_horizon_days",
    )
    history_start: str | None = Field(
        None,
        description="first day settled for budget caps (YYYY-MM-DD); default: the first day of raw orders",
    )
    raw_wait_poke_s: int = Field(
        300, ge=1, description="how often the nightly DAG's sensor looks for D's landing marker (s)"
    )
    raw_wait_timeout_s: int = Field(
        6 * 3600, ge=1, description="how long the nightly DAG waits for D's landing marker before failing (s)"
    )

    @field_validator("models")
    @classmethod
    def _known_models(cls, models: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [m for m in models if m not in MODEL_NAMES]
        if unknown:
            raise ValueError(f"{unknown!r}: must be among {', '.join(MODEL_NAMES)}")
        return models


class RealtimeSettings(_Section):
    """Where the worker reads and how it batches."""

    broker_url: str = Field(
        "memory://", description="kafka://host:port[;host:port] for Kafka, memory:// for in-memory channels"
    )
    app_id: str = "attribution"
    topic_prefix: str = "attribution"
    topic_partitions: int = Field(12, ge=1)
    dead_letters_url: str | None = Field(
        None,
        description="memory://, redis:// (the speed layer's Redis) or kafka:// (the broker's dead-letter "
        "topic); default: beside the input",
    )
    dead_letter_maxlen: int = Field(
        100_000, ge=1, description="entries of the Redis dead-letter stream, at most"
    )
    dead_letter_max_mib: int = Field(
        256, ge=1, description="memory of the Redis dead-letter stream, at most (entries are cut to 4 KiB)"
    )
    session_timeout_ms: int = Field(10_000, ge=1_000, description="consumer group session timeout")
    heartbeat_interval_ms: int = Field(3_000, ge=100, description="consumer group heartbeat")
    batch_size: int = Field(4_000, ge=1, description="events taken from the stream per batch")
    batch_within_s: float = Field(0.05, gt=0, description="longest wait to fill a batch")
    decision_ttl_ms: int | None = Field(
        None,
        gt=0,
        description="how long claims, cancel markers, charges, budget-day spend and day stats are kept "
        "after their last write; default: what refunds need, (rules.cancel_horizon_days + 1) days + "
        "rules.allowed_lateness_ms, plus realtime.state_slack_ms",
    )
    state_slack_ms: int = Field(
        MS_PER_DAY,
        ge=0,
        description="kept past the rule's need (the derived decision TTL): how far a worker may fall "
        "behind (an outage, a backlog) and still refund a cancel inside the horizon",
    )
    counts_ttl_ms: int = Field(10 * MS_PER_DAY, gt=0)
    touch_retention: Literal["per_kind", "longest"] = Field(
        "per_kind",
        description="how long touches are kept: 'per_kind' each kind (view, click) for the longest window "
        "of that kind among the catalog's campaigns plus the allowed lateness; 'longest' every kind for "
        "the longest window of any kind (the earlier layout: views kept as long as clicks)",
    )
    budget_events_maxlen: int = Field(100_000, ge=1)
    memory_sample_interval_s: float = Field(
        60.0,
        ge=0,
        description="how often a worker samples Redis memory by record kind for /metrics; 0: never",
    )
    memory_sample_keys: int = Field(
        1_000, ge=1, description="random keys measured per Redis node at each sample"
    )
    timer_interval_s: float = Field(
        1.0, gt=0, description="live mode: how often the clock moves idle partitions"
    )

    release: Literal["group", "partition"] = Field(
        "group",
        description="when an order is decided: 'group' once every partition of every input topic (all "
        "workers') has passed its release time, whatever partitioner or key each producer uses; "
        "'partition' on the worker's own partitions alone, a little sooner, correct only when every "
        "producer keys by user_id with Kafka's default (murmur2) partitioner",
    )
    undecodable: Literal["dead-letter", "stop"] = Field(
        "dead-letter",
        description="a record batch the consumer cannot decode (corrupt, unknown codec): 'dead-letter' "
        "its offset range and go on, or 'stop' consuming that partition until an operator acts",
    )

    ledger_flush_interval_s: float = Field(
        60.0, ge=0, description="how often a Kafka worker moves the ledger streams to the lake (0: never)"
    )
    metrics_host: str = Field("127.0.0.1", description="the worker's /metrics listens here")
    metrics_port: int = Field(0, ge=0, le=65535, description="serve Prometheus /metrics here (0: off)")

    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT",
        description="how every Kafka client reaches the broker: in the clear, over TLS (SSL), with SASL "
        "credentials (SASL_PLAINTEXT) or both (SASL_SSL, what managed Kafkas ask for)",
    )
    ssl_cafile: str | None = Field(
        None, description="PEM file of the CAs that sign the broker's certificate; default: the system's"
    )
    ssl_certfile: str | None = Field(
        None, description="PEM client certificate, for brokers that ask for one (mutual TLS)"
    )
    ssl_keyfile: str | None = Field(
        None, description="PEM private key of ssl_certfile (default: the key is in ssl_certfile)"
    )
    ssl_check_hostname: bool = Field(
        True, description="check that the broker's certificate names the host of broker_url"
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism; needed by SASL_PLAINTEXT and SASL_SSL"
    )
    sasl_username: str | None = Field(None, description="SASL user; needed by SASL_PLAINTEXT and SASL_SSL")
    sasl_password: SecretStr | None = Field(
        None, description="SASL password; needed by SASL_PLAINTEXT and SASL_SSL; never shown"
    )

    @model_validator(mode="after")
    def _security_settings_agree(self) -> Self:
        """Refuse security settings that cannot work together, each error at the field to change.

        Raised as a ``ValidationError`` of this section (pydantic places its errors under the
        section), so an error names the variable and shows that field's value, never the whole
        section's input as a plain ``ValueError`` here would (it would show the password)."""
        problems = self._security_problems()
        if problems:
            raise ValidationError.from_exception_data(
                type(self).__name__,
                [
                    {
                        "type": "value_error",
                        "loc": (name,),
                        "input": shown,
                        "ctx": {"error": ValueError(rule)},
                    }
                    for name, shown, rule in problems
                ],
            )
        return self

    def _security_problems(self) -> list[tuple[str, Any, str]]:
        """``(field, value to show, rule)`` for every security setting that cannot work: a file
        that is not there, a setting the protocol needs and lacks, or one it would ignore."""
        protocol = self.security_protocol
        out: list[tuple[str, Any, str]] = []
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            path = getattr(self, name)
            if path is None:
                continue
            if protocol not in ("SSL", "SASL_SSL"):
                out.append(
                    (name, path, f"security_protocol {protocol} uses no TLS: set it to SSL or SASL_SSL")
                )
            elif not Path(path).is_file():
                out.append((name, path, "no such file"))
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            out.append(
                ("ssl_keyfile", self.ssl_keyfile, "a client key needs its certificate: set ssl_certfile")
            )
        if protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
            if self.sasl_mechanism is None:
                out.append(
                    ("sasl_mechanism", None, f"{protocol} needs PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
                )
            if not self.sasl_username:
                out.append(("sasl_username", self.sasl_username, f"{protocol} needs a SASL user"))
            if self.sasl_password is None or not self.sasl_password.get_secret_value():
                out.append(("sasl_password", None, f"{protocol} needs the SASL user's password"))
        else:
            rule = f"security_protocol {protocol} sends no credentials: set it to SASL_PLAINTEXT or SASL_SSL"
            if self.sasl_mechanism is not None:
                out.append(("sasl_mechanism", self.sasl_mechanism, rule))
            if self.sasl_username is not None:
                out.append(("sasl_username", self.sasl_username, rule))
            if self.sasl_password is not None:
                out.append(("sasl_password", "<hidden>", rule))
        return out

    def topic(self, event_type: str) -> str:
        return f"{self.topic_prefix}.{event_type}"


class SinkSettings(_Section):
    """The lake sink: a consumer group of its own that lands raw events in the lake."""

    group_suffix: str = Field("lake-sink", description="its group is <realtime.app_id>-<group_suffix>")
    roll_records: int = Field(
        200_000,
        ge=1,
        description="the sink's buffers (every partition it holds) are written at this many records",
    )
    roll_mib: int = Field(64, ge=1, description="... or at this many MiB (what bounds its memory)")
    roll_age_s: float = Field(
        300.0, gt=0, description="... or when its oldest record waited this long (so a quiet hour lands)"
    )
    backlog_age_s: float = Field(
        60.0,
        gt=0,
        description="on a backlog (records on the broker past the buffer) the age that rolls instead of "
        "roll_age_s, if larger: a backlog lands in few large files, at the size limits",
    )
    marker_interval_s: float = Field(5.0, gt=0, description="how often hourly landing markers are checked")
    metrics_host: str = Field("127.0.0.1", description="the sink's /metrics listens here")
    metrics_port: int = Field(0, ge=0, le=65535, description="serve Prometheus /metrics here (0: off)")


class PacingSettings(_Section):
    """The pacing controller (``shared_logic.pacing``): how the speed layer runs it, what the ad
    server's answer assumes before it has run."""

    interval_ms: int = Field(60_000, ge=1_000, description="event time between two controller steps")
    max_step: float = Field(0.10, gt=0, lt=1, description="largest relative change of p in one step")
    start_probability: float = Field(
        0.10, gt=0, le=1, description="p at a capped campaign's first step of a budget day (cautious)"
    )
    min_probability: float = Field(
        0.001, gt=0, le=1, description="p never falls below this while a cap is open"
    )
    estimate_half_life_ms: int = Field(
        30 * 60_000, gt=0, description="half-life of the full-serving spend estimate's history"
    )
    spend_out_margin_ms: int = Field(
        3_600_000, ge=0, description="the target curve reaches the cap this long before the day ends"
    )
    track_horizon_ms: int = Field(
        3_600_000,
        ge=0,
        description="the controller aims the spend at the target curve this far ahead (0: only at spend-out)",
    )
    prior_conversion_rate: float = Field(
        0.01, ge=0, le=1, description="orders per touch assumed for a campaign with little history"
    )
    prior_touches: float = Field(500.0, ge=0, description="weight of the prior rate, in touches")
    mean_delay_ms: int = Field(
        40 * 60_000, gt=0, description="mean delay from a touch to its order (the liability's decay)"
    )
    long_delay_share: float = Field(
        0.0, ge=0, le=1, description="share of orders that come days later, spread evenly over long_delay_ms"
    )
    long_delay_ms: int = Field(
        2 * MS_PER_DAY, gt=0, description="the span of the late orders' delays (long_delay_share)"
    )
    touch_group_ms: int = Field(
        600_000,
        ge=60_000,
        description="served touches are counted per group of this length for the liability",
    )

    @model_validator(mode="after")
    def _start_above_floor(self) -> Self:
        if self.min_probability > self.start_probability:
            raise ValueError(
                f"min_probability = {self.min_probability}: must not exceed start_probability = "
                f"{self.start_probability}"
            )
        return self

    def config(self) -> PacingConfig:
        return PacingConfig(
            self.max_step,
            self.start_probability,
            self.min_probability,
            self.estimate_half_life_ms,
            self.spend_out_margin_ms,
            self.track_horizon_ms,
        )


_SECTIONS = (
    "redis",
    "keys",
    "lake",
    "s3",
    "spark",
    "store",
    "catalog",
    "rules",
    "api",
    "batch",
    "realtime",
    "sink",
    "pacing",
)


PREFIX = "ATTRIBUTION_"


class _StrictEnv(EnvSettingsSource):
    """The environment source, refusing an ``ATTRIBUTION_*`` variable of no section (a typo, an old name).

    Unknown fields of a known section are refused by the section itself (``extra="forbid"``).
    """

    def __call__(self) -> dict[str, Any]:
        for name in self.env_vars:
            upper = name.upper()
            if upper.startswith(PREFIX) and upper[len(PREFIX) :].split("_", 1)[0].lower() not in _SECTIONS:
                raise InvalidSetting(
                    upper,
                    "<hidden>",  # values may be secrets: never echo them
                    f"is not a setting: names are {PREFIX}<SECTION>_<NAME>, "
                    f"sections {', '.join(s.upper() for s in _SECTIONS)}",
                )
        return super().__call__()


class Settings(BaseSettings):
    """The whole tree; each service reads the sections it needs."""

    model_config = SettingsConfigDict(
        env_prefix=PREFIX,
        env_nested_delimiter="_",
        env_nested_max_split=1,
        frozen=True,
        extra="forbid",
    )

    redis: RedisSettings = RedisSettings()
    keys: KeySettings = KeySettings()
    lake: LakeSettings = LakeSettings()
    s3: S3Settings = S3Settings()
    spark: SparkSettings = SparkSettings()
    store: StoreSettings = StoreSettings()
    catalog: CatalogSettings = CatalogSettings()
    rules: RulesSettings = RulesSettings()
    api: ApiSettings = ApiSettings()
    batch: BatchSettings = BatchSettings()
    realtime: RealtimeSettings = RealtimeSettings()
    sink: SinkSettings = SinkSettings()
    pacing: PacingSettings = PacingSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, _StrictEnv(settings_cls), file_secret_settings)

    @property
    def decision_ttl_needed_ms(self) -> int:
        """How long after its order's release a claim or charge is needed: a cancel counts until the
        end of the horizon's last day (``cancel_window``) and is released its lateness later."""
        return (self.rules.cancel_horizon_days + 1) * MS_PER_DAY + self.rules.allowed_lateness_ms

    @property
    def decision_ttl_ms(self) -> int:
        """``realtime.decision_ttl_ms``, or by default what refunds need plus the slack."""
        given = self.realtime.decision_ttl_ms
        return given if given is not None else self.decision_ttl_needed_ms + self.realtime.state_slack_ms

    @model_validator(mode="after")
    def _charges_outlive_their_cancels(self) -> Self:
        need = self.decision_ttl_needed_ms
        if self.realtime.decision_ttl_ms is not None and self.realtime.decision_ttl_ms < need:
            raise ValueError(
                f"realtime.decision_ttl_ms = {self.realtime.decision_ttl_ms}: must be at least {need} "
                f"(rules.cancel_horizon_days = {self.rules.cancel_horizon_days} days, plus one, plus the "
                "allowed lateness), or a cancel inside the horizon would find no charge to refund"
            )
        return self

    @property
    def nightly_refresh_days(self) -> int:
        """How many days before D the nightly run recomputes (``batch.refresh_days``, or the cancel
        horizon)."""
        return self.rules.cancel_horizon_days if self.batch.refresh_days is None else self.batch.refresh_days

    def replace(self, **changes: Any) -> Self:
        """A copy with values changed, named like the environment without its prefix:
        ``settings.replace(redis_url="redis://…", keys_user_buckets=16)``. ``None`` changes nothing."""
        sections: dict[str, dict[str, Any]] = {}
        for name, value in changes.items():
            if value is None:
                continue
            section, _, field = name.partition("_")
            if section not in _SECTIONS or not field:
                raise KeyError(
                    f"{name!r}: settings are named <section>_<field>, sections {', '.join(_SECTIONS)}"
                )
            sections.setdefault(section, {})[field] = value
        data = self.model_dump()  # python mode: secrets stay SecretStr, not masked text
        for section, values in sections.items():
            data[section] = {**data[section], **values}
        return type(self).model_validate(data)


def load_settings(**changes: Any) -> Settings:
    """The tree from the environment (and ``changes``), with a bad value reported as
    ``InvalidSetting`` naming the variable: what entry points call."""
    try:
        return Settings().replace(**changes)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        name = PREFIX + ("_".join(str(p) for p in err["loc"]).upper() if err["loc"] else "*")
        # A whole-tree or whole-section rule (no field in its location, or a dict as its input)
        # would echo every value of it, secrets included: its message names the values it needs.
        given = err.get("input")
        secret = (given is not None and any(w in name.lower() for w in ("secret", "password"))) or isinstance(
            given, dict
        )
        value = "<hidden>" if secret else given
        rule = str(err["ctx"]["error"]) if err["type"] == "value_error" and "ctx" in err else err["msg"]
        raise InvalidSetting(name, value, rule) from None
