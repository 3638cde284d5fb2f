"""Every metric of the HTTP API, defined once (Prometheus client), served at ``/metrics``."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shared_logic.contract import IvtSummary


class ApiMetrics:
    """The API's counters, on their own registry so several apps (and tests) in one process don't collide.

    ``route`` is the route's template (``/v1/roas``), ``unmatched`` for a path no route serves,
    so a scan of random paths cannot grow the label set.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "attribution_api_requests_total",
            "Requests answered, by method, route template and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "attribution_api_request_duration_seconds",
            "From a request's arrival to the start of its answer, by method, route template and status",
            ["method", "route", "status"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=r,
        )
        self.rate_limited = Counter(
            "attribution_api_rate_limited_total",
            "Requests refused with 429, by role (anonymous: no valid key, counted per address)",
            ["role"],
            registry=r,
        )
        self.rate_limit_errors = Counter(
            "attribution_api_rate_limit_errors_total",
            "Rate-limit checks that could not read or write their state in Redis",
            registry=r,
        )

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


#: The invalid-traffic gauges of ``/metrics``: (name suffix, ``IvtSummary`` field, help).
IVT_GAUGES = (
    ("touches", "touches", "Invalid-traffic verdicts on the campaign's touches"),
    ("orders_changed", "orders_changed", "Orders whose winner an enforced verdict changed"),
    ("orders_unattributed", "orders_unattributed", "Orders an enforced verdict left without a winner"),
    ("avoided_minor", "avoided_minor", "Charges kept from invalid touches, minor units before caps"),
)


class _IvtDays(Collector):
    def __init__(self, summaries: Sequence[IvtSummary]) -> None:
        self.summaries = summaries

    def collect(self) -> Iterator[Metric]:
        for suffix, name, doc in IVT_GAUGES:
            money = name == "avoided_minor"
            labels = ["dt", "campaign_id", "reason", *(["currency"] if money else [])]
            family = GaugeMetricFamily(
                f"attribution_ivt_day_{suffix}",
                f"{doc}, per UTC day (dt), campaign and reason: the speed layer's verdicts of the "
                "days after the batch view's last it still keeps (what /v1/roas's ivt_* sum)",
                labels=labels,
            )
            for s in self.summaries:
                values = [s.dt, s.campaign_id, s.reason, *([s.currency or ""] if money else [])]
                family.add_metric(values, getattr(s, name))
            yield family


def ivt_exposition(summaries: Iterable[IvtSummary]) -> bytes:
    """The ``attribution_ivt_day_*`` gauges of ``summaries`` in Prometheus text: read from Redis at
    each scrape (``reporting.routes.ops``), so they hold what the speed layer holds now."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_IvtDays(list(summaries)))
    return generate_latest(registry)
