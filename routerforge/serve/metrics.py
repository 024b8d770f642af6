"""Prometheus metrics of the proxy (prometheus_client, one registry per app so several apps can share a process).

    routerforge_serve_requests_total{endpoint, status}          HTTP requests answered
    routerforge_serve_routed_total{model, preset}               requests routed to each model (before fallback)
    routerforge_serve_routed_share{model}                       share of routed requests sent to each model
    routerforge_serve_routing_seconds                           queue + encoder + rule, per request
    routerforge_serve_encoder_batch_size / _encoder_batch_seconds   micro-batches sent to the encoder
    routerforge_serve_upstream_seconds{model}                   upstream time to the response (streams: to headers)
    routerforge_serve_upstream_errors_total{model, kind}        kind: timeout, http_5xx, connection, stream
    routerforge_serve_fallbacks_total{from_model, to_model}     requests retried on the other model
    routerforge_serve_in_flight                                 chat requests being served now
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

# Routing is milliseconds; upstream calls are up to minutes.
ROUTING_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
UPSTREAM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServeMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, models: tuple[str, ...]) -> None:
        self.registry = CollectorRegistry()
        p = "routerforge_serve_"
        r = self.registry
        self.requests = Counter(p + "requests", "HTTP requests answered", ["endpoint", "status"], registry=r)
        self.routed = Counter(p + "routed", "requests routed to each model", ["model", "preset"], registry=r)
        self.routed_share = Gauge(p + "routed_share", "share of routed requests sent to each model", ["model"],
                                  registry=r)
        self.routing_seconds = Histogram(p + "routing_seconds", "routing time per request (queue + encoder + rule)",
                                         buckets=ROUTING_BUCKETS, registry=r)
        self.batch_size = Histogram(p + "encoder_batch_size", "requests per encoder call", buckets=BATCH_BUCKETS,
                                    registry=r)
        self.batch_seconds = Histogram(p + "encoder_batch_seconds", "seconds per encoder call",
                                       buckets=ROUTING_BUCKETS, registry=r)
        self.upstream_seconds = Histogram(p + "upstream_seconds", "upstream time to the response (streams: headers)",
                                          ["model"], buckets=UPSTREAM_BUCKETS, registry=r)
        self.upstream_errors = Counter(p + "upstream_errors", "failed upstream calls", ["model", "kind"], registry=r)
        self.fallbacks = Counter(p + "fallbacks", "requests retried on the other model", ["from_model", "to_model"],
                                 registry=r)
        self.in_flight = Gauge(p + "in_flight", "chat requests being served now", registry=r)
        self._routed_counts = {model: 0 for model in models}
        for model in models:
            self.routed_share.labels(model=model).set(0.0)

    def observe_routed(self, model: str, preset: str) -> None:
        self.routed.labels(model=model, preset=preset).inc()
        self._routed_counts[model] = self._routed_counts.get(model, 0) + 1
        total = sum(self._routed_counts.values())
        for name, count in self._routed_counts.items():
            self.routed_share.labels(model=name).set(count / total)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
