"""What `GET /monitoring/prometheus/metrics` reports, in Prometheus' text format.

TF Serving's path; names follow Prometheus' conventions, labels TF Serving's
(`model_name`, `API`, `entrypoint`, `status`):

    trxsfr_serve_requests_total{model_name, API, entrypoint, status}   counter
        API: Predict, Classify, Regress, GetModelMetadata, GetModelStatus;
        entrypoint: REST or GRPC; status: the gRPC code name (OK, INVALID_ARGUMENT,
        NOT_FOUND, RESOURCE_EXHAUSTED, ...), also for REST answers
    trxsfr_serve_request_latency_seconds{model_name, API, entrypoint}  histogram
        from the request's arrival to its answer, successful requests only (as TF Serving)
    trxsfr_serve_batch_size{model_name}                                histogram
        images in each forward pass of the batcher
    trxsfr_serve_model_version_loaded{model_name, version}             gauge, 1 per version
    trxsfr_serve_model_latest_version{model_name}                      gauge

Each server has its own registry, so nothing else a process registers shows up here.
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

CONTENT_TYPE = CONTENT_TYPE_LATEST
# Seconds: a lone image takes milliseconds; a full batch under load, up to seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

REST = "REST"
GRPC = "GRPC"


class Outcome:
    """The status a request ended with; `Metrics.request` counts it when the block ends."""

    def __init__(self):
        self.status = "INTERNAL"  # an exception nobody classified

    def ok(self) -> None:
        self.status = "OK"


class Metrics:
    """Counters and histograms of one server, and its page."""

    def __init__(self, model_name: str, snapshot: Callable):
        """`snapshot()` gives the served versions (a `versions.Snapshot`) when scraped."""
        self.model_name = model_name
        # No `_created` series beside each counter and histogram: they double the page for a
        # start time the process already gives (process-wide; a server process is ours).
        disable_created_metrics()
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ["model_name", "API", "entrypoint"]
        self._requests = Counter(
            "trxsfr_serve_requests", "Requests answered, by API, entrypoint and status "
            "(the gRPC status code name, also for REST).", labels + ["status"],
            registry=self.registry)
        self._latency = Histogram(
            "trxsfr_serve_request_latency_seconds", "Time from a request's arrival to its "
            "answer, requests that succeeded.", labels, buckets=LATENCY_BUCKETS,
            registry=self.registry)
        self._batch = Histogram(
            "trxsfr_serve_batch_size", "Images in each forward pass of the batcher.",
            ["model_name"], buckets=BATCH_BUCKETS, registry=self.registry).labels(model_name)
        self.registry.register(_VersionsCollector(model_name, snapshot))

    @contextlib.contextmanager
    def request(self, api: str, entrypoint: str):
        """Count one request and time it if it succeeds: the block calls `outcome.ok()` or
        sets `outcome.status` to a gRPC code name."""
        outcome = Outcome()
        start = time.perf_counter()
        try:
            yield outcome
        finally:
            self._requests.labels(self.model_name, api, entrypoint, outcome.status).inc()
            if outcome.status == "OK":
                self._latency.labels(self.model_name, api, entrypoint).observe(
                    time.perf_counter() - start)

    def batch(self, images: int) -> None:
        self._batch.observe(images)

    def page(self) -> bytes:
        return generate_latest(self.registry)


class _VersionsCollector:
    """The loaded versions, read from the watcher's snapshot at each scrape (never stale)."""

    def __init__(self, model_name: str, snapshot: Callable):
        self.model_name = model_name
        self.snapshot = snapshot

    def describe(self):
        return []

    def collect(self):
        snap = self.snapshot()
        loaded = GaugeMetricFamily("trxsfr_serve_model_version_loaded",
                                   "1 for each model version loaded and served.",
                                   labels=["model_name", "version"])
        for version in sorted(snap.by_version):
            loaded.add_metric([self.model_name, str(version)], 1)
        yield loaded
        latest = GaugeMetricFamily("trxsfr_serve_model_latest_version",
                                   "The version requests without a version get.",
                                   labels=["model_name"])
        if snap.latest is not None:
            latest.add_metric([self.model_name], snap.latest.version)
        yield latest
