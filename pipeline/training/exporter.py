"""Prometheus metrics of one training job, served on ``/metrics`` from a registry of its own.

::

    freshet_events_trained_total             counter    events trained
    freshet_events_per_second                gauge      over the last ~10 s
    freshet_prequential_auc                  gauge      cumulative test-then-train AUC
    freshet_prequential_window_auc           gauge      over the last training.auc_window events
    freshet_prequential_log_loss             gauge      cumulative
    freshet_hot_tier_hit_ratio               gauge      ids served without RocksDB, last interval
    freshet_store_lookups_total{table}       counter    ids looked up
    freshet_store_cold_reads_total{table}    counter    ids read from RocksDB
    freshet_store_rows{table,tier}           gauge      hot: DRAM rows; cold: RocksDB estimate
    freshet_store_version                    gauge      steps completed
    freshet_dead_letters_total               counter    malformed events sent to the DLQ
    freshet_publisher_skipped_records_total{reason}  counter  delta-topic records not believed
    freshet_consumer_lag                     gauge      Σ end offset - trained position
    freshet_checkpoint_seconds               histogram  set by the checkpoint operator
    freshet_publish_seconds                  histogram  set by the publisher
    freshet_published_version                gauge      last model version published
    freshet_store_disk_failed                gauge      1 while RocksDB's disk refuses writes
    process_*, python_*                                 the process: RSS, CPU, fds, GC, ...

Everything is read between two training steps, by the :class:`MetricsExporter` plugin; rank r
of N serves on ``metrics_port + r``.
Per step it costs a few counter reads. The prequential metrics (a sort of every scored event)
are refreshed every ``quality_every_s``, or less often as that sort grows: the next refresh
waits at least 100x the last one's cost, so they take at most 1% of the training thread. The
cold-row estimate (RocksDB's ``estimate-num-keys``, O(shards)) is refreshed every
``rows_every_s``, and the lag on a thread of its own every ``lag_every_s``
(:mod:`pipeline.source.lag`; approximate on tansu).

>>> m = TrainerMetrics(job=None)
>>> m.observe_checkpoint(0.25)
>>> b"freshet_checkpoint_seconds_count 1.0" in m.render()
True
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import start_wsgi_server

from embedding_store.rocks import table_cf
from operators.base import Outcome
from operators.checkpoint.ops import CHECKPOINT_OPERATORS
from pipeline.runtime.process_metrics import register_standard_collectors
from pipeline.source.lag import ConsumerLag
from pipeline.training.plugin import JobView
from pipeline.training.spec import MetricsSpec

if TYPE_CHECKING:
    from embedding_store import EmbeddingStore
    from pipeline.publishing.publisher import PublishReport
    from pipeline.source.kafka import SourceBatch
    from pipeline.training.trainer import BatchResult

log = logging.getLogger(__name__)

DEFAULT_PORT = 9400
"""The trainer's metrics port in deploy/ (compose, Kubernetes) and the Prometheus config."""

DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
RATE_WINDOW_S = 10.0
QUALITY_COST_FACTOR = 100.0  # prequential refreshes take at most 1% of the training thread


class OperatorReports(Protocol):
    """Where operator reports are read (``ScheduledOperators``)."""

    @property
    def reports(self) -> Any:
        """The latest reports, oldest first."""
        ...

    @property
    def report_count(self) -> int:
        """Reports made so far."""
        ...


class PublishedVersions(Protocol):
    """Where publishes are read (:class:`~pipeline.publishing.operator.DeltaPublish`)."""

    @property
    def published(self) -> int:
        """Versions published so far."""
        ...

    @property
    def last_report(self) -> PublishReport | None:
        """The latest publish."""
        ...


class TrainerMetrics:
    """The metrics of ``job`` (a :class:`~pipeline.training.plugin.JobView`).

    ``update()`` reads the job between steps; ``count_events`` counts trained events (the
    :class:`MetricsExporter` plugin calls both). ``start_http_server`` serves ``/metrics``.
    Checkpoint durations come from ``operators``' reports, publishes from ``publisher``; or
    call :meth:`observe_checkpoint` and :meth:`observe_publish`. Constructing does no I/O.
    """

    def __init__(
        self,
        job: JobView | None,
        registry: CollectorRegistry | None = None,
        *,
        operators: OperatorReports | None = None,
        publisher: PublishedVersions | None = None,
        quality_every_s: float = 5.0,
        rows_every_s: float = 30.0,
        lag_every_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.job = job
        self.operators = operators
        self.publisher = publisher
        if registry is None:
            registry = CollectorRegistry()
            register_standard_collectors(registry)  # process_resident_memory_bytes, GC, ...
        self.registry = registry
        self.quality_every_s = quality_every_s
        self.rows_every_s = rows_every_s
        self.lag_every_s = lag_every_s
        self.clock = clock
        r = self.registry
        self.events_trained = Counter("freshet_events_trained", "events trained", registry=r)
        self.events_per_second = Gauge(
            "freshet_events_per_second",
            f"events trained per second, last {RATE_WINDOW_S:g} s",
            registry=r,
        )
        self.auc = Gauge("freshet_prequential_auc", "cumulative prequential AUC", registry=r)
        self.window_auc = Gauge(
            "freshet_prequential_window_auc", "prequential AUC of the last window", registry=r
        )
        self.log_loss = Gauge(
            "freshet_prequential_log_loss", "cumulative prequential log loss", registry=r
        )
        self.hit_ratio = Gauge(
            "freshet_hot_tier_hit_ratio",
            "ids looked up without a RocksDB read, since the previous refresh",
            registry=r,
        )
        self.lookups = Counter("freshet_store_lookups", "ids looked up", ["table"], registry=r)
        self.cold_reads = Counter(
            "freshet_store_cold_reads", "ids read from RocksDB", ["table"], registry=r
        )
        self.rows = Gauge(
            "freshet_store_rows",
            "rows per table and tier (cold: estimate)",
            ["table", "tier"],
            registry=r,
        )
        self.version = Gauge("freshet_store_version", "store steps completed", registry=r)
        self.dead_letters = Counter(
            "freshet_dead_letters", "malformed events sent to the dead-letter topic", registry=r
        )
        self.publisher_skipped = Counter(
            "freshet_publisher_skipped_records",
            "delta-topic records the publisher did not believe when finding its last version",
            ["reason"],
            registry=r,
        )
        self._skips_counted = False
        self.consumer_lag = Gauge(
            "freshet_consumer_lag",
            "sum over partitions of end offset minus trained position (approximate on tansu)",
            registry=r,
        )
        self.consumer_lag.set(math.nan)
        self.checkpoint_seconds = Histogram(
            "freshet_checkpoint_seconds",
            "checkpoint duration",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.publish_seconds = Histogram(
            "freshet_publish_seconds", "publish duration", buckets=DURATION_BUCKETS, registry=r
        )
        self.published_version = Gauge(
            "freshet_published_version", "last model version published", registry=r
        )
        self.disk_failed = Gauge(
            "freshet_store_disk_failed",
            "1 while the store's disk refuses writes (store.on_disk_error: pause), else 0",
            registry=r,
        )
        self.disk_failed.set_function(lambda: float(bool(getattr(self.job, "_disk_failed", 0))))
        self.total_events = 0
        self._rate_samples: deque[tuple[float, int]] = deque()
        self._next_quality = -math.inf
        self._last_rows = -math.inf
        self._seen: dict[str, tuple[int, int]] = {}  # table -> (lookups, cold reads) counted
        self._dead_seen = 0
        self._reports_seen = 0
        self._published_seen = 0
        self.port: int | None = None  # bound by start_http_server
        self._server: WSGIServer | None = None
        self._lag: ConsumerLag | None = None

    # -- serving -------------------------------------------------------------
    def start_http_server(self, port: int, addr: str = "127.0.0.1") -> int:
        """Serve ``/metrics`` on ``addr:port`` (0: a free port); returns the port bound."""
        if self._server is None:
            self._server, _ = start_wsgi_server(port, addr, registry=self.registry)
            self.port = int(self._server.server_port)
        return int(self._server.server_port)

    def start_lag(self) -> None:
        """Start measuring the consumer lag of the job's source every ``lag_every_s``."""
        if self._lag is not None or self.job is None:
            return
        src = self.job.spec.source
        self._lag = ConsumerLag(
            list(src.bootstrap_servers),
            self._positions,
            self.consumer_lag.set,
            every_s=self.lag_every_s,
            client_config=dict(src.client_config),
        ).start()

    def _positions(self) -> dict[tuple[str, int], int]:
        source = self.job.source if self.job is not None else None
        return dict(source.snapshot()) if source is not None else {}

    def render(self) -> bytes:
        """The Prometheus text exposition, as ``/metrics`` serves it."""
        return generate_latest(self.registry)

    def close(self) -> None:
        """Stop the HTTP server and the lag thread (idempotent)."""
        if self._lag is not None:
            self._lag.close()
            self._lag = None
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> TrainerMetrics:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- set by operators ----------------------------------------------------
    def observe_checkpoint(self, seconds: float) -> None:
        """Record one checkpoint's duration."""
        self.checkpoint_seconds.observe(seconds)

    def observe_publish(self, seconds: float, version: int | None = None) -> None:
        """Record one publish's duration and the model version it published."""
        self.publish_seconds.observe(seconds)
        if version is not None:
            self.published_version.set(version)

    # -- hooks ---------------------------------------------------------------
    def count_events(self, n: int) -> None:
        """Count ``n`` more trained events."""
        self.total_events += n
        self.events_trained.inc(n)

    def on_batch(self, batch: SourceBatch, result: BatchResult | None = None) -> None:
        """Count a trained batch's events (a :attr:`TrainJob.batch_hooks` entry)."""
        self.count_events(len(batch.events))

    def update(self, job: JobView | None = None, force: bool = False) -> None:
        """Refresh from the job between two steps.

        ``force`` refreshes the throttled metrics (prequential, cold rows) now.
        """
        job = job if job is not None else self.job
        if job is None:
            return
        now = self.clock()
        self._update_rate(now)
        store = job.store
        if store is not None:
            self.version.set(store.version)
        source = job.source
        if source is not None:
            dead = source.dead_letters
            if dead < self._dead_seen:  # a new source (run) counts from zero again
                self._dead_seen = 0
            self.dead_letters.inc(dead - self._dead_seen)
            self._dead_seen = dead
        self._update_operators()
        if force or now >= self._next_quality:
            self._update_quality(job)
            cost = self.clock() - now
            self._next_quality = now + max(self.quality_every_s, QUALITY_COST_FACTOR * cost)
        if store is not None and (force or now - self._last_rows >= self.rows_every_s):
            self._last_rows = now
            for table in store.tables:
                self.rows.labels(table=table.name, tier="cold").set(
                    estimate_cold_rows(store, table.name)
                )

    def _update_operators(self) -> None:
        """Checkpoint durations and published versions from the operators and the publisher."""
        ops = self.operators
        count = ops.report_count if ops is not None else 0
        new = count - self._reports_seen if count >= self._reports_seen else count
        if ops is not None and new:
            reports = list(ops.reports)
            for report in reports[max(0, len(reports) - new) :]:
                if report.operator in CHECKPOINT_OPERATORS and report.outcome in (
                    Outcome.DONE,
                    Outcome.SUBMITTED,
                ):
                    self.observe_checkpoint(report.seconds)
            self._reports_seen = count
        publish = self.publisher
        if publish is not None and not self._skips_counted:
            self._skips_counted = True
            skipped = getattr(getattr(publish, "publisher", None), "skipped_records", {})
            for reason, n in skipped.items():
                self.publisher_skipped.labels(reason=reason).inc(n)
        if publish is not None and publish.published != self._published_seen:
            self._published_seen = publish.published
            last = publish.last_report
            if last is not None:
                self.observe_publish(last.seconds, last.version)

    def _update_rate(self, now: float) -> None:
        samples = self._rate_samples
        samples.append((now, self.total_events))
        while len(samples) > 2 and now - samples[1][0] >= RATE_WINDOW_S:
            samples.popleft()
        t0, n0 = samples[0]
        if now > t0:
            self.events_per_second.set((self.total_events - n0) / (now - t0))

    def _update_quality(self, job: JobView) -> None:
        trainer, store = job.trainer, job.store
        if trainer is not None:
            m = trainer.metrics
            self.auc.set(m.auc())
            self.window_auc.set(m.window_auc())
            self.log_loss.set(m.log_loss())
        if store is None:
            return
        lookups = cold = 0
        for table in store.tables:
            stats = store.stats(table.name)
            self.rows.labels(table=table.name, tier="hot").set(stats.hot_rows)
            seen_lookups, seen_cold = self._seen.get(table.name, (0, 0))
            if stats.lookups < seen_lookups:  # a reopened store counts from zero
                seen_lookups = seen_cold = 0
            self.lookups.labels(table=table.name).inc(stats.lookups - seen_lookups)
            self.cold_reads.labels(table=table.name).inc(stats.cold_reads - seen_cold)
            lookups += stats.lookups - seen_lookups
            cold += stats.cold_reads - seen_cold
            self._seen[table.name] = (stats.lookups, stats.cold_reads)
        if lookups:
            self.hit_ratio.set(max(0.0, 1.0 - cold / lookups))


def estimate_cold_rows(store: EmbeddingStore, table: str) -> int:
    """RocksDB's estimate of ``table``'s cold rows, summed over shards: O(shards), not O(rows).

    Exact for a store without deletes that RocksDB has not compacted; ``freshet inspect``
    counts exactly.
    """
    total = 0
    for shard_table in store._shard_tables(table):  # no public per-shard accessor yet
        cf: Any = shard_table.cold.shard.cf(table_cf(table))
        total += int(cf.property_int_value("rocksdb.estimate-num-keys") or 0)
    return total


class MetricsExporter:
    """The trainer's ``/metrics`` as a job plugin: local rank r serves on ``spec.port + r``.

    Ranks on one machine (``--nproc``) get one port each; one rank per machine (a pod per
    rank on Kubernetes, ``--nnodes``) serves on ``spec.port`` everywhere.

    ``spec=None`` keeps the metrics without serving them (no server, no lag thread).
    ``operators`` and ``publisher`` are the plugins whose reports it reads. The intervals are
    :class:`TrainerMetrics`'s; ``metrics`` exists from :meth:`open` on.
    """

    name = "metrics"

    def __init__(
        self,
        spec: MetricsSpec | None = None,
        *,
        operators: OperatorReports | None = None,
        publisher: PublishedVersions | None = None,
        quality_every_s: float = 5.0,
        rows_every_s: float = 30.0,
        lag_every_s: float = 10.0,
    ) -> None:
        self.spec = spec
        self.operators = operators
        self.publisher = publisher
        self.intervals = (quality_every_s, rows_every_s, lag_every_s)
        self.metrics: TrainerMetrics | None = None
        self._events_seen = 0

    @property
    def port(self) -> int | None:
        """The port bound (after :meth:`open`)."""
        return self.metrics.port if self.metrics is not None else None

    def open(self, job: JobView) -> None:
        """Create the registry, serve it on this rank's port, measure the lag."""
        quality, rows, lag = self.intervals
        self.metrics = TrainerMetrics(
            job,
            operators=self.operators,
            publisher=self.publisher,
            quality_every_s=quality,
            rows_every_s=rows,
            lag_every_s=lag,
        )
        self._events_seen = job.rank_events
        if self.spec is not None:
            port_here = self.spec.port_of(local_rank(job.world.rank))
            port = self.metrics.start_http_server(port_here, self.spec.addr)
            log.info("trainer metrics on http://%s:%d/metrics", self.spec.addr, port)
            self.metrics.start_lag()

    def at_step(self, job: JobView, idle: bool) -> None:
        """Count the events trained since the last boundary and refresh."""
        if self.metrics is None:
            return
        events = job.rank_events
        if events > self._events_seen:
            self.metrics.count_events(events - self._events_seen)
        self._events_seen = events
        self.metrics.update(job)

    def close(self, job: JobView, clean: bool) -> None:
        """Stop serving."""
        if self.metrics is not None:
            self.metrics.close()


def local_rank(rank: int) -> int:
    """A rank's number on its machine (torchrun's ``LOCAL_RANK``; else its global ``rank``)."""
    return int(os.environ.get("LOCAL_RANK", rank))
