"""Tables read through the service, plugged in where a model expects its store.

::

    trainer (a job that reads another job's table, frozen)
      StoreEmbeddingBag ─► RoutedStore._lookup_unique(t, ids)
                             ├─ t in sources ─► ServiceTable (the service, at a version)
                             │                  or LocalTable (a local copy; same answers)
                             └─ otherwise ────► the job's own EmbeddingStore (trained)
    replica (``embedding_service:``)
      ServingModel ─► ServiceRows.lookup(t, ids, version) ─► LfuRowCache hit?  ─► rows
                                                             └─ miss ─► service at version
                      ServiceRows.advance(version, delta): drop the delta's ids from the cache

Neither path ever stores a row for an id it has not seen: misses get the table's initial
value from the shard and are not cached.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

from embedding_store import EmbeddingStore
from pipeline.embedservice.cache import LfuRowCache
from pipeline.embedservice.client import ServiceClient
from pipeline.embedservice.metrics import ClientMetrics
from pipeline.embedservice.shard import RowUpdate, TableSchema
from pipeline.publishing.delta import ModelDelta
from pipeline.training.routed import RoutedStore, TableSource

I64 = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]

__all__ = [
    "LocalTable", "RoutedStore", "ServiceRows", "ServiceTable", "TableSource",
    "publish_delta", "store_update",
]  # fmt: skip


class ServiceTable:
    """A table read from the embedding service at ``version`` (``None``: the newest)."""

    def __init__(self, client: ServiceClient, table: str, version: int | None = None) -> None:
        self.client = client
        self.table = table
        self.version = version
        self.last_version: int | None = None

    def rows(self, ids: I64) -> F32:
        """Rows of ``ids`` at the pinned version."""
        got = self.client.lookup(self.table, ids, self.version, unique=True)
        self.last_version = got.version
        return got.emb


class LocalTable:
    """A table read from a local store copy; never creates rows (as the service does)."""

    def __init__(self, store: EmbeddingStore, schema: TableSchema) -> None:
        self.store = store
        self.schema = schema

    def rows(self, ids: I64) -> F32:
        """Rows of ``ids``: stored ones, else initial values."""
        found, block = self.store.read_rows(self.schema.name, ids)
        out = np.empty((len(ids), self.schema.dim), np.float32)
        out[found] = block["emb"][found]
        if not found.all():
            out[~found] = self.schema.initial(ids[~found])
        return out


class ServiceRows:
    """A replica's rows of ``tables`` from the service, with a bounded LFU hot cache.

    ``cache_rows`` bounds the cache of each table (0: no cache). The replica calls
    :meth:`advance` whenever it moves to a version (a delta, or a snapshot jump).
    """

    def __init__(
        self,
        client: ServiceClient,
        tables: Iterable[str],
        cache_rows: int = 100_000,
        metrics: ClientMetrics | None = None,
    ) -> None:
        self.client = client
        self.tables = frozenset(tables)
        self.cache_rows = cache_rows
        self.metrics = metrics if metrics is not None else client.metrics
        self._caches: dict[str, LfuRowCache] = {}

    def _cache(self, table: str) -> LfuRowCache:
        cache = self._caches.get(table)
        if cache is None:
            dim = self.client.schema(table).dim
            cache = self._caches[table] = LfuRowCache(dim, self.cache_rows)
        return cache

    def lookup(self, table: str, ids: I64, version: int) -> F32:
        """Rows of unique ``ids`` at ``version``; raises ServiceUnavailableError, never guesses."""
        cache = self._cache(table)
        hit, rows = cache.get(ids)
        miss = np.flatnonzero(~hit)
        if len(miss):
            got = self.client.lookup(table, ids[miss], version, unique=True)
            rows[miss] = got.emb
            keep = got.found
            cache.put(ids[miss][keep], got.emb[keep])
        self.metrics.rows.labels(source="cache").inc(len(ids) - len(miss))
        self.metrics.hit_ratio.labels(table=table).set(cache.hit_ratio)
        return rows

    def advance(self, version: int, delta: ModelDelta | None) -> None:
        """The replica now serves ``version``: forget rows the delta changed (all, if none)."""
        for name, cache in self._caches.items():
            if delta is None:
                cache.clear()
                continue
            for t in delta.tables:
                if t.name == name:
                    cache.invalidate(np.concatenate([t.ids, t.tombstones]))

    def cached_rows(self) -> int:
        """Rows held in the caches, all tables together."""
        return sum(len(c) for c in self._caches.values())


def publish_delta(
    client: ServiceClient, delta: ModelDelta, writer: str, tables: Iterable[str]
) -> None:
    """Push a published delta's rows of the ``tables`` ``writer`` owns to the service.

    Every owned table moves to ``delta.version`` (with no rows if the delta has none of it),
    so replicas and readers that follow the deltas find that version on every shard.
    Call it before the delta goes out to replicas.
    """
    by_name = {t.name: t for t in delta.tables}
    for name in tables:
        t = by_name.get(name)
        none = np.empty(0, np.int64)
        ids, emb, tombs = (
            (none, np.empty((0, client.schema(name).dim), np.float32), none)
            if t is None
            else (t.ids, t.emb, t.tombstones)
        )
        client.publish(RowUpdate(name, writer, delta.version, delta.base, ids, emb, tombs))


def store_update(
    store: EmbeddingStore, table: str, writer: str, version: int, since: int
) -> RowUpdate:
    """The rows of ``table`` written after store step ``since``, as service ``version``.

    For a job that owns a table and publishes it without a delta publisher; the update's
    base is ``None`` (the caller publishes versions in order).
    """
    ids, block = store.written_since(table, since)
    tombs = store.tombstones_since(table, since)
    emb = np.ascontiguousarray(block["emb"], np.float32)
    return RowUpdate(table, writer, version, None, ids, emb, tombs)
