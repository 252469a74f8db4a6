"""A job's store with some tables read frozen from elsewhere (the service, or a local copy).

::

    StoreEmbeddingBag ─► RoutedStore._lookup_unique(t, ids)
                           ├─ t in sources ─► TableSource.rows(ids)   (never trained)
                           └─ otherwise ────► the job's own EmbeddingStore (trained)

The job takes the sources (``TrainJob(table_sources=...)``); where they come from is the
CLI's business (:mod:`pipeline.embedservice` for ``remote:`` tables).

>>> import numpy as np
>>> class Ones:
...     def rows(self, ids): return np.ones((len(ids), 2), np.float32)
>>> routed = RoutedStore(None, {"users": Ones()})
>>> routed._lookup_unique("users", np.array([4, 5])).tolist()
[[1.0, 1.0], [1.0, 1.0]]
>>> routed.local_ids({"users": np.array([4]), "ads": np.array([1])})
{'ads': array([1])}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import torch

from embedding_store import EmbeddingStore, PrefetchTicket

I64 = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]


class TableSource(Protocol):
    """Rows of one frozen table, by id (unique ids in, ``(n, dim)`` float32 out)."""

    def rows(self, ids: I64) -> F32:
        """Rows of ``ids``; an id never seen gets the table's initial value."""
        ...


class RoutedStore:
    """What a model calls on its store: frozen ``sources`` for some tables, ``local`` for the rest.

    Give it to ``build_model`` and ``OnlineTrainer`` in place of the job's store: the job
    trains its own tables as before, and reads the others (never training them).
    """

    def __init__(self, local: EmbeddingStore, sources: Mapping[str, TableSource]) -> None:
        self.local = local
        self.sources = dict(sources)

    def _lookup_unique(self, table: str, uniq: I64, pin: bool = True) -> F32:
        source = self.sources.get(table)
        if source is None:
            return self.local._lookup_unique(table, uniq, pin)
        return source.rows(uniq)

    def register(self, table: str, uniq_ids: I64, weight: torch.Tensor) -> None:
        """Remember a local table's rows for ``step``; a frozen table's gradient is dropped."""
        if table not in self.sources:
            self.local.register(table, uniq_ids, weight)

    def local_ids(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """The part of ``table -> ids`` the local store holds."""
        return {t: ids for t, ids in batch.items() if t not in self.sources}

    def prefetch(self, batches: Sequence[Mapping[str, object]]) -> PrefetchTicket:
        """Prefetch the local tables' rows of upcoming batches (frozen ones are read on use)."""
        return self.local.prefetch([self.local_ids(b) for b in batches])

    def __getattr__(self, name: str) -> Any:
        return getattr(self.local, name)  # step, version, stats, ... of the job's store
