"""Prometheus metrics for one gateway (`nestvec serve --metrics-port`).

Request counts and latency histograms per method and status code are recorded
by the gateway as calls finish. Shard figures (vectors, tombstones, WAL bytes,
restarts) are read from the shards when Prometheus scrapes, so they are never
stale and cost nothing between scrapes.
"""
from __future__ import annotations

import logging

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector,
                               start_http_server)
from prometheus_client.core import GaugeMetricFamily

log = logging.getLogger("nestvec.metrics")

_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30)
_ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
# DescribeCollection's index_state values (ann_shard.py), exported one-hot so a
# dashboard can count shards per state and an alert can name a failed build.
INDEX_STATES = ("none", "building", "ready", "stale", "failed")


class GatewayMetrics:
    def __init__(self, coordinator=None):
        self.registry = CollectorRegistry()
        self.requests = Counter("nestvec_requests", "gRPC calls finished, by method and status code",
                                ["method", "code"], registry=self.registry)
        self.latency = Histogram("nestvec_request_seconds", "gRPC call latency, by method and status code",
                                 ["method", "code"], buckets=_BUCKETS, registry=self.registry)
        self.in_flight = Gauge("nestvec_requests_in_flight", "calls being served now",
                               registry=self.registry)
        self.rejected = Counter("nestvec_requests_rejected",
                                "calls refused at once because the gateway was at its concurrency limit",
                                registry=self.registry)
        self.search_batches = Counter("nestvec_search_batches",
                                      "stacked shard calls made from concurrent searches",
                                      registry=self.registry)
        self.batched_queries = Counter("nestvec_search_batched_queries",
                                       "query rows answered through stacked shard calls",
                                       registry=self.registry)
        self.batch_rows = Histogram("nestvec_search_batch_rows",
                                    "query rows per stacked shard call (batcher occupancy)",
                                    buckets=_ROW_BUCKETS, registry=self.registry)
        self.shard_searches_in_flight = Gauge("nestvec_search_shard_calls_in_flight",
                                              "searches (stacked or alone) out at the shards now",
                                              registry=self.registry)
        # The gateway's own memory and CPU (process_resident_memory_bytes, ...); in the
        # embedded layout this process also hosts the Ray driver.
        ProcessCollector(registry=self.registry)
        if coordinator is not None:
            self.registry.register(_ShardCollector(coordinator))

    def observe(self, method: str, code: str, seconds: float) -> None:
        self.requests.labels(method, code).inc()
        self.latency.labels(method, code).observe(seconds)

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Start the HTTP endpoint (loopback by default); returns the bound port."""
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        return server.server_address[1]


# Per-shard gauges read from DescribeCollection's stats: (name, help, value of a stats dict).
_SHARD_GAUGES = (
    ("nestvec_shard_vectors", "live vectors per shard", lambda s: s["vectors"]),
    ("nestvec_shard_tombstones", "deleted rows not yet compacted", lambda s: s["tombstones"]),
    ("nestvec_shard_wal_bytes", "write-ahead log bytes since the last snapshot",
     lambda s: s.get("wal_bytes", 0)),
    ("nestvec_shard_restarts", "times Ray restarted the shard's actor", lambda s: s.get("restarts", 0)),
    ("nestvec_shard_writes_refused", "1 while the shard refuses writes because its log cannot be written",
     lambda s: 1 if s.get("write_error") else 0),
    ("nestvec_shard_disk_errors", "write or fsync errors since the shard process started",
     lambda s: s.get("write_errors", 0)),
    ("nestvec_shard_snapshot_failing",
     "1 while the shard's last snapshot attempt failed (its log keeps growing)",
     lambda s: 1 if s.get("snapshot_error") else 0),
    ("nestvec_shard_rss_bytes", "resident memory of the shard's process", lambda s: s.get("rss_bytes", 0)),
    ("nestvec_shard_memory_bytes",
     "bytes of vectors and ids the shard holds (its capacity, not just live rows)",
     lambda s: s.get("memory_bytes", 0)),
    ("nestvec_shard_index_progress", "fraction of rows in the graph being built (1 when none is building)",
     lambda s: s.get("index_progress", 1.0) if s.get("index_state", "none") != "none" else 1.0),
    ("nestvec_shard_index_bytes", "bytes of the serving ANN graph", lambda s: s.get("index_bytes", 0)),
)


class _ShardCollector:
    """Reads every shard's stats at scrape time."""

    def __init__(self, coordinator):
        self.coordinator = coordinator

    def collect(self):
        labels = ["collection", "shard"]
        up = GaugeMetricFamily("nestvec_shard_up", "1 if the shard answered the scrape", labels=labels)
        gauges = [(GaugeMetricFamily(name, text, labels=labels), value) for name, text, value in _SHARD_GAUGES]
        index_state = GaugeMetricFamily("nestvec_shard_index_state",
                                        "1 for the ANN index's current state (none, building, ready, stale, failed)",
                                        labels=labels + ["state"])
        try:
            for cfg in self.coordinator.list_collections(timeout=5):
                _, stats = self.coordinator.describe_collection(cfg.name, timeout=5)
                for s in stats:
                    where = [cfg.name, str(s["shard"])]
                    up.add_metric(where, 0 if s.get("down") else 1)
                    if s.get("down"):
                        continue
                    for family, value in gauges:
                        family.add_metric(where, value(s))
                    state = s.get("index_state", "none")
                    for st in INDEX_STATES:
                        index_state.add_metric(where + [st], 1 if st == state else 0)
        except Exception as err:  # a scrape must not fail because a shard is slow
            log.warning("shard metrics unavailable: %s", err)
        yield up
        yield index_state
        yield from (family for family, _ in gauges)
