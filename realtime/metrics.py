"""Every metric of the speed layer, defined once (Prometheus client)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """The speed layer's counters, on their own registry so workers and tests don't collide."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events = Counter("attribution_events_total", "Events accepted, by type", ["type"], registry=r)
        self.dead_letters = Counter(
            "attribution_dead_letters_total",
            "Events sent to the dead-letter sink, by field",
            ["field"],
            registry=r,
        )
        self.duplicates = Counter(
            "attribution_duplicates_total", "Redelivered events that changed nothing", ["type"], registry=r
        )
        self.decisions = Counter(
            "attribution_decisions_total", "Orders decided, by outcome", ["outcome"], registry=r
        )
        self.cancels_outside = Counter(
            "attribution_cancels_outside_horizon_total",
            "Cancels dated outside their order's cancel window (rules.cancel_horizon_days): no refund",
            registry=r,
        )
        self.charges = Counter("attribution_charges_total", "Charges settled, by kind", ["kind"], registry=r)
        self.charged_minor = Counter(
            "attribution_charged_minor_total", "Money charged, minor units (all currencies)", registry=r
        )
        self.latency = Histogram(
            "attribution_decision_seconds",
            "From an order's release to its charge being recorded",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=r,
        )
        self.watermark = Gauge("attribution_watermark_ms", "Event-time watermark of this worker", registry=r)
        self.settle_bound = Gauge(
            "attribution_settlement_bound_ms",
            "Release time below which the budget shards are settled (the minimum over all partitions)",
            registry=r,
        )
        self.partition_watermark = Gauge(
            "attribution_partition_watermark_ms",
            "Event-time watermark of an assigned partition",
            ["topic", "partition"],
            registry=r,
        )
        self.lag = Gauge(
            "attribution_consumer_lag",
            "Records of an assigned partition not processed yet",
            ["topic", "partition"],
            registry=r,
        )
        self.misrouted = Counter(
            "attribution_misrouted_total",
            "Events in another partition than Kafka's default partitioner puts their user_id in "
            "(a producer with another partitioner or key; decided correctly under realtime.release=group)",
            ["topic"],
            registry=r,
        )
        self.undecodable = Counter(
            "attribution_undecodable_batches_total",
            "Record batches the consumer could not decode (corrupt, unknown codec), by topic",
            ["topic"],
            registry=r,
        )
        self.log_lost = Counter(
            "attribution_partition_log_lost_total",
            "Assignments whose checkpoint was past the partition's log end (the broker lost records "
            "this engine had applied, or the topic was recreated): resumed at the log start",
            ["topic", "partition"],
            registry=r,
        )
        self.pending = Gauge("attribution_pending_actions", "Orders and cancels waiting", registry=r)
        self.too_late = Counter(
            "attribution_too_late_touches_total",
            "Touches that arrived too far behind their partition's watermark to earn any order",
            registry=r,
        )
        self.refused = Counter(
            "attribution_refused_charges_total",
            "Settlements refused because a counter would pass 2^53 - 1",
            registry=r,
        )
        self.ivt_verdicts = Counter(
            "attribution_ivt_verdicts_total",
            "Invalid-traffic verdicts: touches flagged at admission (scope touch) and orders whose "
            "would-be winner was flagged (scope order), by campaign, reason and outcome",
            ["scope", "campaign_id", "reason", "outcome"],
            registry=r,
        )
        self.ivt_avoided_minor = Counter(
            "attribution_ivt_avoided_minor_total",
            "Charges (minor units, before caps) kept from touches the invalid-traffic rules enforced on",
            ["campaign_id", "currency"],
            registry=r,
        )

        self.ledger_flushed = Counter(
            "attribution_ledger_flushed_total", "Ledger entries this worker moved to the lake", registry=r
        )
        self.ledger_flush_at = Gauge(
            "attribution_ledger_flush_timestamp_seconds",
            "When this worker's last ledger flush to the lake ended (Unix time)",
            registry=r,
        )
        self.redis_keys = Gauge(
            "attribution_redis_keys",
            "Keys of the speed layer in Redis by record kind (estimated from a sample: realtime.footprint)",
            ["kind"],
            registry=r,
        )
        self.redis_memory = Gauge(
            "attribution_redis_memory_bytes",
            "Redis memory of the speed layer's keys by record kind (MEMORY USAGE of a sample, scaled)",
            ["kind"],
            registry=r,
        )
        self.ledger_flush_errors = Counter(
            "attribution_ledger_flush_errors_total", "Ledger flushes that failed (retried later)", registry=r
        )

    def value(self, name: str, **labels: str) -> float:
        """Current value of a sample (0 when it has not moved)."""
        return self.registry.get_sample_value(name, labels) or 0.0
