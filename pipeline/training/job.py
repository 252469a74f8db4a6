"""The main job: Kafka source ─► featurizer ─► online trainer over the tiered store.

::

    KafkaSource (polls ahead) ──batch i──► OnlineTrainer.train_batch (score, then train)
         │ peek_ahead(K)                          │ store.step()
         └─► trainer.sparse_ids ─► store.prefetch ─┘ ticket.wait() / release()
    between steps: step hooks (scheduled operators: migration, checkpoints, publish)
    after each batch: source.mark_trained(batch) ─► source.snapshot() = offsets to resume

With ``source.decode_in: process`` (the default) the source is a
:class:`~pipeline.source.process.ProcessSource`: polling and decoding run in a child process
and batches arrive as columns; with ``thread`` it is the :class:`KafkaSource` itself.

Constructing a job does no I/O; :meth:`TrainJob.open` opens the store and builds the model,
:meth:`TrainJob.run` consumes until ``max_events``, an idle timeout or :meth:`stop`.

When RocksDB cannot write (disk full, read-only: a :class:`~embedding_store.errors.StorageError`)
``store.on_disk_error`` decides. ``stop``: :meth:`TrainJob.run` raises
:class:`~pipeline.errors.StoreDiskError` naming the directory, the OS error and the last good
checkpoint, and no checkpoint is written on the way out. ``pause``::

    StorageError ─► abandon the store (nothing more written), close source and operators
                 ─► every disk_retry_s: write + fsync a probe file in the store directory
                 ─► it succeeds: open() again = restore the last good checkpoint, seek the
                    source to its offsets, train on (the steps since it are trained again)
"""

from __future__ import annotations

import contextlib
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
from embedding_store.errors import StorageError
from pipeline.errors import StoreDiskError
from pipeline.features.featurizer import Featurizer, string_category_fields
from pipeline.source.kafka import Assignment, KafkaSource, SourceBatch, SourceConfig
from pipeline.source.process import ProcessSource
from pipeline.training.models import BatchLayout, build_model, model_tables
from pipeline.training.prequential import PrequentialMetrics
from pipeline.training.trainer import BatchResult, OnlineTrainer

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
    """What a run did."""

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
        self.source: KafkaSource | ProcessSource | None = None
        self.trainer: OnlineTrainer | None = None
        self.featurizer: Featurizer | None = None
        self.model: Any = None
        self.start_offsets: dict[tuple[str, int], int] = {}
        self.events_trained = 0  # in this model's lineage: restored from checkpoints
        self.operators: Any = None
        self.metrics_exporter: Any = None
        self._stop = threading.Event()
        self._tickets: dict[int, PrefetchTicket] = {}
        self._opened_hooks: list[Any] = []  # hooks open() added; close() takes them out
        self._disk_failed = False
        self.disk_probes = 0  # failed writability probes while paused

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
        self.events_trained, self.start_offsets = 0, {}  # until a checkpoint is restored
        hooks_before = list(self.step_hooks) + list(self.batch_hooks)
        overrides = cfg.store.table_overrides()
        tables = tuple(replace(t, **overrides) for t in model_tables(mspec, layout))
        self.store = EmbeddingStore(
            StoreConfig(
                cfg.store.path,
                tables,
                num_shards=cfg.store.num_shards,
                lfu_decay=cfg.store.lfu_decay,
                **cfg.store.rocks_options(),
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
        from pipeline.training.job_operators import JobOperators

        self.operators = JobOperators(self)
        self.operators.open()
        if getattr(cfg, "metrics_port", None) is not None:
            from pipeline.training.exporter import attach_metrics

            self.metrics_exporter = attach_metrics(self, cfg.metrics_port, cfg.metrics_addr)
        self._opened_hooks = [
            h
            for h in [*self.step_hooks, *self.batch_hooks]
            if not any(h is old for old in hooks_before)
        ]
        return self

    def _source_config(self) -> SourceConfig:
        src = self.config.source
        return SourceConfig(
            bootstrap_servers=tuple(src.bootstrap_servers),
            topics=(src.topic,),
            kind=self.config.event_kind,
            schema=self.config.schema_spec(),
            group_id=src.group_id,
            assignment=Assignment.GROUP if src.assignment == "group" else Assignment.MANUAL,
            max_events=src.max_events,
            max_wait_ms=src.max_wait_ms,
            queue_batches=src.queue_batches,
            dead_letter_topic=src.dead_letter_topic,
            session_timeout_ms=src.session_timeout_ms,
            fast_record_reader=src.record_reader == "fast",
            hash_fields=string_category_fields(self.config.features.to_spec()),
            client_config=src.security.client_config(),
        )

    def close(self, clean: bool = True) -> None:
        """Release pins, write the final checkpoint (if ``clean``), close source and store.

        After a disk failure no checkpoint is written and the store is abandoned, not flushed.
        """
        clean = clean and not self._disk_failed
        if self.operators is not None:
            try:
                self.operators.close(clean and self.store is not None)
            finally:
                self.operators = None
        opened, self._opened_hooks = self._opened_hooks, []
        self.step_hooks[:] = [h for h in self.step_hooks if not any(h is o for o in opened)]
        self.batch_hooks[:] = [h for h in self.batch_hooks if not any(h is o for o in opened)]
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
            store, self.store = self.store, None
            if self._disk_failed:
                store.abandon()
                return
            try:
                store.close()
            except StorageError as err:  # the last flush failed: say so, as during training
                store.abandon()
                path = self.config.store.path
                raise StoreDiskError(path, err, self._last_good_checkpoint()) from err

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
        self._ensure_source()
        assert self.source is not None
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
            try:
                self._train_one(batch)
                summary.events += len(batch.events)
                self.events_trained += len(batch.events)
                summary.batches += 1
                for hook in self.step_hooks:
                    hook(self)
            except StorageError as err:
                if not self._pause_on_disk_error(err):  # raises StoreDiskError in stop mode
                    break  # stop() while paused
                summary.disk_pauses += 1
                last_event = time.perf_counter()
                continue
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

    def _ensure_source(self) -> None:
        if self.source is None:
            in_process = self.config.source.decode_in == "process"
            self.source = (ProcessSource if in_process else KafkaSource)(self._source_config())
            if self.start_offsets:
                self.source.seek(self.start_offsets)
            self.source.start()

    def _last_good_checkpoint(self) -> str | None:
        ops = getattr(self.config, "operators", None)
        if ops is None or ops.checkpoint is None:
            return None
        from operators.checkpoint.manager import CheckpointManager

        writer = getattr(self.operators, "manager", None)
        if writer is not None:
            # a checkpoint captured before the failure may still be landing in the
            # background; it is good, and it is the one a restart resumes from
            writer.wait()
        manager = CheckpointManager(ops.checkpoint.dir)
        try:
            latest = manager.latest_complete()
        except Exception:  # the report must not hide the disk error
            log.exception("could not list the checkpoints in %s", ops.checkpoint.dir)
            return None
        finally:
            manager.close()
        if latest is None:
            return None
        return f"{latest.id} (version {latest.version}, in {manager.root})"

    def _pause_on_disk_error(self, err: StorageError) -> bool:
        """Stop (raise) or pause until the disk takes writes again; False if stopped meanwhile."""
        store_cfg = self.config.store
        failure = StoreDiskError(store_cfg.path, err, self._last_good_checkpoint())
        self._disk_failed = True
        if store_cfg.on_disk_error != "pause":
            log.error("%s", failure)
            raise failure from err
        log.error(
            "%s; pausing: probing %s every %.1f s, then resuming from that checkpoint",
            failure,
            store_cfg.path,
            store_cfg.disk_retry_s,
        )
        self.close(clean=False)
        while not _disk_writable(store_cfg.path):
            self.disk_probes += 1
            if self._stop.wait(store_cfg.disk_retry_s):
                return False
        self._disk_failed = False
        self.open()
        self._ensure_source()
        log.warning(
            "the disk under %s takes writes again: resumed at %d events trained, offsets %s",
            store_cfg.path,
            self.events_trained,
            self.start_offsets,
        )
        return True

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
        return Progress.measure(
            elapsed,
            summary.events,
            summary.batches,
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


def _discard_unchecked_store(cfg: Any) -> None:
    """Discard a store no checkpoint vouches for.

    With checkpoints configured but none complete, a store directory left by a crashed run
    holds updates no checkpoint covers: start it empty, or events would count twice.
    """
    ops = getattr(cfg, "operators", None)
    if ops is None or ops.checkpoint is None or not os.path.exists(cfg.store.path):
        return
    from operators.checkpoint.manager import CheckpointManager

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
