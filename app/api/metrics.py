"""Prometheus metrics, one registry per app (so several apps can live in one process)."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "sketchreid_http_requests",
            "HTTP requests by method, route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "sketchreid_http_request_duration_seconds",
            "HTTP request latency by route template",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.stages = Histogram(
            "sketchreid_stage_duration_seconds",
            "Latency of processing stages (decode, translate, embed, search, rerank, ingest)",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.auth_lockouts = Counter(
            "sketchreid_auth_lockouts",
            "Client addresses locked out after too many failed API keys",
            registry=self.registry,
        )
        self.auth_refused = Counter(
            "sketchreid_auth_throttled_requests",
            "Requests refused (429, key unchecked) because their address was locked out",
            registry=self.registry,
        )
        self.gallery_size = Gauge(
            "sketchreid_index_items", "Items in the vector index", registry=self.registry
        )
        self.items_by_status = Gauge(
            "sketchreid_gallery_items",
            "Gallery items by ingestion status (pending, indexed, failed)",
            ["status"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "sketchreid_queue_depth",
            "Messages waiting in the ingestion queue (-1: the broker did not answer; "
            "cluster profile only)",
            registry=self.registry,
        )

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def observe_stages(self, timings_ms: Mapping[str, float], *, skip_zero: bool = True) -> None:
        for stage, ms in timings_ms.items():
            if skip_zero and ms <= 0:
                continue
            self.stages.labels(stage).observe(ms / 1000.0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
