"""Prometheus series of the embedding service (shards and client caches), one registry each.

>>> m = ShardMetrics()
>>> m.observe_lookup(4096, 0.001)
>>> m.rows.labels(op="lookup")._value.get()
4096.0
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0)


class ShardMetrics:
    """Lookups, rows, latency and errors of one service shard."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "freshet_embed_requests", "requests answered by the shard", ["op"], registry=r
        )
        self.rows = Counter("freshet_embed_rows", "rows looked up or written", ["op"], registry=r)
        self.errors = Counter(
            "freshet_embed_errors", "requests refused, by error kind", ["kind"], registry=r
        )
        self.latency = Histogram(
            "freshet_embed_lookup_seconds",
            "time a shard spends answering one lookup",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.version = Gauge(
            "freshet_embed_table_version", "newest version a table answers", ["table"], registry=r
        )
        self.table_rows = Gauge(
            "freshet_embed_table_rows", "rows the shard holds", ["table"], registry=r
        )

    def observe_lookup(self, rows: int, seconds: float) -> None:
        """Count one lookup of ``rows`` ids that took ``seconds``."""
        self.requests.labels(op="lookup").inc()
        self.rows.labels(op="lookup").inc(rows)
        self.latency.observe(seconds)


class ClientMetrics:
    """Lookups, latency and hot-cache hit ratio as a replica or job sees the service."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.rows = Counter(
            "freshet_embed_client_rows",
            "ids looked up, by where they came from",
            ["source"],
            registry=r,
        )
        self.retries = Counter(
            "freshet_embed_client_retries",
            "lookups retried (shard down, versions apart)",
            registry=r,
        )
        self.failures = Counter(
            "freshet_embed_client_failures", "lookups given up after the retry bound", registry=r
        )
        self.latency = Histogram(
            "freshet_embed_client_lookup_seconds",
            "time of one routed lookup, all shards together",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.hit_ratio = Gauge(
            "freshet_embed_cache_hit_ratio", "hot-cache hits over lookups", ["table"], registry=r
        )

    def attach(self, registry: CollectorRegistry) -> None:
        """Also export these series from ``registry`` (a replica's own /metrics)."""
        for collector in (self.rows, self.retries, self.failures, self.latency, self.hit_ratio):
            registry.register(collector)
