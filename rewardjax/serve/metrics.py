"""Prometheus metrics of the reward server (``GET /metrics``).

Each server owns its registry, so several apps in one process (tests) never share counters.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
FILL_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


class ServeMetrics:
    """Requests by endpoint and status, latency, batch fill, queue depth, rejections and
    truncated texts."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("rewardjax_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=r)
        self.latency = Histogram("rewardjax_request_latency_seconds",
                                 "Time from a request's arrival to its response", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.items = Counter("rewardjax_items_scored", "Texts scored", registry=r)
        self.batches = Counter("rewardjax_batches", "Forward batches run, by bucket length",
                               ["bucket"], registry=r)
        self.fill = Histogram("rewardjax_batch_fill",
                              "Real rows / compiled rows of each forward batch",
                              buckets=FILL_BUCKETS, registry=r)
        self.batch_seconds = Histogram("rewardjax_batch_seconds", "Scoring time of one batch",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("rewardjax_queue_depth", "Texts waiting to be scored",
                                 registry=r)
        self.rejected = Counter("rewardjax_rejected_requests",
                                "Requests refused, by reason (queue_full, bad_request, "
                                "too_large, unauthorized, cancelled)", ["reason"], registry=r)
        self.truncated = Counter("rewardjax_truncated_texts",
                                 "Texts over model.max_length, cut by the training truncation "
                                 "policy (data.truncation), by the part cut", ["part"],
                                 registry=r)
        self.compiled_shapes = Gauge("rewardjax_compiled_shapes",
                                     "Batch shapes compiled at warm-up", registry=r)

    def observe_batch(self, bucket: int, real: int, rows: int, seconds: float) -> None:
        self.batches.labels(bucket=str(bucket)).inc()
        self.fill.observe(real / rows)
        self.batch_seconds.observe(seconds)
        self.items.inc(real)

    def render(self) -> bytes:
        return generate_latest(self.registry)
