"""IncrementalCheckpoint and FullCheckpoint: the checkpoint manager driven as operators.

::

    IncrementalCheckpoint.run ─► previous write in flight? ── yes ─► SKIPPED
                                   │ no
                                   ▼
                                 base for this store, chain shorter than the limit?
                                   │ yes                         │ no
                                   ▼                             ▼
                                 increment since the base      full checkpoint (new chain)

    FullCheckpoint.run (mode STORE)   ─► every row from the store (new chain)
    FullCheckpoint.run (mode COMPACT) ─► fold the newest chain on disk into a new full
                                         checkpoint (no rows read from the store)

With ``background=True`` the rows are captured at the boundary and written on the manager's
thread: the report says SUBMITTED with the rows captured, and a completion callback records
``checkpoint_bytes_total``/``checkpoint_committed_total`` (the manager logs the commit).

>>> import tempfile, numpy as np
>>> from embedding_store import EmbeddingStore, StoreConfig, TableConfig
>>> from operators.base import OperatorContext
>>> from operators.metrics import MetricsRegistry
>>> with tempfile.TemporaryDirectory() as d:
...     manager = CheckpointManager(d + "/ckpt")
...     op = IncrementalCheckpoint(manager, background=False)
...     with EmbeddingStore(StoreConfig(d + "/s", (TableConfig("t", 2),), 1)) as store:
...         ctx = OperatorContext(store, MetricsRegistry(), source_offsets=lambda: {"p0": 5})
...         _ = store.lookup("t", np.arange(4, dtype=np.int64)); store.end_step()
...         first = op.run(ctx)
...         kinds = [first.details["kind"], op.run(ctx).details["kind"]]
>>> kinds, first.rows
(['full', 'incremental'], 4)
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from enum import Enum

from operators.base import Operator, OperatorContext, OperatorResult, Outcome
from operators.checkpoint.chain import CheckpointInfo
from operators.checkpoint.manager import CheckpointHandle, CheckpointManager
from operators.metrics import MetricsRegistry


def _on_commit(metrics: MetricsRegistry) -> Callable[[Future[CheckpointInfo]], None]:
    def done(future: Future[CheckpointInfo]) -> None:
        if future.cancelled() or future.exception() is not None:
            metrics.inc("checkpoint_failed_total")
            return
        record_commit(future.result(), metrics)

    return done


def record_commit(info: CheckpointInfo, metrics: MetricsRegistry) -> None:
    """Metrics of one committed checkpoint."""
    kind = info.kind.value
    metrics.inc("checkpoint_committed_total", kind=kind)
    metrics.inc("checkpoint_bytes_total", info.bytes, kind=kind)
    metrics.inc("checkpoint_rows_total", info.rows, kind=kind)
    metrics.set("checkpoint_last_version", info.version)
    metrics.set("checkpoint_last_timestamp_seconds", info.created_at.timestamp())


def _handle_result(handle: CheckpointHandle, metrics: MetricsRegistry) -> OperatorResult:
    handle.future.add_done_callback(_on_commit(metrics))
    return OperatorResult(
        outcome=Outcome.SUBMITTED,
        rows=handle.rows,
        details={
            "kind": handle.kind.value,
            "version": handle.version,
            "capture_seconds": handle.capture_seconds,
        },
    )


def _info_result(info: CheckpointInfo, metrics: MetricsRegistry) -> OperatorResult:
    record_commit(info, metrics)
    return OperatorResult(
        rows=info.rows,
        bytes=info.bytes,
        details={
            "kind": info.kind.value,
            "version": info.version,
            "checkpoint": info.id,
            "tombstones": info.tombstones,
        },
    )


class IncrementalCheckpoint(Operator):
    """An increment since the last checkpoint; a full one when there is no base yet.

    ``max_chain_length`` starts a new chain (a full checkpoint) once the chain has that many
    checkpoints, bounding restore time.
    """

    name = "incremental_checkpoint"

    def __init__(
        self,
        manager: CheckpointManager,
        background: bool = True,
        max_chain_length: int | None = None,
    ) -> None:
        self.manager = manager
        self.background = background
        self.max_chain_length = max_chain_length

    def execute(self, context: OperatorContext) -> OperatorResult:
        """Capture and write (or submit) the checkpoint."""
        manager, store = self.manager, context.store
        if manager.busy:
            return OperatorResult(
                Outcome.SKIPPED, message="the previous checkpoint is still writing"
            )
        base = manager.base
        full = not manager.has_base(store) or (
            self.max_chain_length is not None
            and base is not None
            and base.index + 1 >= self.max_chain_length
        )
        args = (
            store,
            context.dense_state(),
            context.source_offsets(),
            context.config_hash,
            context.extra(),
        )
        if self.background:
            submit = manager.submit_full if full else manager.submit_incremental
            return _handle_result(submit(*args), context.metrics)
        write = manager.write_full if full else manager.write_incremental
        return _info_result(write(*args), context.metrics)


class FullMode(Enum):
    """Where a full checkpoint's rows come from."""

    STORE = "store"  # every row of the live store (at a step boundary)
    COMPACT = "compact"  # the newest chain on disk, folded into one checkpoint


class FullCheckpoint(Operator):
    """A new full base: from the store, or by compacting the newest chain on disk.

    Compaction falls back to a full checkpoint from the store when there is none yet.
    """

    name = "full_checkpoint"

    def __init__(
        self, manager: CheckpointManager, mode: FullMode = FullMode.STORE, background: bool = True
    ) -> None:
        self.manager = manager
        self.mode = mode
        self.background = background

    def execute(self, context: OperatorContext) -> OperatorResult:
        """Write (or submit) the full checkpoint."""
        manager, store = self.manager, context.store
        if manager.busy:
            return OperatorResult(
                Outcome.SKIPPED, message="the previous checkpoint is still writing"
            )
        if self.mode is FullMode.COMPACT and manager.list():
            if self.background:
                future = manager.submit_compact()
                future.add_done_callback(_on_commit(context.metrics))
                return OperatorResult(
                    Outcome.SUBMITTED, details={"kind": "full", "mode": "compact"}
                )
            return _info_result(manager.compact(), context.metrics)
        args = (
            store,
            context.dense_state(),
            context.source_offsets(),
            context.config_hash,
            context.extra(),
        )
        if self.background:
            return _handle_result(manager.submit_full(*args), context.metrics)
        return _info_result(manager.write_full(*args), context.metrics)


CHECKPOINT_OPERATORS = (IncrementalCheckpoint.name, FullCheckpoint.name)
"""Names of the operators that write checkpoints (they need a checkpoint manager)."""
