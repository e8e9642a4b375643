"""Prometheus metrics for the service, on their own registry (no process-global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from ingestor.records import FileCounts

_LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


class Metrics:
    """Everything ``/metrics`` shows; every series is labelled by company."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.records_sent = Counter(
            "ingestor_records_sent", "Records the API accepted", ["company"], registry=r
        )
        self.records_skipped = Counter(
            "ingestor_records_skipped",
            "Records skipped (bad rows and records the API refused)",
            ["company"],
            registry=r,
        )
        self.requests = Counter(
            "ingestor_requests",
            "API requests by HTTP status (0: no answer: timeout or connection failure)",
            ["company", "status"],
            registry=r,
        )
        self.throttled = Counter(
            "ingestor_throttled", "429 answers received", ["company"], registry=r
        )
        self.retries = Counter(
            "ingestor_retries",
            "Requests retried after a transient failure",
            ["company"],
            registry=r,
        )
        self.files = Counter(
            "ingestor_files", "Files finished, by final state", ["company", "state"], registry=r
        )
        self.queue_depth = Gauge(
            "ingestor_queue_depth",
            "Ready files waiting in the company's lane",
            ["company"],
            registry=r,
        )
        self.blocked = Gauge(
            "ingestor_lane_blocked",
            "1 while the company's lane holds its queue (key refused, state dir unwritable)",
            ["company"],
            registry=r,
        )
        self.throttled_for = Gauge(
            "ingestor_lane_throttled_seconds",
            "Seconds the API's rate limit (Retry-After, RateLimit-Reset) still holds the company",
            ["company"],
            registry=r,
        )
        self.file_lag = Histogram(
            "ingestor_file_lag_seconds",
            "From a file being ready to its lane starting it",
            ["company"],
            buckets=_LAG_BUCKETS,
            registry=r,
        )

    def request(self, company: str, status: int) -> None:
        self.requests.labels(company, str(status)).inc()
        if status == 429:
            self.throttled.labels(company).inc()

    def progress(self, company: str, delta: FileCounts) -> None:
        if delta.sent:
            self.records_sent.labels(company).inc(delta.sent)
        if delta.skipped:
            self.records_skipped.labels(company).inc(delta.skipped)
        if delta.retries:
            self.retries.labels(company).inc(delta.retries)

    def serve(self, host: str, port: int) -> None:
        """Serve ``/metrics`` on a loopback port from a daemon thread."""
        start_http_server(port, addr=host, registry=self.registry)
