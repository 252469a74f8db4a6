"""The tables a job owns, published to the embedding service as it trains (a job plugin).

::

    job.open()        ─► open(job):  register each owned table (schema from the job's store,
                                      owner = remote.writer); continue after the newest version
                                      the service holds
    step boundary     ─► at_step(job): with deltas (it wraps the DeltaPublish plugin): the
                                       delta plugin's step first; it sent version v ─► publish v
                                       alone: publish_interval_s passed, store moved ─► next v
    stream idles      ─► at_step(job, idle=True): store moved since the last one ─► publish
    job.close(clean)  ─► close(job):  (the delta plugin's final version first) store moved ─►
                                       publish

A publication is one :class:`~pipeline.embedservice.shard.RowUpdate` per owned table: the
rows written (and ids deleted) since the last one, read at one step boundary; the first of a
process sends every row (``base`` unchecked); the job's checkpoints keep the store's write
log until the plugin has read it (a watermark). With a delta publisher the service's versions
are the deltas' versions, so a replica reading the service at its delta version finds it
(it may ask a moment before the shards have it: the client retries, never guesses).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np

from embedding_store import EmbeddingStore
from operators.checkpoint.write_log import WriteLogWatermarks
from pipeline.embedservice.client import ServiceClient
from pipeline.embedservice.shard import RowUpdate, TableSchema
from pipeline.training.plugin import JobView

log = logging.getLogger(__name__)

WATERMARK = "embedding_service"
"""This plugin's write-log watermark: the store version it last published."""


class VersionedPublisher(Protocol):
    """The delta publisher's last version (``None`` before its first)."""

    @property
    def version(self) -> int | None:
        """The last version sent."""
        ...


class DeltaPlugin(Protocol):
    """The delta-publishing job plugin (:class:`pipeline.publishing.operator.DeltaPublish`)."""

    @property
    def publisher(self) -> VersionedPublisher | None:
        """Its publisher (rank 0)."""
        ...

    def open(self, job: Any) -> None:
        """Start publishing."""
        ...

    def at_step(self, job: Any, idle: bool) -> None:
        """Publish a version if due."""
        ...

    def close(self, job: Any, clean: bool) -> None:
        """Publish the final version."""
        ...


class OwnedTablesPublish:
    """A job plugin that publishes the job's ``owned`` tables (model -> service name).

    ``deltas``: the job's delta plugin, which this one wraps (runs it first at each hook) and
    whose versions it publishes; ``None``: this plugin numbers versions itself, one each
    ``interval_s``. Constructing does no I/O.
    """

    name = "service_publish"

    def __init__(
        self,
        client: ServiceClient,
        writer: str,
        owned: Mapping[str, str],
        *,
        interval_s: float = 30.0,
        deltas: DeltaPlugin | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.writer = writer
        self.owned = dict(owned)
        self.interval_s = interval_s
        self.deltas = deltas
        self.clock = clock
        self.version = 0  # the newest version the service holds of the owned tables
        self.published = 0  # publications in this process
        self.base: int | None = None  # store version of the last publication (None: all rows)
        self._delta_seen: int | None = None
        self._last_at: float | None = None
        self._marks: WriteLogWatermarks | None = None  # the job's write-log watermarks

    def _publisher(self) -> VersionedPublisher | None:
        return self.deltas.publisher if self.deltas is not None else None

    def open(self, job: JobView) -> None:
        """Register the owned tables; continue after the service's newest version."""
        if self.deltas is not None:
            self.deltas.open(job)
        self._marks = job.watermarks  # checkpoints keep the write log until we have read it
        self._marks.register(WATERMARK)
        store = job.store
        assert store is not None
        for table, name in self.owned.items():
            cfg = store.config.table(table)
            schema = TableSchema(name, cfg.dim, cfg.seed, cfg.init_scale, self.writer)
            self.client.register(schema)
            newest = min(v for _, v in self.client.versions(name))
            self.version = max(self.version, newest)
        publisher = self._publisher()
        self._delta_seen = publisher.version if publisher is not None else None
        self._last_at = self.clock()
        log.info(
            "publishing tables %s to the embedding service as %r after version %d",
            sorted(self.owned.values()),
            self.writer,
            self.version,
        )

    def at_step(self, job: JobView, idle: bool) -> None:
        """Publish when the delta publisher did, or when due (see the module docstring)."""
        if self.deltas is not None:
            self.deltas.at_step(job, idle)
        self._follow(job, idle)

    def _follow(self, job: JobView, idle: bool) -> None:
        store = job.store
        if store is None:
            return
        if self.deltas is not None:
            publisher = self._publisher()
            sent = publisher.version if publisher is not None else None
            if sent is not None and sent != self._delta_seen:
                self._delta_seen = sent
                self.publish(store, sent)
            return
        assert self._last_at is not None
        if idle or self.clock() - self._last_at >= self.interval_s:
            self._last_at = self.clock()
            self.publish(store, self.version + 1)

    def close(self, job: JobView, clean: bool) -> None:
        """A clean stop publishes what was trained since the last publication."""
        try:
            if self.deltas is not None:
                self.deltas.close(job, clean)
            if clean:
                self._follow(job, idle=True)
        finally:
            self.client.close()

    def publish(self, store: EmbeddingStore, version: int) -> int | None:
        """Publish the owned tables as ``version`` if the store moved; the version, or None."""
        with store.step_boundary() as store_version:
            if store_version == self.base or version <= self.version:
                return None
            updates = [self._update(store, t, name, version) for t, name in self.owned.items()]
        for update in updates:
            self.client.publish(update)
        rows = sum(len(u.ids) for u in updates)
        log.info("embedding service: published version %d (%d rows)", version, rows)
        self.version, self.base = version, store_version
        self.published += 1
        if self._marks is not None:
            self._marks.advance(store, WATERMARK, store_version)
        return version

    def _update(self, store: EmbeddingStore, table: str, name: str, version: int) -> RowUpdate:
        base = self.base
        if base is None:
            parts = list(store.export_rows(table))
            ids = np.concatenate([i for i, _ in parts]) if parts else np.empty(0, np.int64)
            emb = (
                np.concatenate([np.asarray(r["emb"], np.float32) for _, r in parts])
                if parts
                else np.empty((0, store.config.table(table).dim), np.float32)
            )
            tombs = np.empty(0, np.int64)
            prior = None
        else:
            ids, block = store.written_since(table, base)
            emb = np.asarray(block["emb"], np.float32)
            tombs = store.tombstones_since(table, base - 1)
            prior = self.version
        dim = store.config.table(table).dim
        emb = np.ascontiguousarray(emb, np.float32).reshape(len(ids), dim)
        return RowUpdate(name, self.writer, version, prior, np.asarray(ids, np.int64), emb, tombs)
