"""A bounded LFU cache of one table's rows on a replica, invalidated by deltas.

Rows sit in arrays sorted by id, so a batch is looked up with one ``searchsorted`` and
inserted with one merge; no Python loop runs over ids. When an insert would overflow the
capacity, the least-frequently used rows are evicted in one go (an eighth of the capacity at
least, so evictions are rare) and every count is halved (aging)::

    ids   [ 3 | 8 | 21 | 40 | ... ]   sorted, unique          (n <= capacity)
    emb   [ row 3 | row 8 | ... ]     float32 (n, dim)
    freq  [ 2.0 | 7.5 | 1.0 | ... ]   hits since insert, halved at each eviction

Every cached row is the value at the replica's current version: a delta's upserts and
tombstones are dropped (:meth:`LfuRowCache.invalidate`) before the replica moves on to it.

>>> import numpy as np
>>> cache = LfuRowCache(dim=2, capacity=2)
>>> cache.put(np.array([5, 9], np.int64), np.ones((2, 2), np.float32))
>>> hit, rows = cache.get(np.array([9, 4], np.int64))
>>> hit.tolist(), rows[0].tolist()
([True, False], [1.0, 1.0])
>>> cache.invalidate(np.array([9], np.int64)); len(cache)
1
"""

from __future__ import annotations

import threading

import numpy as np
import numpy.typing as npt

I64 = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]
B = npt.NDArray[np.bool_]


class LfuRowCache:
    """Rows of one table by id, at most ``capacity`` of them (see the module docstring)."""

    def __init__(self, dim: int, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"cache capacity must be >= 0, got {capacity}")
        self.dim = dim
        self.capacity = capacity
        self._ids: I64 = np.empty(0, np.int64)
        self._emb: F32 = np.empty((0, dim), np.float32)
        self._freq = np.empty(0, np.float32)
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._ids)

    def _find(self, ids: I64) -> tuple[B, I64]:
        pos = np.searchsorted(self._ids, ids)
        pos = np.minimum(pos, max(len(self._ids) - 1, 0))
        hit = self._ids[pos] == ids if len(self._ids) else np.zeros(len(ids), np.bool_)
        return hit, pos

    def get(self, ids: I64) -> tuple[B, F32]:
        """``(hit, rows)``: which ids are cached, and their rows (garbage where not hit)."""
        with self._lock:
            hit, pos = self._find(ids)
            rows = self._emb[pos] if len(self._ids) else np.zeros((len(ids), self.dim), np.float32)
            np.add.at(self._freq, pos[hit], 1.0)
            n = int(hit.sum())
            self.hits += n
            self.misses += len(ids) - n
            return hit, rows

    def put(self, ids: I64, emb: F32) -> None:
        """Cache rows of unique ``ids`` not cached yet (those beyond the capacity are dropped)."""
        if self.capacity == 0 or len(ids) == 0:
            return
        with self._lock:
            hit, _ = self._find(ids)
            ids, emb = ids[~hit], emb[~hit]
            if len(ids) > self.capacity:
                ids, emb = ids[: self.capacity], emb[: self.capacity]
            overflow = len(self._ids) + len(ids) - self.capacity
            if overflow > 0:
                self._evict(max(overflow, self.capacity // 8))
            order = np.argsort(ids, kind="stable")
            ids, emb = ids[order], emb[order]
            at = np.searchsorted(self._ids, ids)
            self._ids = np.insert(self._ids, at, ids)
            self._emb = np.insert(self._emb, at, emb, axis=0)
            self._freq = np.insert(self._freq, at, np.ones(len(ids), np.float32))

    def _evict(self, n: int) -> None:
        n = min(n, len(self._ids))
        if n <= 0:
            return
        drop = np.argpartition(self._freq, n - 1)[:n]
        keep = np.ones(len(self._ids), np.bool_)
        keep[drop] = False
        self._ids, self._emb = self._ids[keep], self._emb[keep]
        self._freq = self._freq[keep] * np.float32(0.5)
        self.evicted += n

    def invalidate(self, ids: I64) -> None:
        """Drop the rows of ``ids`` (a delta's upserts and tombstones)."""
        if len(ids) == 0 or len(self._ids) == 0:
            return
        with self._lock:
            keep = ~np.isin(self._ids, ids)
            self._ids, self._emb, self._freq = self._ids[keep], self._emb[keep], self._freq[keep]

    def clear(self) -> None:
        """Drop every row (the replica jumped to a snapshot)."""
        with self._lock:
            self._ids = np.empty(0, np.int64)
            self._emb = np.empty((0, self.dim), np.float32)
            self._freq = np.empty(0, np.float32)

    @property
    def hit_ratio(self) -> float:
        """Hits over lookups since the cache was made."""
        total = self.hits + self.misses
        return self.hits / total if total else 0.0
