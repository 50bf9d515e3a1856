"""Prometheus metrics of one server: requests by endpoint, model and status, latency histograms, requests in
flight (the queue depth) and batch sizes. Each app has its own registry, so several apps (tests) never collide."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("genzoo_requests", "Requests answered", ["endpoint", "model", "status"],
                                registry=self.registry)
        self.latency = Histogram("genzoo_request_seconds", "Time to answer a request", ["endpoint", "model"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.in_flight = Gauge("genzoo_requests_in_flight", "Requests being answered or waiting for their model",
                               ["model"], registry=self.registry)
        self.batch_size = Histogram("genzoo_batch_size", "Examples (samples, sequences, scored inputs) per model call",
                                    ["endpoint", "model"], buckets=(1, 2, 4, 8, 16, 32, 64, 128),
                                    registry=self.registry)

    def exposition(self) -> tuple[bytes, str]:
        """The text format Prometheus scrapes, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
