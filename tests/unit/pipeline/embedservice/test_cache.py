"""LfuRowCache: bounded, keeps the frequent rows, forgets what deltas change."""

from __future__ import annotations

import numpy as np

from pipeline.embedservice.cache import LfuRowCache
from pipeline.embedservice.routing import shard_of, split


def _rows(ids: np.ndarray) -> np.ndarray:
    return np.repeat(ids.astype(np.float32)[:, None], 2, axis=1)


def test_rows_come_back_by_id() -> None:
    cache = LfuRowCache(2, 100)
    ids = np.array([40, 3, 17], np.int64)
    cache.put(ids, _rows(ids))
    hit, rows = cache.get(np.array([17, 5, 40], np.int64))
    assert hit.tolist() == [True, False, True]
    assert rows[hit][:, 0].tolist() == [17.0, 40.0]


def test_capacity_holds_and_frequent_rows_stay() -> None:
    cache = LfuRowCache(2, 64)
    hot = np.arange(8, dtype=np.int64)
    cache.put(hot, _rows(hot))
    for start in range(100, 2000, 50):
        cache.get(hot)  # read in every round: hot
        cold = np.arange(start, start + 50, dtype=np.int64)
        cache.put(cold, _rows(cold))  # each read once: cold
        assert len(cache) <= 64
    hit, rows = cache.get(hot)
    assert hit.all()
    np.testing.assert_array_equal(rows, _rows(hot))


def test_invalidate_and_clear() -> None:
    cache = LfuRowCache(2, 10)
    ids = np.arange(5, dtype=np.int64)
    cache.put(ids, _rows(ids))
    cache.invalidate(np.array([1, 3, 99], np.int64))
    assert cache.get(ids)[0].tolist() == [True, False, True, False, True]
    cache.clear()
    assert len(cache) == 0


def test_routing_is_a_partition() -> None:
    ids = np.random.default_rng(0).integers(-(2**62), 2**62, 10_000)
    parts = split(ids, 4)
    assert sorted(np.concatenate(parts).tolist()) == list(range(10_000))
    for i, pos in enumerate(parts):
        assert (shard_of(ids[pos], 4) == i).all()
    assert min(len(p) for p in parts) > 2000
