"""The training job, one step loop for 1..N ranks: source ─► featurizer ─► trainer ─► store.

::

    rank r: KafkaSource (polls ahead) ──batch i──► OnlineTrainer.train_batch (score, then train)
                 │ peek_ahead(K)                        │ store.step()
                 └─► trainer.sparse_ids ─► store.prefetch ┘ ticket.wait() / release()
    every loop, the world agrees on [ranks with a batch, events, ranks past the idle timeout,
    ranks quiet for QUIET_S, ranks stopping] (one all_reduce with N ranks; nothing with one):
       nobody has data: all quiet ─► every plugin's at_step(idle=True); all idle ─► stop
       someone has data: the ranks with a batch hold it until every rank has one, for up
          to min(source.max_wait_ms, 2 s) (so batch i of every rank trains in step i when
          the data is there), then every rank steps (an empty batch where it has none), then
          checkpoint every K steps (spec.checkpoint.every_steps), plugins' at_step(idle=False)
    after each batch: source.mark_trained(batch) ─► source.snapshot() = offsets to resume

With one rank the store is an :class:`EmbeddingStore` at ``store.path``; with N it is a
:class:`~embedding_store.distributed.DistributedStore` (rank r's rows under
``store.path/rank-000r``), the model's bags exchange rows by all-to-all and the trainer
sums dense gradients over the ranks (``dense_sync``). ``source.assignment: manual`` gives
rank r the partitions r, r+N, ...; ``group`` lets the broker split them.

Checkpoints (:mod:`pipeline.training.checkpoints`) are the job's own: :meth:`TrainJob.open`
restores the newest one (re-sharding rows if the number of ranks changed) and seeks the
source to its offsets; :meth:`TrainJob.close` after a clean stop writes a final one and
commits the offsets to the consumer group, into ``<store.path>/checkpoints`` when the job
configures none. A store no checkpoint vouches for is discarded at open. Plugins
(:mod:`pipeline.training.plugin`: scheduled operators, the publisher, the metrics exporter)
run at step boundaries; the job never imports them.

With ``source.decode_in: process`` (the default, one rank) the source is a
:class:`~pipeline.source.process.ProcessSource`; with ``thread`` (and always with N ranks) it
is the :class:`KafkaSource` itself.

When RocksDB cannot write (a :class:`~embedding_store.errors.StorageError`)
``store.on_disk_error`` decides. ``stop``: :meth:`TrainJob.run` raises
:class:`~pipeline.errors.StoreDiskError` naming the directory, the OS error and the last good
checkpoint, and no checkpoint is written on the way out. ``pause`` (one rank only)::

    StorageError ─► abandon the store (nothing more written), close source and plugins
                 ─► every disk_retry_s: write + fsync a probe file in the store directory
                 ─► it succeeds: open() again = restore the last good checkpoint, seek the
                    source to its offsets, train on (the steps since it are trained again)
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, cast

import numpy as np
import torch
from kafka import KafkaConsumer

from embedding_store import EmbeddingStore, PrefetchTicket, StoreConfig
from embedding_store.distributed import DistributedStore, distribute_bags, rank_path
from embedding_store.errors import StorageError
from operators import failpoints
from operators.base import OperatorContext
from operators.checkpoint.distributed import WorldCheckpoints
from operators.checkpoint.manager import CheckpointManager
from operators.checkpoint.write_log import WriteLogWatermarks
from operators.metrics import MetricsRegistry
from pipeline.errors import PipelineError, StoreDiskError
from pipeline.features.featurizer import Featurizer, string_category_fields
from pipeline.source.kafka import (
    Assignment,
    KafkaSource,
    PartitionKey,
    SourceBatch,
    SourceConfig,
    security_options,
)
from pipeline.source.process import ProcessSource
from pipeline.training.checkpoints import JobCheckpoints, Resumed, offsets_to_json
from pipeline.training.lookahead import LookAhead
from pipeline.training.models import BatchLayout, build_model, model_tables
from pipeline.training.plugin import JobPlugin
from pipeline.training.prequential import PrequentialMetrics
from pipeline.training.routed import RoutedStore, TableSource
from pipeline.training.spec import JobSpec, SourceSpec
from pipeline.training.trainer import BatchResult, OnlineTrainer
from pipeline.training.world import World

log = logging.getLogger(__name__)

POLL_S = 0.2
ALIGN_MAX_S = 2.0
"""How long ranks with a batch wait for the others' (at most ``source.max_wait_ms``)."""
QUIET_S = 1.0
"""Every rank this long without data: the stream idles (plugins' ``at_step(idle=True)``)."""


class TrainJobError(PipelineError, RuntimeError):
    """A rank of the job could not start (it names the rank)."""

    def __init__(self, rank: int, detail: str) -> None:
        self.rank = rank
        super().__init__(f"rank {rank}: {detail}")


@dataclass(frozen=True)
class Progress:
    """A point on the job's progress line."""

    elapsed_s: float
    events: int
    batches: int
    events_per_s: float
    auc: float
    window_auc: float
    log_loss: float
    hit_ratio: float
    dead_letters: int
    store_version: int

    @classmethod
    def measure(
        cls,
        elapsed: float,
        events: int,
        batches: int,
        *,
        metrics: PrequentialMetrics,
        store: Any,
        dead_letters: int,
    ) -> Progress:
        """The progress now: prequential metrics, and the hit ratio over ``store``'s tables.

        ``store`` is an :class:`EmbeddingStore` (or a rank's local part of a distributed one).
        """
        lookups = sum(store.stats(t.name).lookups for t in store.tables)
        cold = sum(store.stats(t.name).cold_reads for t in store.tables)
        return cls(
            elapsed_s=elapsed,
            events=events,
            batches=batches,
            events_per_s=events / elapsed if elapsed > 0 else 0.0,
            auc=metrics.auc(),
            window_auc=metrics.window_auc(),
            log_loss=metrics.log_loss(),
            hit_ratio=max(0.0, 1 - cold / lookups) if lookups else 0.0,
            dead_letters=dead_letters,
            store_version=store.version,
        )


@dataclass
class TrainSummary:
    """What a run did (this rank's events and batches; ``seconds`` without an idle tail)."""

    events: int = 0
    batches: int = 0
    seconds: float = 0.0
    auc: float = float("nan")
    log_loss: float = float("nan")
    dead_letters: int = 0
    hit_ratio: float = 0.0
    disk_pauses: int = 0  # times training paused on a disk failure and resumed
    history: list[Progress] = field(default_factory=list)

    @property
    def events_per_s(self) -> float:
        """Mean throughput over the run."""
        return self.events / self.seconds if self.seconds > 0 else 0.0


BatchHook = Callable[[SourceBatch, BatchResult], None]


def partitions_of_rank(
    partitions: Sequence[PartitionKey], rank: int, world: int
) -> tuple[PartitionKey, ...]:
    """Rank ``rank``'s share of ``partitions`` under manual assignment: every ``world``-th.

    >>> partitions_of_rank([("t", 0), ("t", 1), ("t", 2)], 0, 2)
    (('t', 0), ('t', 2))
    """
    return tuple(sorted(partitions)[rank::world])


class TrainJob:
    """One rank of a training job (see the module docstring).

    ``spec`` comes from ``JobConfig.to_spec()``; ``world`` is this rank among the job's ranks
    (default: one rank); ``plugins`` run at open, step boundaries and close. ``batch_hooks``
    observe every trained batch and its result (read-only). Constructing does no I/O.

    >>> from pipeline.features.spec import CategoricalSpec, FeatureSpec
    >>> from pipeline.training.models import ModelSpec
    >>> from pipeline.training.spec import StoreSpec
    >>> spec = JobSpec("ctr", SourceSpec(("127.0.0.1:9092",), "clicks"),
    ...     FeatureSpec(sparse=(CategoricalSpec("c1", "cat", "c1"),)),
    ...     ModelSpec(kind="logistic"), StoreSpec("/tmp/never-opened"))
    >>> job = TrainJob(spec)
    >>> job.store is None, job.world.size, job.steps
    (True, 1, 0)
    """

    def __init__(
        self,
        spec: JobSpec,
        *,
        world: World | None = None,
        plugins: Sequence[JobPlugin] = (),
        progress: Callable[[Progress], None] | None = None,
        progress_every_s: float = 1.0,
        table_sources: Mapping[str, TableSource] | None = None,
    ) -> None:
        self.spec = spec
        self.table_sources = dict(table_sources or {})  # tables read frozen, not stored here
        self.world = world if world is not None else World.solo()
        self.plugins = tuple(plugins)
        self.batch_hooks: list[BatchHook] = []  # observers of every trained batch
        self._progress_cb = progress
        self._progress_every_s = progress_every_s
        self.store: EmbeddingStore | None = None  # this rank's rows
        self.shared_store: EmbeddingStore | DistributedStore | None = None  # what the model reads
        self.source: KafkaSource | ProcessSource | None = None
        self.trainer: OnlineTrainer | None = None
        self.featurizer: Featurizer | None = None
        self.model: Any = None
        self.watermarks = WriteLogWatermarks()
        self.checkpoints: JobCheckpoints | None = None
        self.resumed: Resumed | None = None
        self.start_offsets: dict[PartitionKey, int] = {}
        self.events_trained = 0  # in this model's lineage, all ranks: restored from checkpoints
        self.rank_events = 0  # this rank, this process
        self.steps = 0  # steps taken in this process (the same on every rank)
        self.run_events = 0  # events of every rank trained in this process
        self.last_step_time: datetime | None = None
        self.metrics = MetricsRegistry()  # the scheduled operators' counters
        self._stop = threading.Event()
        self._tickets: dict[int, PrefetchTicket] = {}
        self.lookahead = LookAhead()
        self._opened: list[JobPlugin] = []
        self._disk_failed = False
        self.disk_probes = 0  # failed writability probes while paused

    # -- life cycle ----------------------------------------------------------
    @property
    def rank(self) -> int:
        """The rank of this process."""
        return self.world.rank

    def _failpoint(self, name: str) -> None:
        failpoints.hit(name)
        failpoints.hit(f"{name}@{self.world.rank}")

    def _store_dir(self) -> str:
        path = self.spec.store.path
        return rank_path(path, self.world.rank) if self.world.distributed else path

    def open(self) -> TrainJob:
        """Open the store, build featurizer, model and trainer, restore, open the plugins.

        Idempotent. Kafka is not touched until :meth:`run`.
        """
        if self.store is not None:
            return self
        spec, world = self.spec, self.world
        if spec.training.torch_threads is not None:  # process-wide: the trainer is the process
            torch.set_num_threads(spec.training.torch_threads)
        layout = BatchLayout.from_spec(spec.features)
        self.events_trained, self.start_offsets, self.resumed = 0, {}, None
        self.checkpoints = JobCheckpoints(
            spec.checkpoints(),
            world,
            config_hash=spec.config_hash,
            watermarks=self.watermarks,
            file_hook=lambda path: self._failpoint("checkpoint_file"),
        )
        self.checkpoints.discard_unchecked(self._store_dir())
        overrides = dict(spec.store.table_overrides)
        frozen = self.table_sources
        every = model_tables(spec.model, layout)
        tables = tuple(replace(t, **overrides) for t in every if t.name not in frozen)
        if frozen and world.distributed:
            raise TrainJobError(world.rank, "tables read from elsewhere need a one-rank job")
        store_cfg = StoreConfig(
            spec.store.path,
            tables,
            num_shards=spec.store.num_shards,
            lfu_decay=spec.store.lfu_decay,
            **dict(spec.store.rocks_options),
        )
        if world.distributed:
            shared = DistributedStore(store_cfg, world.group).open()
            self.store, self.shared_store = shared.local, shared
            # build_model types its store as EmbeddingStore; distribute_bags swaps the bags for
            # distributed (empty-safe) ones that read through the distributed store
            self.model = build_model(spec.model, layout, cast(EmbeddingStore, shared))
            distribute_bags(self.model, shared)
            dense_sync: Any = shared.sync_dense_gradients
        else:
            self.store = self.shared_store = EmbeddingStore(store_cfg).open()
            if frozen:  # the model reads those tables through the sources, never trains them
                self.shared_store = cast(EmbeddingStore, RoutedStore(self.store, frozen))
            self.model = build_model(spec.model, layout, self.shared_store)
            dense_sync = None
        self.featurizer = Featurizer(spec.features, spec.feature_state)
        self.checkpoints.attach(self.featurizer)
        self.trainer = OnlineTrainer(
            self.model,
            cast(EmbeddingStore, self.shared_store),
            self.featurizer,
            dense_optimizer=spec.model.dense_optimizer.build(self.model.parameters()),
            metrics=PrequentialMetrics(window=spec.training.auc_window),
            dense_sync=dense_sync,
            rank=world.rank,
        )
        self.resumed = self.checkpoints.restore(self.store, self)
        if self.resumed is not None:
            self.start_offsets = dict(self.resumed.offsets)
            self.events_trained = self.resumed.events_trained
            log.info(
                "restored %s (version %d, %d events trained%s); resuming at %s",
                self.resumed.checkpoint,
                self.resumed.version,
                self.events_trained,
                ", re-sharded" if self.resumed.resharded else "",
                offsets_to_json(self.start_offsets),
            )
            self._failpoint("restored")
        for plugin in self.plugins:
            plugin.open(self)
            self._opened.append(plugin)
        return self

    # -- what checkpoints and plugins read -------------------------------------
    def dense_tree(self, featurizer: bool) -> dict[str, Any]:
        """The dense state a checkpoint saves: model, dense optimizer, featurizer (if asked)."""
        assert self.trainer is not None and self.featurizer is not None
        tree: dict[str, Any] = {"model": self.model.state_dict()}
        if featurizer:
            tree["featurizer"] = dict(self.featurizer.state_dict())
        if self.trainer.dense_optimizer is not None:
            tree["optim"] = self.trainer.dense_optimizer.state_dict()
        return tree

    def load_dense_tree(self, tree: Mapping[str, Any]) -> None:
        """Load what :meth:`dense_tree` gave (at restore)."""
        assert self.trainer is not None and self.featurizer is not None
        self.model.load_state_dict(tree["model"])
        if "featurizer" in tree:
            self.featurizer.load_state_dict(
                {
                    k: np.asarray(v.numpy() if isinstance(v, torch.Tensor) else v)
                    for k, v in tree["featurizer"].items()
                }
            )
        if "optim" in tree and self.trainer.dense_optimizer is not None:
            self.trainer.dense_optimizer.load_state_dict(tree["optim"])

    @property
    def checkpoint_manager(self) -> CheckpointManager | None:
        """The one-rank checkpoint writer (``None`` for coordinated N-rank checkpoints)."""
        return self.checkpoints.manager if self.checkpoints is not None else None

    def offsets(self) -> dict[PartitionKey, int]:
        """The offsets this rank would resume from now."""
        return dict(self.source.snapshot()) if self.source is not None else dict(self.start_offsets)

    def operator_context(self, metrics: MetricsRegistry | None = None) -> OperatorContext:
        """What scheduled operators see at this step boundary (this rank's store)."""
        assert self.store is not None and self.checkpoints is not None
        store, checkpoints = self.store, self.checkpoints
        return OperatorContext(
            store=store,
            metrics=metrics if metrics is not None else self.metrics,
            dense_state=lambda: checkpoints.dense(store, self)[0],
            source_offsets=lambda: offsets_to_json(self.offsets()),
            config_hash=self.spec.config_hash,
            extra=lambda: {
                "dense_skeleton": checkpoints.dense(store, self)[1],
                "events_trained": self.events_trained,
            },
        )

    def checkpoint(self, full: bool = False) -> int:
        """Write a checkpoint now (a collective with N ranks: every rank, the same step)."""
        assert self.store is not None and self.checkpoints is not None, "call open() first"
        self._failpoint("checkpoint")
        return self.checkpoints.write(
            self.store, self, self.offsets(), self.events_trained, full=full
        )

    # -- closing ---------------------------------------------------------------
    def close(self, clean: bool = True) -> None:
        """Write the final checkpoint (if ``clean``), close plugins, source and store.

        After a disk failure no checkpoint is written and the store is abandoned, not flushed.
        """
        clean = clean and not self._disk_failed and self.store is not None
        try:
            if clean:
                self._final_checkpoint()
        finally:
            self._close_rest(clean)

    def _final_checkpoint(self) -> None:
        assert self.store is not None and self.checkpoints is not None
        self.checkpoints.wait()
        last = self.checkpoints.last_version or 0
        if self.store.version != last:  # the same on every rank: all or none write
            self._failpoint("final_checkpoint")
            self.checkpoint()
        if self.source is not None and self.spec.source.group_id:  # lag tools read it
            try:
                self.source.commit(self.offsets())
            except Exception as err:  # the checkpoint holds the offsets; the commit is a copy
                log.warning(
                    "could not commit offsets to group %s: %s", self.spec.source.group_id, err
                )

    def _close_rest(self, clean: bool) -> None:
        opened, self._opened = self._opened, []
        try:
            for plugin in reversed(opened):
                plugin.close(self, clean)
        finally:
            for ticket in self._tickets.values():
                ticket.release()
            self._tickets.clear()
            if self.checkpoints is not None:
                self.checkpoints.close()
            if self.source is not None:
                self.source.close()
                self.source = None
            self._close_store()

    def _close_store(self) -> None:
        if self.shared_store is None:
            return
        store, self.shared_store, self.store = self.shared_store, None, None
        local = store.local if isinstance(store, DistributedStore) else store
        if self._disk_failed:
            local.abandon()
            return
        try:
            store.close()
        except StorageError as err:  # the last flush failed: say so, as during training
            local.abandon()
            raise StoreDiskError(self._store_dir(), err, self._last_good_checkpoint()) from err

    def __enter__(self) -> TrainJob:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(clean=exc_type is None)

    def stop(self) -> None:
        """Ask :meth:`run` to return after the current batch (thread-safe; any rank may ask)."""
        self._stop.set()

    # -- the loop ------------------------------------------------------------
    def run(
        self, max_events: int | None = None, idle_timeout_s: float | None = None
    ) -> TrainSummary:
        """Consume and train until ``max_events``, ``idle_timeout_s`` without events, or stop().

        ``max_events`` counts the lineage's events over all ranks (restored ones included),
        so a restarted run stops at the same event. The idle clock starts at the first poll
        after the source has its partitions (not during the group join), and the summary's
        ``seconds`` end with the last batch trained.
        """
        assert self.store is not None and self.trainer is not None, "call open() first"
        tspec = self.spec.training
        max_events = max_events if max_events is not None else tspec.max_events
        idle = idle_timeout_s if idle_timeout_s is not None else tspec.idle_timeout_s
        self._ensure_source()
        assert self.source is not None
        world = self.world
        summary = TrainSummary()
        done = max_events is not None and self.events_trained >= max_events
        t0: float | None = None  # throughput counts from the first batch, not the group join
        last_trained = last_progress = time.perf_counter()
        quiet_since: float | None = None  # when this rank last had data, or started listening
        held: SourceBatch | None = None  # a batch kept while the other ranks' are on the way
        partial_since: float | None = None
        align_s = min(self.spec.source.max_wait_ms / 1000.0, ALIGN_MAX_S)
        while True:
            stopping = done or self._stop.is_set()
            batch: SourceBatch | None
            if held is not None:
                batch, held = held, None
            else:
                batch = None if stopping else self.source.next_batch(timeout_s=POLL_S)
            now = time.perf_counter()
            if batch is not None:
                quiet_since = now
            elif quiet_since is None and self._listening():
                quiet_since = now
            quiet = batch is None and quiet_since is not None and now - quiet_since >= QUIET_S
            is_idle = quiet and bool(idle) and now - (quiet_since or now) > idle
            have, events, idle_ranks, quiet_ranks, stop_ranks = world.sum(
                [batch is not None, len(batch.events) if batch else 0, is_idle, quiet, stopping]
            )
            if stop_ranks:
                break
            if not have:
                if idle_ranks == world.size:
                    break
                if quiet_ranks == world.size:  # not a gap between two batches: the stream idles
                    self._boundary(idle=True)
                continue
            if have < world.size:  # some ranks' batches are late: give them a moment
                partial_since = partial_since if partial_since is not None else now
                if now - partial_since < align_s:
                    held = batch
                    continue
            partial_since = None
            if t0 is None:
                t0 = last_progress = now
            try:
                self._train_one(batch)
                self.steps += 1
                self.events_trained += events
                self.run_events += events
                if batch is not None:
                    summary.events += len(batch.events)
                    summary.batches += 1
                    self.rank_events += len(batch.events)
                last_trained = time.perf_counter()
                self._failpoint("step")
                every = self.spec.checkpoints().every_steps
                if every and self.steps % every == 0:
                    self.checkpoint()
                self._boundary(idle=False)
            except StorageError as err:
                if not self._pause_on_disk_error(err):  # raises StoreDiskError in stop mode
                    break  # stop() while paused
                summary.disk_pauses += 1
                quiet_since = time.perf_counter()
                continue
            if now - last_progress >= self._progress_every_s:
                last_progress = now
                point = self.progress(now - t0, summary)
                summary.history.append(point)
                if self._progress_cb is not None and world.rank == 0:
                    self._progress_cb(point)
            done = max_events is not None and self.events_trained >= max_events
        summary.seconds = last_trained - t0 if t0 is not None else 0.0
        final = self.progress(summary.seconds, summary)
        summary.history.append(final)
        summary.auc, summary.log_loss = final.auc, final.log_loss
        summary.dead_letters, summary.hit_ratio = final.dead_letters, final.hit_ratio
        return summary

    def _listening(self) -> bool:
        """Whether the source has partitions to read (assigned, or seeked to offsets)."""
        return self.source is not None and bool(self.source.snapshot())

    def _boundary(self, idle: bool) -> None:
        for plugin in self._opened:
            plugin.at_step(self, idle)

    def _source_config(self) -> SourceConfig:
        src, world = self.spec.source, self.world
        manual = src.assignment == "manual"
        partitions = None
        extra: dict[str, Any] = {}
        if world.distributed:
            extra["client_id"] = f"freshet-source-rank{world.rank}"
            if manual:
                partitions = partitions_of_rank(self._topic_partitions(src), world.rank, world.size)
        return SourceConfig(
            bootstrap_servers=tuple(src.bootstrap_servers),
            topics=(src.topic,),
            kind=self.spec.kind,
            schema=self.spec.schema,
            group_id=src.group_id,
            assignment=Assignment.MANUAL if manual else Assignment.GROUP,
            partitions=partitions,
            max_events=src.max_events,
            max_wait_ms=src.max_wait_ms,
            queue_batches=src.queue_batches,
            dead_letter_topic=src.dead_letter_topic,
            session_timeout_ms=src.session_timeout_ms,
            fast_record_reader=src.record_reader == "fast",
            broker_wait_s=src.broker_wait_s,
            hash_fields=string_category_fields(self.spec.features),
            client_config=dict(src.client_config),
            **extra,
        )

    def _topic_partitions(self, src: SourceSpec) -> list[PartitionKey]:
        consumer = KafkaConsumer(
            bootstrap_servers=list(src.bootstrap_servers),
            **security_options(src.client_config),
        )
        try:
            deadline = time.monotonic() + 30.0
            while True:
                parts = consumer.partitions_for_topic(src.topic)
                if parts or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        finally:
            consumer.close()
        if not parts:
            raise TrainJobError(self.world.rank, f"topic {src.topic!r} has no partitions")
        return [(src.topic, p) for p in sorted(parts)]

    def _ensure_source(self) -> None:
        if self.source is None:
            in_process = self.spec.source.decode_in == "process" and not self.world.distributed
            self.source = (ProcessSource if in_process else KafkaSource)(self._source_config())
            if self.start_offsets:
                self.source.seek(self.start_offsets)
            self.source.start()

    def _last_good_checkpoint(self) -> str | None:
        root = self.spec.checkpoints().dir
        if self.checkpoints is not None:
            # a checkpoint captured before the failure may still be landing in the
            # background; it is good, and it is the one a restart resumes from
            self.checkpoints.wait()
        try:
            if self.checkpoints is not None and self.checkpoints.layout == "world":
                entry = WorldCheckpoints(root, self.world.rank).latest()
                return None if entry is None else f"world v{entry.version} (in {root})"
            manager = CheckpointManager(root)
            try:
                latest = manager.latest_complete()
            finally:
                manager.close()
        except Exception:  # the report must not hide the disk error
            log.exception("could not list the checkpoints in %s", root)
            return None
        if latest is None:
            return None
        return f"{latest.id} (version {latest.version}, in {manager.root})"

    def _pause_on_disk_error(self, err: StorageError) -> bool:
        """Stop (raise) or pause until the disk takes writes again; False if stopped meanwhile."""
        store_spec = self.spec.store
        failure = StoreDiskError(self._store_dir(), err, self._last_good_checkpoint())
        self._disk_failed = True
        if store_spec.on_disk_error != "pause" or self.world.distributed:
            log.error("%s", failure)
            raise failure from err
        log.error(
            "%s; pausing: probing %s every %.1f s, then resuming from that checkpoint",
            failure,
            store_spec.path,
            store_spec.disk_retry_s,
        )
        self.close(clean=False)
        while not _disk_writable(store_spec.path):
            self.disk_probes += 1
            if self._stop.wait(store_spec.disk_retry_s):
                return False
        self._disk_failed = False
        self.open()
        self._ensure_source()
        log.warning(
            "the disk under %s takes writes again: resumed at %d events trained, offsets %s",
            store_spec.path,
            self.events_trained,
            self.start_offsets,
        )
        return True

    def _train_one(self, batch: SourceBatch | None) -> None:
        assert self.shared_store is not None and self.trainer is not None
        assert self.source is not None
        k = self.spec.training.prefetch_batches
        if k and self.lookahead.due():
            for ahead in self.source.peek_ahead(k):
                if ahead.seq not in self._tickets and ahead.events:
                    ids = self.trainer.sparse_ids(ahead.events)
                    self._tickets[ahead.seq] = self.shared_store.prefetch([ids])
        ticket = self._tickets.pop(batch.seq, None) if batch is not None else None
        if ticket is not None:
            ticket.wait()
            self.lookahead.saw(ticket.loaded)
        events = batch.events if batch is not None else ()
        try:
            train = bool(events) or self.world.distributed  # N ranks: every rank steps
            result = self.trainer.train_batch(events) if train else None
        finally:
            if ticket is not None:
                ticket.release()
        self.last_step_time = datetime.now(UTC)
        if batch is None:
            return
        self.source.mark_trained(batch)
        if result is not None:
            for hook in self.batch_hooks:
                hook(batch, result)

    def progress(self, elapsed: float, summary: TrainSummary) -> Progress:
        """The current progress point (events of every rank; this rank's metrics and store)."""
        assert self.trainer is not None and self.store is not None
        distributed = self.world.distributed
        return Progress.measure(
            elapsed,
            self.run_events if distributed else summary.events,
            self.steps if distributed else summary.batches,
            metrics=self.trainer.metrics,
            store=self.store,
            dead_letters=self.source.dead_letters if self.source is not None else 0,
        )


def _disk_writable(path: str, probe_bytes: int = 1 << 20) -> bool:
    """Whether ``probe_bytes`` can be written and fsynced in ``path`` (or its parent)."""
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    probe = os.path.join(folder, ".freshet-write-probe")
    try:
        with open(probe, "wb") as fh:
            fh.write(b"\0" * probe_bytes)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as err:
        log.debug("write probe in %s failed: %s", folder, err)
        return False
    finally:
        with contextlib.suppress(OSError):
            os.unlink(probe)
    return True
