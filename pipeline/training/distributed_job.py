"""The N-rank main job: each rank reads its partitions, all ranks train in lock-step.

Each rank runs one process (``torchrun --nproc-per-node N -m pipeline.training.distributed_job
--config FILE``, or ``freshet train --nproc N``) with its own Kafka source, featurizer and
model; rows live in a :class:`~embedding_store.distributed.DistributedStore` (each rank
owns the rows whose id hashes to it), dense gradients are summed over the ranks::

    rank 0: KafkaSource(partitions 0, 2, ...) ─► batch ─┐
    rank 1: KafkaSource(partitions 1, 3, ...) ─► batch ─┤ every loop, one all_reduce:
                                                         │ [ranks with a batch, events,
                                                         │  ranks idle, ranks stopping]
           nobody has data: wait (all idle ─► stop) ◄────┤
           someone has data: every rank steps ◄──────────┘ (an empty batch where none)
             forward: ids ⇄ rows (all-to-all)   backward: row grads ─► owners,
             dense grads all_reduce(SUM)        every K steps: world checkpoint

Partitions: ``source.assignment: manual`` gives rank r the partitions r, r+N, r+2N, ...
(deterministic, no rebalance); ``group`` makes every rank a member of one consumer group
and lets the broker split the partitions. Rank 0 logs progress with the global event
count and its own prequential metrics. Featurizer state (streaming aggregates, running
standardisation) stays per rank.

Checkpoints (``--checkpoint-dir``) are coordinated: every rank writes its part at the same
step and rank 0 commits the world (:mod:`operators.checkpoint.distributed`). ``--restore``
restores the latest one into however many ranks this run has, re-sharding rows if the
world size changed, and seeks every partition to its checkpointed offset.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.distributed as dist
from kafka import KafkaConsumer

from embedding_store import EmbeddingStore, PrefetchTicket, StoreConfig
from embedding_store.collectives import ProcessGroup, all_gather_json, all_reduce_ints
from embedding_store.distributed import DistributedStore, distribute_bags
from pipeline.errors import PipelineError
from pipeline.features.featurizer import Featurizer
from pipeline.runtime.logging import setup_logging
from pipeline.source.kafka import (
    Assignment,
    KafkaSource,
    PartitionKey,
    SourceBatch,
    SourceConfig,
    security_options,
)
from pipeline.training.distributed_trainer import DistributedTrainer
from pipeline.training.job import Progress, TrainSummary
from pipeline.training.job_operators import offsets_from_json, offsets_to_json
from pipeline.training.models import BatchLayout, build_model, model_tables
from pipeline.training.prequential import PrequentialMetrics

if TYPE_CHECKING:
    from operators.checkpoint.distributed import WorldCheckpoint, WorldCheckpoints

log = logging.getLogger(__name__)

_POLL_S = 0.2


class DistributedJobError(PipelineError, RuntimeError):
    """A rank of the distributed job could not start, train or checkpoint."""

    def __init__(self, rank: int | None, detail: str) -> None:
        self.rank = rank
        super().__init__(f"{'rank ?' if rank is None else f'rank {rank}'}: {detail}")


@dataclass(frozen=True)
class CheckpointOptions:
    """Coordinated checkpoints of the job: where, how often, and whether to start from one.

    ``every_steps`` 0 writes one only when the run ends (if ``at_end``); ``restore`` starts
    from the latest one under ``root`` when there is one.

    >>> CheckpointOptions("/var/freshet/ckpt", every_steps=500).full_every
    8
    """

    root: str
    every_steps: int = 0
    at_end: bool = True
    restore: bool = False
    full_every: int = 8
    retention: int = 3


def partitions_of_rank(
    partitions: Sequence[PartitionKey], rank: int, world: int
) -> tuple[PartitionKey, ...]:
    """Rank ``rank``'s share of ``partitions`` under manual assignment: every ``world``-th.

    >>> partitions_of_rank([("t", 0), ("t", 1), ("t", 2)], 0, 2)
    (('t', 0), ('t', 2))
    """
    return tuple(sorted(partitions)[rank::world])


class DistributedTrainJob:
    """One rank of the N-rank job (see the module docstring).

    ``torch.distributed`` must be initialised before :meth:`open`. Constructing does no I/O.

    >>> from configs.job import JobConfig
    >>> config = JobConfig.model_validate({"kind": "ctr", "source": {"topic": "clicks",
    ...     "assignment": "manual"}, "features": {"sparse": [{"type": "categorical",
    ...     "name": "c1", "table": "cat", "field": "c1"}]}, "model": {"type": "logistic"}})
    >>> job = DistributedTrainJob(config)      # no process group, store or broker yet
    >>> job.store is None, job.steps
    (True, 0)
    """

    def __init__(
        self,
        config: Any,
        checkpoints: CheckpointOptions | None = None,
        group: ProcessGroup | None = None,
        progress: Callable[[Progress], None] | None = None,
        progress_every_s: float = 1.0,
    ) -> None:
        self.config = config
        self.checkpoint_options = checkpoints
        self.group = group
        self._progress_cb = progress
        self._progress_every_s = progress_every_s
        self.store: DistributedStore | None = None
        self.source: KafkaSource | None = None
        self.trainer: DistributedTrainer | None = None
        self.model: Any = None
        self.world: WorldCheckpoints | None = None
        self.start_offsets: dict[PartitionKey, int] = {}
        self.restored: Any = None
        self.global_events = 0
        self.steps = 0
        self.last_checkpoint: WorldCheckpoint | None = None
        self._stop = threading.Event()
        self._tickets: dict[int, PrefetchTicket] = {}

    # -- life cycle ----------------------------------------------------------
    @property
    def rank(self) -> int:
        """The rank of this process."""
        return int(dist.get_rank(self.group))

    @property
    def world_size(self) -> int:
        """Ranks in the job."""
        return int(dist.get_world_size(self.group))

    def open(self) -> DistributedTrainJob:
        """Open this rank's store, build model and trainer, restore if asked (no Kafka yet).

        Idempotent: a second call (``with job.open():``) returns the open job.
        """
        if self.store is not None:
            return self
        if not dist.is_initialized():
            raise DistributedJobError(None, "torch.distributed is not initialised")
        cfg = self.config
        fspec = cfg.features.to_spec()
        mspec = cfg.model.to_spec()
        layout = BatchLayout.from_spec(fspec)
        overrides = cfg.store.table_overrides()
        tables = tuple(replace(t, **overrides) for t in model_tables(mspec, layout))
        store_cfg = StoreConfig(
            cfg.store.path,
            tables,
            num_shards=cfg.store.num_shards,
            lfu_decay=cfg.store.lfu_decay,
            **cfg.store.rocks_options(),
        )
        self.store = DistributedStore(store_cfg, self.group).open()
        # build_model types its store as EmbeddingStore; the distributed store offers what
        # the bags use, and distribute_bags swaps them for distributed (empty-safe) ones.
        self.model = build_model(mspec, layout, cast(EmbeddingStore, self.store))
        distribute_bags(self.model, self.store)
        dense_optimizer = mspec.dense_optimizer.build(self.model.parameters())
        self.trainer = DistributedTrainer(
            self.model,
            self.store,
            Featurizer(fspec),
            dense_optimizer=dense_optimizer,
            metrics=PrequentialMetrics(window=cfg.training.auc_window),
        )
        opts = self.checkpoint_options
        if opts is not None:
            from operators.checkpoint.distributed import WorldCheckpoints

            self.world = WorldCheckpoints(
                opts.root,
                self.rank,
                group=self.group,
                retention=opts.retention,
                full_every=opts.full_every,
            )
            if opts.restore and self.world.latest() is not None:
                self._restore()
        return self

    def _config_hash(self) -> str:
        body = {
            "features": self.config.features.model_dump(mode="json"),
            "model": self.config.model.model_dump(mode="json"),
        }
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]

    def _dense_state(self) -> tuple[dict[str, Any], Any]:
        from operators.checkpoint.dense_state import flatten_tree

        assert self.trainer is not None
        tree: dict[str, Any] = {"model": self.model.state_dict()}
        if self.trainer.dense_optimizer is not None:
            tree["optim"] = self.trainer.dense_optimizer.state_dict()
        return flatten_tree(tree)

    def _restore(self) -> None:
        from operators.checkpoint.dense_state import unflatten_tree

        assert self.world is not None and self.store is not None and self.trainer is not None
        restored = self.world.restore(self.store.local, self.world_size, clear=True)
        skeleton = restored.extra.get("dense_skeleton")
        if skeleton is not None:
            tree = unflatten_tree(restored.dense_tensors(), skeleton)
            self.model.load_state_dict(tree["model"])
            if "optim" in tree and self.trainer.dense_optimizer is not None:
                self.trainer.dense_optimizer.load_state_dict(tree["optim"])
        self.start_offsets = offsets_from_json(dict(restored.offsets))
        self.restored = restored
        log.info(
            "rank %d: restored world checkpoint v%d (%d ranks -> %d)%s",
            self.rank,
            restored.version,
            restored.checkpoint.world_size,
            self.world_size,
            ", re-sharded" if restored.resharded else "",
        )

    def _source_config(self) -> SourceConfig:
        src = self.config.source
        rank, world = self.rank, self.world_size
        manual = src.assignment == "manual"
        partitions = None
        if manual:
            partitions = partitions_of_rank(self._topic_partitions(), rank, world)
        return SourceConfig(
            bootstrap_servers=tuple(src.bootstrap_servers),
            topics=(src.topic,),
            kind=self.config.event_kind,
            schema=self.config.schema_spec(),
            group_id=src.group_id,
            assignment=Assignment.MANUAL if manual else Assignment.GROUP,
            partitions=partitions,
            max_events=src.max_events,
            max_wait_ms=src.max_wait_ms,
            queue_batches=src.queue_batches,
            dead_letter_topic=src.dead_letter_topic,
            session_timeout_ms=src.session_timeout_ms,
            fast_record_reader=src.record_reader == "fast",
            client_id=f"freshet-source-rank{rank}",
            client_config=src.security.client_config(),
        )

    def _topic_partitions(self) -> list[PartitionKey]:
        src = self.config.source
        consumer = KafkaConsumer(
            bootstrap_servers=list(src.bootstrap_servers),
            **security_options(src.security.client_config()),
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
            raise DistributedJobError(self.rank, f"topic {src.topic!r} has no partitions")
        return [(src.topic, p) for p in sorted(parts)]

    def close(self) -> None:
        """Release prefetch pins, close the source, the checkpoint writer and the store."""
        for ticket in self._tickets.values():
            ticket.release()
        self._tickets.clear()
        if self.source is not None:
            self.source.close()
            self.source = None
        if self.world is not None:
            self.world.close()
        if self.store is not None:
            self.store.close()
            self.store = None

    def __enter__(self) -> DistributedTrainJob:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def stop(self) -> None:
        """Ask every rank to stop after the current step (thread-safe; any rank may ask)."""
        self._stop.set()

    # -- the loop ------------------------------------------------------------
    def run(
        self, max_events: int | None = None, idle_timeout_s: float | None = None
    ) -> TrainSummary:
        """Train in lock-step until a stop condition; returns this rank's summary.

        Stops at ``max_events`` (all ranks together), when every rank has been idle for
        ``idle_timeout_s``, or after :meth:`stop` on any rank.
        """
        assert self.store is not None and self.trainer is not None, "call open() first"
        tcfg = self.config.training
        max_events = max_events if max_events is not None else tcfg.max_events
        idle = idle_timeout_s if idle_timeout_s is not None else tcfg.idle_timeout_s
        if self.source is None:
            self.source = KafkaSource(self._source_config())
            if self.start_offsets:
                self.source.seek(self.start_offsets)
            self.source.start()
        every = self.checkpoint_options.every_steps if self.checkpoint_options else 0
        summary = TrainSummary()
        t0 = last_event = last_progress = time.perf_counter()
        started = False
        while True:
            batch = None if self._stop.is_set() else self.source.next_batch(timeout_s=_POLL_S)
            now = time.perf_counter()
            is_idle = batch is None and bool(idle) and now - last_event > idle
            have, events, idle_ranks, stopping = all_reduce_ints(
                [
                    batch is not None,
                    len(batch.events) if batch is not None else 0,
                    is_idle,
                    self._stop.is_set(),
                ],
                self.group,
            )
            if stopping:
                break
            if not have:
                if idle_ranks == self.world_size:
                    break
                continue
            if not started:
                started, t0, last_progress = True, now, now
            if batch is not None:
                last_event = now
            self._train_one(batch)
            self.steps += 1
            self.global_events += events
            if batch is not None:
                summary.events += len(batch.events)
                summary.batches += 1
            if every and self.steps % every == 0:
                self.checkpoint()
            if now - last_progress >= self._progress_every_s:
                last_progress = now
                point = self.progress(now - t0, summary)
                summary.history.append(point)
                if self._progress_cb is not None and self.rank == 0:
                    self._progress_cb(point)
            if max_events is not None and self.global_events >= max_events:
                break
        opts = self.checkpoint_options
        if opts is not None and opts.at_end:
            last = self.last_checkpoint
            assert self.store is not None
            if last is None or last.version != self.store.version:  # the same on every rank
                self.checkpoint()
        summary.seconds = time.perf_counter() - t0
        final = self.progress(summary.seconds, summary)
        summary.history.append(final)
        summary.auc, summary.log_loss = final.auc, final.log_loss
        summary.dead_letters, summary.hit_ratio = final.dead_letters, final.hit_ratio
        return summary

    def _train_one(self, batch: SourceBatch | None) -> None:
        assert self.store is not None and self.trainer is not None and self.source is not None
        k = self.config.training.prefetch_batches
        if k:
            for ahead in self.source.peek_ahead(k):
                if ahead.seq not in self._tickets and ahead.events:
                    ids = self.trainer.sparse_ids(ahead.events)
                    self._tickets[ahead.seq] = self.store.prefetch([ids])
        ticket = self._tickets.pop(batch.seq, None) if batch is not None else None
        if ticket is not None:
            ticket.wait()
        try:
            self.trainer.train_batch(batch.events if batch is not None else ())
        finally:
            if ticket is not None:
                ticket.release()
        if batch is not None:
            self.source.mark_trained(batch)

    def checkpoint(self) -> WorldCheckpoint:
        """Write a coordinated checkpoint now (a collective: every rank, the same step)."""
        if self.world is None or self.store is None or self.source is None:
            raise DistributedJobError(self.rank, "checkpoints need checkpoint options and run()")
        arrays, skeleton = self._dense_state()
        self.last_checkpoint = self.world.write(
            self.store.local,
            arrays,
            offsets_to_json(dict(self.source.snapshot())),
            config_hash=self._config_hash(),
            extra={"dense_skeleton": skeleton, "steps": self.steps},
        )
        return self.last_checkpoint

    def progress(self, elapsed: float, summary: TrainSummary) -> Progress:
        """A progress point: global events and throughput, this rank's metrics and store."""
        assert self.trainer is not None and self.store is not None
        return Progress.measure(
            elapsed,
            self.global_events,
            self.steps,
            metrics=self.trainer.metrics,
            store=self.store.local,
            dead_letters=self.source.dead_letters if self.source is not None else 0,
        )


# -- entry point (torchrun / freshet train --nproc) -------------------------------------------


def init_from_env() -> str:
    """Join the world described by torchrun's environment; NCCL where CUDA exists, else gloo.

    ``FRESHET_DIST_BACKEND`` overrides the choice; ``FRESHET_DIST_TIMEOUT_S`` (default 600)
    bounds how long a collective waits for a rank that stopped answering. Returns the backend.
    """
    backend = os.environ.get("FRESHET_DIST_BACKEND") or (
        "nccl" if torch.cuda.is_available() else "gloo"
    )
    if backend == "nccl":  # pragma: no cover - needs CUDA
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    timeout = timedelta(seconds=float(os.environ.get("FRESHET_DIST_TIMEOUT_S", "600")))
    dist.init_process_group(backend, timeout=timeout)
    return backend


def build_parser() -> argparse.ArgumentParser:
    """The options of one rank (``freshet train --nproc N`` passes them through)."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.training.distributed_job")
    parser.add_argument("--config", required=True, help="job YAML")
    parser.add_argument("--max-events", type=int, default=None, help="stop after N (all ranks)")
    parser.add_argument("--idle-timeout", type=float, default=None, help="stop when all idle")
    parser.add_argument("--checkpoint-dir", default=None, help="coordinated checkpoints here")
    parser.add_argument("--checkpoint-every", type=int, default=0, help="steps between them")
    parser.add_argument("--restore", action="store_true", help="start from the latest one")
    parser.add_argument("--log-format", choices=("text", "json"), default="text", help="logs")
    return parser


class _RankFilter(logging.Filter):
    """Prefix every log message with the rank that wrote it."""

    def __init__(self, rank: str) -> None:
        super().__init__()
        self.prefix = f"rank {rank}: "

    def filter(self, record: logging.LogRecord) -> bool:
        """Prefix the message (once) and keep the record."""
        if isinstance(record.msg, str) and not record.msg.startswith(self.prefix):
            record.msg = self.prefix + record.msg
        return True


def main(argv: Sequence[str] | None = None) -> int:
    """Run one rank; rank 0 prints the job summary as JSON. Exit 2 on a bad config."""
    from pydantic import ValidationError

    from configs.job import JobConfig

    args = build_parser().parse_args(argv)
    setup_logging(args.log_format)
    rank_filter = _RankFilter(os.environ.get("RANK", "?"))
    for handler in logging.getLogger().handlers:
        handler.addFilter(rank_filter)
    try:
        config = JobConfig.from_yaml(args.config)
    except (OSError, ValidationError, ValueError) as err:
        print(f"freshet train: invalid config {args.config}: {err}", file=sys.stderr)
        return 2
    backend = init_from_env()
    checkpoints = None
    if args.checkpoint_dir:
        checkpoints = CheckpointOptions(
            args.checkpoint_dir, every_steps=args.checkpoint_every, restore=args.restore
        )

    def show(p: Progress) -> None:
        log.info(
            "events=%d (all ranks) events/s=%.0f auc=%.4f (rank 0) window_auc=%.4f hit=%.3f",
            p.events,
            p.events_per_s,
            p.auc,
            p.window_auc,
            p.hit_ratio,
        )

    job = DistributedTrainJob(config, checkpoints, progress=show, progress_every_s=5.0)
    signal.signal(signal.SIGINT, lambda signum, frame: job.stop())
    signal.signal(signal.SIGTERM, lambda signum, frame: job.stop())
    try:
        with job:
            summary = job.run(max_events=args.max_events, idle_timeout_s=args.idle_timeout)
            assert job.store is not None
            mine = {
                "rank": job.rank,
                "events": summary.events,
                "batches": summary.batches,
                "a2a_bytes": job.store.stats.bytes_sent,
                "a2a_remote_bytes": job.store.stats.bytes_remote,
                "dense_bytes": job.store.dense_bytes,
            }
            ranks = all_gather_json(mine)
            if job.rank == 0:
                out = {k: v for k, v in asdict(summary).items() if k != "history"}
                out.update(
                    events=job.global_events,
                    steps=job.steps,
                    world_size=job.world_size,
                    backend=backend,
                    ranks=ranks,
                    events_per_s=job.global_events / summary.seconds if summary.seconds else 0,
                )
                print(json.dumps(out, indent=2), flush=True)
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
