"""This node's Prometheus metrics: what it received, forwarded and held, its queue, and where the
pipeline's time goes, so an operator of several nodes sees which one does what.

The counts are derived from the audit records, in one place (``observe``, which the node's trail
calls for every record it writes): the trail already records each reception, forward, hold and
retry exactly once, so the metrics cannot disagree with it and no code path needs a second call
to remember. The queue is read from the state store when Prometheus scrapes, and the pipeline's
seconds are timed by the worker around each stage. ``prometheus_client`` serves the text format.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from threading import Thread
from typing import Any
from wsgiref.simple_server import WSGIServer

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram, Info, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..config import parse_host_port
from .store import StateStore

log = structlog.get_logger("dicom_anon.service.metrics")

# From a header-only instance (milliseconds) to a new patient's face on CPU (seconds, some tens).
STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class MetricsError(Exception):
    """The metrics endpoint cannot be served (its address is in use, or not this machine's)."""


class Metrics:
    """The node's metrics in their own registry (several services in one test process do not mix)."""

    def __init__(self, node: str) -> None:
        self.registry = CollectorRegistry()
        Info("dicom_anon_node", "The node these metrics come from (node.id).", registry=self.registry).info(
            {"node": node}
        )
        r = self.registry
        self.received = Counter(
            "dicom_anon_instances_received", "Instances received and acknowledged.", registry=r
        )
        self.duplicates = Counter(
            "dicom_anon_instances_duplicate",
            "Instances received again (acknowledged, not queued twice).",
            registry=r,
        )
        self.refused = Counter(
            "dicom_anon_instances_refused",
            "C-STOREs answered with a failure, by reason.",
            ["code"],
            registry=r,
        )
        self.forwarded = Counter(
            "dicom_anon_instances_forwarded",
            "De-identified instances delivered.",
            ["destination"],
            registry=r,
        )
        self.held = Counter(
            "dicom_anon_instances_held",
            "Instances quarantined, by reason (quarantine code).",
            ["reason"],
            registry=r,
        )
        self.dropped = Counter("dicom_anon_instances_dropped", "Instances dropped by the rules.", registry=r)
        self.retries = Counter(
            "dicom_anon_destination_retries",
            "Deliveries that failed and wait to be tried again.",
            ["destination"],
            registry=r,
        )
        self.seconds = Histogram(
            "dicom_anon_pipeline_seconds",
            "Seconds per pipeline stage: job (a whole instance), headers, face.",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self._server: tuple[WSGIServer, Thread] | None = None

    def observe(self, event: str, fields: dict[str, Any]) -> None:
        """Count one audit record (the trail calls this for each record it has written)."""
        if event == "instance_received":
            self.received.inc()
        elif event == "instance_duplicate":
            self.duplicates.inc()
        elif event == "instance_refused":
            self.refused.labels(code=str(fields.get("code"))).inc()
        elif event == "instance_forwarded":
            self.forwarded.labels(destination=str(fields.get("destination"))).inc()
        elif event == "instance_quarantined":
            self.held.labels(reason=str(fields.get("code"))).inc()
        elif event == "instance_dropped":
            self.dropped.inc()
        elif event == "delivery_retry":
            self.retries.labels(destination=str(fields.get("destination"))).inc()

    def stage(self, name: str) -> AbstractContextManager[Any]:
        """Time a pipeline stage (``with metrics.stage("face"): ...``)."""
        return self.seconds.labels(stage=name).time()

    def watch_queue(self, store: StateStore) -> None:
        """Report the store's queue at every scrape."""
        self.registry.register(_QueueCollector(store))

    def serve(self, listen: str) -> None:
        """Serve the text format on ``listen`` (HOST:PORT) until ``close``."""
        host, port = parse_host_port(listen)
        try:
            self._server = start_http_server(port, host, self.registry)
        except OSError as exc:
            raise MetricsError(f"cannot serve metrics on {listen}: {exc.strerror or exc}") from None
        log.info("metrics served", listen=listen)

    def close(self) -> None:
        if self._server is not None:
            server, thread = self._server
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
            self._server = None


class _QueueCollector(Collector):
    def __init__(self, store: StateStore) -> None:
        self._store = store

    def collect(self) -> Iterator[Metric]:
        # A scrape that cannot read the store (busy, or closing) leaves the gauges out: Prometheus
        # marks them absent, which alerts can see, rather than the whole scrape failing.
        try:
            counts = self._store.counts()
            backlog = self._store.backlog()
        except Exception as exc:
            log.warning("queue figures unavailable for metrics", error=type(exc).__name__)
            return
        jobs = GaugeMetricFamily(
            "dicom_anon_queue_jobs",
            "Jobs in the queue: waiting for a worker, or being processed.",
            labels=["state"],
        )
        jobs.add_metric(["waiting"], counts.get("jobs.received", 0))
        jobs.add_metric(["processing"], counts.get("jobs.processing", 0))
        yield jobs
        pending = GaugeMetricFamily(
            "dicom_anon_deliveries_pending",
            "Deliveries waiting to be sent, per destination.",
            labels=["destination"],
        )
        for destination, figures in sorted(backlog.items()):
            pending.add_metric([destination], figures.get("pending") or 0)
        yield pending
