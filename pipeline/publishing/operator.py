"""The delta publisher as a job plugin: one model version per interval, on idle and at stop.

It runs on the training thread at step boundaries, so the store, the dense parameters and
the featurizer state it reads all belong to the same step (design decision 3)::

    job.open()            ─► open(job):    rank 0 starts the Publisher; watermarks register
    step boundary         ─► at_step(job): due? (rank 0 decides, every rank follows)
                                            └─► publish: one version
    stream idles (1 s)    ─► at_step(job, idle=True): trained since the last version? publish
    job.close(clean=True) ─► close(job):   trained since the last version? publish

With N ranks each rank holds only the rows it owns. A publish is then a collective: every
rank sends the rows written since the last version (all its rows when a snapshot is due) to
rank 0, which publishes them with the dense parameters as one version, so a replica never
sees a version that covers only some ranks::

    rank r: local.written_since(base) ─┐ gather    rank 0: WorldRows (a store-shaped view of
    rank r: local.tombstones_since     ─┼────────►  every rank's rows) ─► Publisher.publish
    rank r: local.export_rows (snapshot)┘

With ``watermarks`` (the job's write-log watermarks) a store's write log is never truncated
past rows the publisher has yet to send.

>>> op = DeltaPublish(publisher=None)
>>> op.name, op.published
('delta_publish', 0)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from embedding_store import EmbeddingStore, TableConfig
from operators import failpoints
from pipeline.features.featurizer import Featurizer
from pipeline.publishing.publisher import Publisher, PublishReport

log = logging.getLogger(__name__)

CONSUMER = "publisher"
"""The name this operator's watermark goes by."""

I64 = npt.NDArray[np.int64]
AnyArray = npt.NDArray[Any]


class Ranks(Protocol):
    """The ranks of the job (:class:`pipeline.training.world.World`)."""

    @property
    def rank(self) -> int:
        """The rank of this process."""
        ...

    @property
    def size(self) -> int:
        """How many ranks."""
        ...

    def from_root(self, values: Sequence[int]) -> list[int]:
        """Rank 0's values on every rank."""
        ...

    def gather(self, arrays: Sequence[AnyArray]) -> list[list[AnyArray]]:
        """Every rank's arrays on rank 0 (``[]`` elsewhere)."""
        ...


class Watermarks(Protocol):
    """Write-log watermarks shared with other consumers of the log (checkpoints)."""

    def register(self, consumer: str) -> None:
        """Hold truncation until ``consumer`` advances."""
        ...

    def advance(self, store: Any, consumer: str, version: int) -> None:
        """``consumer`` has saved every row written up to ``version``."""
        ...


class PublishedJob(Protocol):
    """What the plugin reads of the job (:class:`pipeline.training.plugin.JobView`)."""

    @property
    def store(self) -> EmbeddingStore | None:
        """The store of this rank."""
        ...

    @property
    def model(self) -> Any:
        """The model (``state_dict()`` gives its dense parameters)."""
        ...

    @property
    def featurizer(self) -> Featurizer | None:
        """The featurizer (its ``state_dict()`` is part of the version)."""
        ...

    @property
    def world(self) -> Ranks:
        """The job's ranks."""
        ...

    @property
    def watermarks(self) -> Watermarks:
        """The write-log watermarks of this rank's store."""
        ...

    @property
    def last_step_time(self) -> datetime | None:
        """When the latest training step ended."""
        ...


class WorldRows:
    """Every rank's rows gathered on rank 0, shaped like the store the publisher reads.

    ``written`` / ``tombstones`` per table: rows written and ids deleted since the base;
    ``exported`` per table: every row (only when a snapshot is due, else ``None``).
    """

    def __init__(
        self,
        version: int,
        tables: tuple[TableConfig, ...],
        written: Mapping[str, tuple[I64, AnyArray]],
        tombstones: Mapping[str, I64],
        exported: Mapping[str, tuple[I64, AnyArray]] | None,
    ) -> None:
        self.version = version
        self.tables = tables
        self._written = written
        self._tombstones = tombstones
        self._exported = exported

    @contextmanager
    def step_boundary(self) -> Iterator[int]:
        """The version all ranks were at when their rows were gathered."""
        yield self.version

    def written_since(self, table: str, base: int) -> tuple[I64, dict[str, AnyArray]]:
        """Rows of ``table`` written since the base (all ranks)."""
        ids, emb = self._written[table]
        return ids, {"emb": emb}

    def tombstones_since(self, table: str, base: int) -> I64:
        """Ids of ``table`` deleted since the base (all ranks)."""
        return self._tombstones[table]

    def export_rows(
        self, table: str, chunk: int = 65536
    ) -> Iterator[tuple[I64, dict[str, AnyArray]]]:
        """Every row of ``table`` (all ranks), in chunks."""
        if self._exported is None:
            raise RuntimeError("a snapshot was not gathered for this version")
        ids, emb = self._exported[table]
        for start in range(0, len(ids), chunk):
            yield ids[start : start + chunk], {"emb": emb[start : start + chunk]}


def _concat(parts: Sequence[AnyArray], tail: tuple[int, ...], dtype: Any) -> AnyArray:
    if not parts:
        return np.empty((0, *tail), dtype=dtype)
    return np.concatenate(parts)


class DeltaPublish:
    """Publishes a version when due, on idle and at a clean stop (see the module docstring).

    A job plugin (``open`` / ``at_step`` / ``close``). ``publisher`` is used on rank 0 only;
    ``watermarks`` default to the job's.
    """

    name = "delta_publish"

    def __init__(
        self, publisher: Publisher | None, *, watermarks: Watermarks | None = None
    ) -> None:
        self.publisher = publisher
        self.watermarks = watermarks
        self.last_report: PublishReport | None = None
        self.published = 0
        self.seconds = 0.0
        self.base: int | None = None  # store version of the last version published

    # -- the plugin protocol -----------------------------------------------------
    def open(self, job: PublishedJob) -> None:
        """Register the watermark; rank 0 starts the publisher."""
        if self.watermarks is None:
            self.watermarks = job.watermarks
        self.watermarks.register(CONSUMER)
        if job.world.rank == 0 and self.publisher is not None:
            self.publisher.start()

    def at_step(self, job: PublishedJob, idle: bool) -> None:
        """Publish if due (after a step), or if anything was trained since (idle)."""
        store = job.store
        if store is None:
            return
        if idle:  # the stream idles: replicas get the last trained version now
            if store.version != (self.base or 0):
                self.run(job)  # every rank knows both versions: all ranks agree
            return
        due = job.world.rank == 0 and self.publisher is not None and self.publisher.due()
        [go] = job.world.from_root([due])
        if go:
            self.run(job)

    def close(self, job: PublishedJob, clean: bool) -> None:
        """Publish the final version (``clean``), close the publisher."""
        try:
            store = job.store
            if clean and store is not None and store.version != (self.base or 0):
                self.run(job)
        finally:
            if self.publisher is not None and job.world.rank == 0:
                self.publisher.close()

    # -- publishing ----------------------------------------------------------------
    def run(self, job: PublishedJob) -> PublishReport | None:
        """Publish the job's current state now (every rank calls it; ``None``: unchanged)."""
        store, featurizer = job.store, job.featurizer
        if store is None or featurizer is None or job.model is None:
            return None
        world = job.world
        t0 = time.perf_counter()
        view: Any = store
        if world.size > 1:
            wanted = (
                world.rank == 0 and self.publisher is not None and self.publisher.snapshot_due()
            )
            [snapshot] = world.from_root([wanted])
            view = self._gather(store, world, bool(snapshot))
            failpoints.hit("publish_gathered")
            failpoints.hit(f"publish_gathered@{world.rank}")
        report = None
        if world.rank == 0 and self.publisher is not None:
            report = self.publisher.publish(
                view, job.model.state_dict(), featurizer.state_dict(), job.last_step_time
            )
            failpoints.hit("publish_sent")
        version = store.version
        self.seconds += time.perf_counter() - t0
        self.base = version
        if self.watermarks is not None:
            self.watermarks.advance(store, CONSUMER, version)
        if report is None:
            return None
        self.published += 1
        self.last_report = report
        log.debug(
            "published v%d: %d rows, %d tombstones, %d bytes in %.1f ms",
            report.version,
            report.rows,
            report.tombstones,
            report.bytes,
            report.seconds * 1e3,
        )
        return report

    def _gather(self, store: EmbeddingStore, world: Ranks, snapshot: bool) -> WorldRows | None:
        """Every rank's changed rows (and all rows for a snapshot) on rank 0."""
        base = self.base
        written: dict[str, tuple[I64, AnyArray]] = {}
        tombstones: dict[str, I64] = {}
        exported: dict[str, tuple[I64, AnyArray]] | None = {} if snapshot else None
        for t in store.tables:
            if base is not None:
                ids, rows = store.written_since(t.name, base)
                emb = np.ascontiguousarray(rows["emb"], dtype=np.float32).reshape(len(ids), t.dim)
                tomb = store.tombstones_since(t.name, base - 1)
            else:  # the first version of a run is a snapshot: no delta rows
                ids = np.empty(0, np.int64)
                emb = np.empty((0, t.dim), np.float32)
                tomb = np.empty(0, np.int64)
            arrays: list[AnyArray] = [ids, emb, np.asarray(tomb, dtype=np.int64)]
            if snapshot:
                parts = list(store.export_rows(t.name))
                all_ids = _concat([p[0] for p in parts], (), np.int64)
                all_emb = _concat(
                    [np.asarray(p[1]["emb"], np.float32).reshape(len(p[0]), t.dim) for p in parts],
                    (t.dim,),
                    np.float32,
                )
                arrays += [all_ids, all_emb]
            got = world.gather(arrays)
            if world.rank != 0:
                continue
            written[t.name] = (
                np.concatenate([g[0] for g in got]).astype(np.int64),
                np.concatenate([g[1] for g in got]).reshape(-1, t.dim),
            )
            tombstones[t.name] = np.unique(np.concatenate([g[2] for g in got]))
            if exported is not None:
                order_ids = np.concatenate([g[3] for g in got]).astype(np.int64)
                order = np.argsort(order_ids, kind="stable")
                rows_all = np.concatenate([g[4] for g in got]).reshape(-1, t.dim)
                exported[t.name] = (order_ids[order], rows_all[order])
        if world.rank != 0:
            return None
        return WorldRows(store.version, tuple(store.tables), written, tombstones, exported)
