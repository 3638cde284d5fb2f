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
        self.pending = Gauge("attribution_pending_actions", "Orders and cancels waiting", registry=r)

    def value(self, name: str, **labels: str) -> float:
        """Current value of a sample (0 when it has not moved)."""
        return self.registry.get_sample_value(name, labels) or 0.0
