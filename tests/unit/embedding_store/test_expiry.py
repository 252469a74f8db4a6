"""Expiry by steps and by seconds, in both tiers, and against prefetches pinned or in flight."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embedding_store import EmbeddingStore, OptimizerConfig, StoreConfig, TableConfig
from embedding_store.initializers import initial_values

LR = 0.25


class Clock:
    """A settable clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _store(path: Path, clock: Clock, **table: Any) -> EmbeddingStore:
    t = TableConfig("t", 2, OptimizerConfig("sgd", lr=LR), seed=3, **table)
    return EmbeddingStore(StoreConfig(str(path), (t,), num_shards=1), clock=clock)


def _train(store: EmbeddingStore, ids: list[int]) -> None:
    arr = np.array(ids, dtype=np.int64)
    store.lookup("t", arr)
    store.apply_gradients("t", arr, np.ones((len(arr), 2), np.float32))
    store.end_step()


def _init(i: int) -> np.ndarray:
    return initial_values(np.array([i], np.int64), 2, 3, 0.05)[0]


@pytest.mark.parametrize("tier", ["dram", "rocksdb"])
def test_expire_after_steps_deletes_exactly_the_rows_unseen_that_long(
    tmp_path: Path, tier: str
) -> None:
    clock = Clock()
    with _store(tmp_path, clock, expire_after_steps=2) as store:
        _train(store, [1, 2])  # step 1
        _train(store, [2])  # step 2
        _train(store, [3])  # step 3: version 3, min_step 1 keeps rows last seen at 1
        if tier == "rocksdb":
            assert store.demote("t", 10) == 3
        assert store.expire()["t"].tolist() == []
        _train(store, [3])  # step 4: min_step 2 drops id 1 (last seen at 1)
        if tier == "rocksdb":
            store.demote("t", 10)
        assert store.expire()["t"].tolist() == [1]
        assert store.tombstones_since("t", 0).tolist() == [1]
        found, rows = store.read_rows("t", np.array([1, 2, 3], np.int64))
        assert found.tolist() == [False, True, True]
        np.testing.assert_allclose(rows["emb"][1], _init(2) - 2 * LR, rtol=1e-6)
        # an expired id comes back as a new row: initial value, trained once
        _train(store, [1])
        found, rows = store.read_rows("t", np.array([1], np.int64))
        np.testing.assert_allclose(rows["emb"][0], _init(1) - LR, rtol=1e-6)
        assert rows["version"][0] == 5


@pytest.mark.parametrize("tier", ["dram", "rocksdb"])
def test_expire_after_seconds_uses_the_last_seen_time(tmp_path: Path, tier: str) -> None:
    clock = Clock()
    with _store(tmp_path, clock, expire_after_seconds=60.0) as store:
        _train(store, [1, 2])  # seen at 1000
        clock.now = 1050.0
        _train(store, [2])  # seen at 1050
        if tier == "rocksdb":
            store.demote("t", 10)
        assert store.expire(now=1059.0)["t"].tolist() == []  # 1000 >= 999
        assert store.expire(now=1061.0)["t"].tolist() == [1]  # 1000 < 1001
        assert store.expire(now=1111.0)["t"].tolist() == [2]
        assert store.stats("t", count_cold=True).cold_rows == 0
        assert store.stats("t").hot_rows == 0


def test_expiry_also_forgets_sightings_of_unadmitted_ids(tmp_path: Path) -> None:
    clock = Clock()
    with _store(tmp_path, clock, admit_after=2, expire_after_steps=1) as store:
        _train(store, [7])  # one sighting at step 1
        _train(store, [8])
        _train(store, [8])  # id 8 admitted at step 3
        assert store.sightings("t")["id"].tolist() == [7]
        store.expire()  # version 3, min_step 2: id 7's sighting (step 1) goes
        assert len(store.sightings("t")) == 0
        _train(store, [7])  # counts as a first sighting again
        assert not store.read_rows("t", np.array([7], np.int64))[0][0]


def test_a_row_pinned_by_a_prefetch_expires_like_any_other(tmp_path: Path) -> None:
    """Whether a prefetch has pinned a stale row must not decide whether it expires."""
    clock = Clock()
    with _store(tmp_path, clock, expire_after_steps=1) as store:
        _train(store, [1])
        _train(store, [2])
        _train(store, [2])
        ticket = store.prefetch([{"t": np.array([1], np.int64)}])
        ticket.wait()
        assert store.expire()["t"].tolist() == [1]
        assert not store.read_rows("t", np.array([1], np.int64))[0][0]
        _train(store, [1])  # the pending batch: a new row, not the expired one
        ticket.release()
        rows = store.read_rows("t", np.array([1], np.int64))[1]
        np.testing.assert_allclose(rows["emb"][0], _init(1) - LR, rtol=1e-6)
        # the retired slot was freed once its last pin went, and is reused without harm
        hot = store._shard_tables("t")[0].hot
        assert hot.high == 3  # slots of 1 (retired), 2, and the new 1
        _train(store, [5, 6])
        assert store.stats("t").hot_rows == 4
        assert hot.high == 4  # one of 5 and 6 took the retired slot


class _BlockingCold:
    """Wraps a cold tier: the first ``get`` reads, then waits until released."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.reading = threading.Event()
        self.go = threading.Event()
        self.calls = 0

    def get(self, ids: np.ndarray) -> Any:
        out = self.inner.get(ids)
        self.calls += 1
        if self.calls == 1:
            self.reading.set()
            assert self.go.wait(10)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.parametrize("admit_after", [1, 2])
def test_expiry_during_a_prefetch_read_does_not_resurrect_the_row(
    tmp_path: Path, admit_after: int
) -> None:
    clock = Clock()
    with _store(tmp_path, clock, expire_after_steps=1, admit_after=admit_after) as store:
        for _ in range(admit_after):
            _train(store, [1])  # admitted and trained once
        trained = store.read_rows("t", np.array([1], np.int64))[1]["emb"][0].copy()
        assert not np.allclose(trained, _init(1))
        store.demote("t", 10)  # the row now lives in RocksDB only
        _train(store, [2])
        _train(store, [2])
        shard = store._shard_tables("t")[0]
        blocking = _BlockingCold(shard.cold)
        shard.cold = blocking  # type: ignore[assignment]
        ticket = store.prefetch([{"t": np.array([1], np.int64)}])
        assert blocking.reading.wait(10)  # the prefetch holds the old row, outside the lock
        assert store.expire()["t"].tolist() == [1]
        blocking.go.set()
        ticket.wait()
        assert not store.read_rows("t", np.array([1], np.int64))[0][0]
        emb = store.lookup("t", np.array([1], np.int64)).numpy()[0]
        store.end_step()
        ticket.release()
        np.testing.assert_array_equal(emb, _init(1))  # not the trained value
