"""The main job: Kafka source ─► featurizer ─► online trainer over the tiered store.

::

    KafkaSource (polls ahead) ──batch i──► OnlineTrainer.train_batch (score, then train)
         │ peek_ahead(K)                          │ store.step()
         └─► trainer.sparse_ids ─► store.prefetch ─┘ ticket.wait() / release()
    between steps: step hooks (scheduled operators: migration, checkpoints, publish)
    after each batch: source.mark_trained(batch) ─► source.snapshot() = offsets to resume

Constructing a job does no I/O; :meth:`TrainJob.open` opens the store and builds the model,
:meth:`TrainJob.run` consumes until ``max_events``, an idle timeout or :meth:`stop`.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any

from embedding_store import EmbeddingStore, PrefetchTicket, StoreConfig
from pipeline.features import Featurizer
from pipeline.metrics import PrequentialMetrics
from pipeline.models import BatchLayout, build_model, model_tables
from pipeline.source import Assignment, KafkaSource, SourceBatch, SourceConfig
from pipeline.trainer import BatchResult, OnlineTrainer

log = logging.getLogger(__name__)


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


@dataclass
class TrainSummary:
    """What a run did."""

    events: int = 0
    batches: int = 0
    seconds: float = 0.0
    auc: float = float("nan")
    log_loss: float = float("nan")
    dead_letters: int = 0
    hit_ratio: float = 0.0
    history: list[Progress] = field(default_factory=list)

    @property
    def events_per_s(self) -> float:
        """Mean throughput over the run."""
        return self.events / self.seconds if self.seconds > 0 else 0.0


StepHook = Callable[["TrainJob"], None]
BatchHook = Callable[[SourceBatch, BatchResult], None]


class TrainJob:
    """One online-training process (one rank)."""

    def __init__(
        self,
        config: Any,
        progress: Callable[[Progress], None] | None = None,
        progress_every_s: float = 1.0,
    ) -> None:
        self.config = config
        self._progress_cb = progress
        self._progress_every_s = progress_every_s
        self.step_hooks: list[StepHook] = []  # run between steps (scheduled operators)
        self.batch_hooks: list[BatchHook] = []  # see every trained batch and its result
        self.store: EmbeddingStore | None = None
        self.source: KafkaSource | None = None
        self.trainer: OnlineTrainer | None = None
        self.featurizer: Featurizer | None = None
        self.model: Any = None
        self.start_offsets: dict[tuple[str, int], int] = {}
        self.events_trained = 0  # in this model's lineage: restored from checkpoints
        self.operators: Any = None
        self.metrics_exporter: Any = None
        self._stop = threading.Event()
        self._tickets: dict[int, PrefetchTicket] = {}

    # -- life cycle ----------------------------------------------------------
    def open(self) -> TrainJob:
        """Open the store, build featurizer, model and trainer, restore the newest checkpoint.

        Idempotent. Kafka is not touched until :meth:`run`.
        """
        if self.store is not None:
            return self
        cfg = self.config
        fspec = cfg.features.to_spec()
        mspec = cfg.model.to_spec()
        layout = BatchLayout.from_spec(fspec)
        _discard_unchecked_store(cfg)
        overrides = cfg.store.table_overrides()
        tables = tuple(replace(t, **overrides) for t in model_tables(mspec, layout))
        self.store = EmbeddingStore(
            StoreConfig(
                cfg.store.path,
                tables,
                num_shards=cfg.store.num_shards,
                lfu_decay=cfg.store.lfu_decay,
                write_buffer_bytes=cfg.store.write_buffer_mb << 20,
            )
        ).open()
        self.featurizer = Featurizer(fspec)
        self.model = build_model(mspec, layout, self.store)
        self.trainer = OnlineTrainer(
            self.model,
            self.store,
            self.featurizer,
            dense_optimizer=mspec.dense_optimizer.build(self.model.parameters()),
            metrics=PrequentialMetrics(window=cfg.training.auc_window),
        )
        from pipeline.job_operators import JobOperators

        self.operators = JobOperators(self)
        self.operators.open()
        if getattr(cfg, "metrics_port", None) is not None:
            from pipeline.trainer_metrics import attach_metrics

            self.metrics_exporter = attach_metrics(self, cfg.metrics_port, cfg.metrics_addr)
        return self

    def _source_config(self) -> SourceConfig:
        src = self.config.source
        return SourceConfig(
            bootstrap_servers=tuple(src.bootstrap_servers),
            topics=(src.topic,),
            kind=self.config.kind,
            group_id=src.group_id,
            assignment=Assignment.GROUP if src.assignment == "group" else Assignment.MANUAL,
            max_events=src.max_events,
            max_wait_ms=src.max_wait_ms,
            queue_batches=src.queue_batches,
            dead_letter_topic=src.dead_letter_topic,
            session_timeout_ms=src.session_timeout_ms,
            client_config=src.security.client_config(),
        )

    def close(self, clean: bool = True) -> None:
        """Release pins, write the final checkpoint (if ``clean``), close source and store."""
        if self.operators is not None:
            try:
                self.operators.close(clean and self.store is not None)
            finally:
                self.operators = None
        if self.metrics_exporter is not None:
            self.metrics_exporter.close()
            self.metrics_exporter = None
        for ticket in self._tickets.values():
            ticket.release()
        self._tickets.clear()
        if self.source is not None:
            self.source.close()
            self.source = None
        if self.store is not None:
            self.store.close()
            self.store = None

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
        """Ask :meth:`run` to return after the current batch (thread-safe)."""
        self._stop.set()

    # -- the loop ------------------------------------------------------------
    def run(
        self, max_events: int | None = None, idle_timeout_s: float | None = None
    ) -> TrainSummary:
        """Consume and train until ``max_events``, ``idle_timeout_s`` without events, or stop()."""
        assert self.store is not None and self.trainer is not None, "call open() first"
        tcfg = self.config.training
        max_events = max_events if max_events is not None else tcfg.max_events
        idle = idle_timeout_s if idle_timeout_s is not None else tcfg.idle_timeout_s
        if self.source is None:
            self.source = KafkaSource(self._source_config())
            if self.start_offsets:
                self.source.seek(self.start_offsets)
            self.source.start()
        summary = TrainSummary()
        if max_events is not None and self.events_trained >= max_events:
            self._stop.set()  # a restored lineage that already trained everything asked for
        t0 = last_event = last_progress = time.perf_counter()
        started = False  # throughput counts from the first batch, not the group join
        while not self._stop.is_set():
            batch = self.source.next_batch(timeout_s=0.2)
            now = time.perf_counter()
            if batch is None:
                if idle and now - last_event > idle:
                    break
                continue
            if not started:
                started, t0, last_progress = True, now, now
            last_event = now
            self._train_one(batch)
            summary.events += len(batch.events)
            self.events_trained += len(batch.events)
            summary.batches += 1
            for hook in self.step_hooks:
                hook(self)
            if now - last_progress >= self._progress_every_s:
                last_progress = now
                point = self.progress(now - t0, summary)
                summary.history.append(point)
                if self._progress_cb is not None:
                    self._progress_cb(point)
            if max_events is not None and self.events_trained >= max_events:
                break  # counted over the lineage, so a restarted run stops at the same event
        summary.seconds = time.perf_counter() - t0
        final = self.progress(summary.seconds, summary)
        summary.history.append(final)
        summary.auc, summary.log_loss = final.auc, final.log_loss
        summary.dead_letters, summary.hit_ratio = final.dead_letters, final.hit_ratio
        return summary

    def _train_one(self, batch: SourceBatch) -> None:
        assert self.store is not None and self.trainer is not None and self.source is not None
        k = self.config.training.prefetch_batches
        if k:
            for ahead in self.source.peek_ahead(k):
                if ahead.seq not in self._tickets and ahead.events:
                    ids = self.trainer.sparse_ids(ahead.events)
                    self._tickets[ahead.seq] = self.store.prefetch([ids])
        ticket = self._tickets.pop(batch.seq, None)
        if ticket is not None:
            ticket.wait()
        try:
            result = self.trainer.train_batch(batch.events) if batch.events else None
        finally:
            if ticket is not None:
                ticket.release()
        self.source.mark_trained(batch)
        if result is not None:
            for hook in self.batch_hooks:
                hook(batch, result)

    def progress(self, elapsed: float, summary: TrainSummary) -> Progress:
        """The current progress point."""
        assert self.trainer is not None and self.store is not None
        m = self.trainer.metrics
        tables = [t.name for t in self.store.tables]
        lookups = sum(self.store.stats(t).lookups for t in tables)
        cold = sum(self.store.stats(t).cold_reads for t in tables)
        return Progress(
            elapsed_s=elapsed,
            events=summary.events,
            batches=summary.batches,
            events_per_s=summary.events / elapsed if elapsed > 0 else 0.0,
            auc=m.auc(),
            window_auc=m.window_auc(),
            log_loss=m.log_loss(),
            hit_ratio=max(0.0, 1 - cold / lookups) if lookups else 0.0,
            dead_letters=self.source.dead_letters if self.source is not None else 0,
            store_version=self.store.version,
        )


def _discard_unchecked_store(cfg: Any) -> None:
    """Discard a store no checkpoint vouches for.

    With checkpoints configured but none complete, a store directory left by a crashed run
    holds updates no checkpoint covers: start it empty, or events would count twice.
    """
    ops = getattr(cfg, "operators", None)
    if ops is None or ops.checkpoint is None or not os.path.exists(cfg.store.path):
        return
    from operators.checkpoint import CheckpointManager

    manager = CheckpointManager(ops.checkpoint.dir)
    try:
        if manager.latest_complete() is None:
            log.warning(
                "no complete checkpoint in %s: discarding store %s left by an earlier run",
                ops.checkpoint.dir,
                cfg.store.path,
            )
            shutil.rmtree(cfg.store.path)
    finally:
        manager.close()
