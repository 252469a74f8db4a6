"""Prometheus metrics of one replica, in a registry of its own (several replicas per process).

::

    freshet_replica_model_version               gauge      version served now
    freshet_replica_freshness_lag_seconds       gauge      now - trainer step time of that version
    freshet_replica_freshness_seconds           histogram  step time -> serving, per applied version
    freshet_replica_request_seconds             histogram  /predict latency
    freshet_replica_requests_total{code}        counter    HTTP answers by status (not probes)
    freshet_replica_deltas_applied_total        counter
    freshet_replica_deltas_rejected_total{reason} counter  duplicate, gap, checksum, signature, ...
    freshet_replica_resyncs_total               counter    snapshots loaded
    freshet_replica_bootstrap_retries_total     counter    first-snapshot attempts that found none
    freshet_replica_rows{table,tier}            gauge      rows in DRAM (hot) and RocksDB (cold)
    process_*, python_*                                    the process: RSS, CPU, fds, GC, ...

>>> m = ReplicaMetrics("r0")
>>> m.reject("gap")
>>> m.rejected("gap"), b'freshet_replica_deltas_rejected_total{reason="gap"' in m.render()
(1, True)
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from pipeline.runtime.process_metrics import register_standard_collectors

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
FRESHNESS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0)


class ReplicaMetrics:
    """The metrics of replica ``name`` (a label value on every metric)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.registry = CollectorRegistry()
        register_standard_collectors(self.registry)
        r, labels = self.registry, {"replica": name}
        self.version = Gauge(
            "freshet_replica_model_version", "model version served", ["replica"], registry=r
        ).labels(**labels)
        self.lag = Gauge(
            "freshet_replica_freshness_lag_seconds",
            "now minus the trainer step time of the version served",
            ["replica"],
            registry=r,
        ).labels(**labels)
        self.freshness = Histogram(
            "freshet_replica_freshness_seconds",
            "trainer step end to serving, per applied version",
            ["replica"],
            buckets=FRESHNESS_BUCKETS,
            registry=r,
        ).labels(**labels)
        self.latency = Histogram(
            "freshet_replica_request_seconds",
            "/predict latency",
            ["replica"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        ).labels(**labels)
        self._requests = Counter(
            "freshet_replica_requests",
            "HTTP answers by status: /predict, errors of any path, refused connections "
            "(not the probes /healthz, /readyz, /version, /metrics, /openapi.json)",
            ["replica", "code"],
            registry=r,
        )
        self.applied = Counter(
            "freshet_replica_deltas_applied", "deltas applied", ["replica"], registry=r
        ).labels(**labels)
        self._rejected = Counter(
            "freshet_replica_deltas_rejected",
            "deltas rejected, by reason",
            ["replica", "reason"],
            registry=r,
        )
        self.resyncs = Counter(
            "freshet_replica_resyncs", "snapshots loaded", ["replica"], registry=r
        ).labels(**labels)
        self.bootstrap_retries = Counter(
            "freshet_replica_bootstrap_retries",
            "attempts to load a first snapshot that found none loadable (not ready meanwhile)",
            ["replica"],
            registry=r,
        ).labels(**labels)
        self._rows = Gauge(
            "freshet_replica_rows",
            "rows per table and tier",
            ["replica", "table", "tier"],
            registry=r,
        )

    def reject(self, reason: str) -> None:
        """Count one rejected delta."""
        self._rejected.labels(replica=self.name, reason=reason).inc()

    def rejected(self, reason: str) -> int:
        """Deltas rejected for ``reason`` so far."""
        return int(self._rejected.labels(replica=self.name, reason=reason)._value.get())

    def request(self, code: int) -> None:
        """Count one HTTP answer."""
        self._requests.labels(replica=self.name, code=str(code)).inc()

    def set_lag_source(self, lag: Callable[[], float]) -> None:
        """Compute the freshness lag at each scrape."""
        self.lag.set_function(lag)

    def set_rows(self, table: str, tier: str, rows: int) -> None:
        """Record the rows of ``table`` in ``tier`` (hot or cold)."""
        self._rows.labels(replica=self.name, table=table, tier=tier).set(rows)

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
