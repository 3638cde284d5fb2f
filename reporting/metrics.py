"""Every metric of the HTTP API, defined once (Prometheus client), served at ``/metrics``."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest


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
