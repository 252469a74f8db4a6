"""The shard's edges a mutation run found untested (issue 17): expiry with both bounds, the
prefetch counter over several tickets, stored reads of DRAM and RocksDB rows, and the sampled
path of ``smallest`` on distinct values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embedding_store import EmbeddingStore, OptimizerConfig, StoreConfig, TableConfig
from embedding_store.initializers import initial_values
from embedding_store.shard import smallest

LR = 0.25


class Clock:
    """A settable clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _store(
    path: Path, clock: Clock | None = None, shards: int = 1, **table: object
) -> EmbeddingStore:
    t = TableConfig("t", 2, OptimizerConfig("sgd", lr=LR), seed=3, **table)  # type: ignore[arg-type]
    return EmbeddingStore(StoreConfig(str(path), (t,), num_shards=shards), clock=clock or Clock())


def _train(store: EmbeddingStore, ids: list[int]) -> None:
    arr = np.array(ids, dtype=np.int64)
    store.lookup("t", arr)
    store.apply_gradients("t", arr, np.ones((len(arr), 2), np.float32))
    store.end_step()


@pytest.mark.parametrize("tier", ["dram", "rocksdb"])
def test_with_both_bounds_a_row_stale_by_either_expires(tmp_path: Path, tier: str) -> None:
    clock = Clock()
    with _store(tmp_path, clock, expire_after_steps=2, expire_after_seconds=60.0) as store:
        _train(store, [1, 2])  # step 1 at t=1000
        _train(store, [2])
        _train(store, [2])
        _train(store, [2])  # version 4: min_step 2; id 1 last seen at step 1 (time still 1000)
        if tier == "rocksdb":
            assert store.demote("t", 10) == 2
        assert store.expire(now=1001.0)["t"].tolist() == [1]  # stale by steps, fresh by time
        clock.now = 1002.0
        _train(store, [3])  # version 5, min_step 3: ids 2 (step 4) and 3 are fresh by steps
        if tier == "rocksdb":
            store.demote("t", 10)
        assert store.expire(now=1061.0)["t"].tolist() == [2]  # stale by time only (1000 < 1001)


def test_the_prefetch_counter_adds_up_over_tickets(tmp_path: Path) -> None:
    with _store(tmp_path, shards=2, hot_rows=100) as store:
        ids = np.arange(12, dtype=np.int64)
        store.lookup("t", ids)
        store.end_step()
        for expected in (12, 24):
            assert store.demote("t", 100) == 12  # all cold again
            ticket = store.prefetch([{"t": ids}])
            assert ticket.wait(timeout=20) >= 0.0  # a bound on a hang, not a timing assertion
            ticket.release()
            assert store.stats("t").prefetched == expected


@pytest.mark.parametrize("tier", ["dram", "rocksdb"])
def test_stored_reads_return_the_trained_rows(tmp_path: Path, tier: str) -> None:
    with _store(tmp_path) as store:
        _train(store, [1, 2])
        _train(store, [2])
        want = store.read_rows("t", np.array([1, 2], np.int64))[1]["emb"]
        init = initial_values(np.array([1, 2], np.int64), 2, 3, TableConfig("t", 2).init_scale)
        np.testing.assert_allclose(want, init - LR * np.array([[1.0, 1.0], [2.0, 2.0]]), rtol=1e-6)
        if tier == "rocksdb":
            assert store.demote("t", 10) == 2
        got = store.lookup_stored("t", np.array([2, 1, 2], np.int64)).numpy()
        np.testing.assert_array_equal(got, want[[1, 0, 1]])


@pytest.mark.parametrize("n", [1, 100, 4_999, 19_999])
def test_smallest_on_the_sampled_path_picks_exactly_the_n_smallest(n: int) -> None:
    values = np.random.default_rng(n).permutation(20_000).astype(np.float32)  # distinct
    picked = smallest(values, n)
    assert sorted(picked.tolist()) == sorted(np.argsort(values)[:n].tolist())


@pytest.mark.parametrize("seed", [41, 55, 158, 259])
def test_smallest_partitions_at_the_nth_value(seed: int) -> None:
    """Draws where partitioning at a neighbouring rank (n + 1) keeps a wrong value: most
    draws do not tell the two apart, these do."""
    rng = np.random.default_rng(seed)
    size = int(rng.integers(16_384, 60_000))
    values = rng.permutation(size).astype(np.float32)
    n = int(rng.integers(1, size - 2))
    picked = smallest(values, n)
    assert sorted(picked.tolist()) == sorted(np.argsort(values)[:n].tolist())


def test_a_row_in_slot_zero_is_unpinned_after_its_prefetch_and_deleted(tmp_path: Path) -> None:
    """The first row a tier holds sits in slot 0: it must be treated as stored everywhere."""
    with _store(tmp_path, hot_rows=100) as store:
        one = np.array([5], dtype=np.int64)
        _train(store, [5])  # the only row in DRAM: slot 0
        store.import_rows("t", np.array([6], np.int64), store.read_rows("t", one)[1])  # on disk
        # 5 is in DRAM: pinned, then unpinned; with 6 the prefetch also reads RocksDB
        for batch, rows in ((one, 1), (np.array([5, 6], dtype=np.int64), 2)):
            ticket = store.prefetch([{"t": batch}])
            assert ticket.wait(timeout=20) >= 0.0
            assert store.demote("t", 10) == 0  # pinned while the ticket is held
            ticket.release()
            assert store.demote("t", 10) == rows  # and free to go once released
            _train(store, [5])  # back in DRAM, slot 0 again
        store.delete_rows("t", one)
        assert not store.read_rows("t", one)[0][0]
        assert store.stats("t").hot_rows == 0


def test_the_eviction_counter_counts_rows_demoted(tmp_path: Path) -> None:
    with _store(tmp_path, hot_rows=100) as store:
        _train(store, list(range(12)))
        assert store.demote("t", 5) == 5
        assert store.demote("t", 100) == 7
        assert store.stats("t").evicted == 12


def test_a_row_used_after_it_was_marked_for_eviction_stays(tmp_path: Path) -> None:
    from embedding_store.rocks import RocksShard
    from embedding_store.shard import ShardTable

    db = RocksShard(str(tmp_path / "db"), ["t"])
    db.open()
    try:
        st_ = ShardTable(TableConfig("t", 2, hot_rows=4), db, 4, 0.5)
        ids = np.arange(6, dtype=np.int64)
        _, slots = st_.fetch(ids, step=1, now=0.0, pin=False)  # 6 rows over a budget of 4
        assert st_.start_eviction(0.0) == 2
        marked = np.flatnonzero(st_.hot.evicting[slots])
        _, again = st_.fetch(ids[marked], step=2, now=0.0, pin=False)  # used again: unmarked
        assert not st_.hot.evicting[again].any()
        assert st_.finish_eviction() == 0
        assert st_.hot.count() == 6
    finally:
        db.close()


def test_an_import_replaces_a_row_held_in_slot_zero(tmp_path: Path) -> None:
    with _store(tmp_path, hot_rows=100) as store:
        one = np.array([5], dtype=np.int64)
        _train(store, [5])  # the only row in DRAM: slot 0
        rows = store.read_rows("t", one)[1]
        rows["emb"] = [[7.0, -7.0]]
        store.import_rows("t", one, rows)
        np.testing.assert_array_equal(store.read_rows("t", one)[1]["emb"], [[7.0, -7.0]])
        np.testing.assert_array_equal(store.lookup_stored("t", one).numpy(), [[7.0, -7.0]])


def test_migration_promotes_the_most_used_of_many_cold_rows(tmp_path: Path) -> None:
    """More cold candidates than twice the budget: the scan keeps the most used, not the least."""
    with _store(tmp_path, hot_rows=4) as store:
        for i in range(20):  # id i used i + 1 times
            for _ in range(i + 1):
                store.lookup("t", np.array([i], np.int64))
                store.end_step()
        store.demote("t", 100)
        assert store.stats("t").hot_rows == 0
        assert store.migrate().promoted == 4
        before = store.stats("t").hits
        store.lookup("t", np.array([16, 17, 18, 19], np.int64))
        assert store.stats("t").hits - before == 4  # all four were in DRAM


def test_one_row_over_the_budget_is_marked_for_eviction(tmp_path: Path) -> None:
    from embedding_store.rocks import RocksShard
    from embedding_store.shard import ShardTable

    db = RocksShard(str(tmp_path / "db"), ["t"])
    db.open()
    try:
        st_ = ShardTable(TableConfig("t", 2, hot_rows=4), db, 4, 0.5)
        st_.fetch(np.arange(5, dtype=np.int64), step=1, now=0.0, pin=False)
        assert st_.start_eviction(0.0) == 1
        assert st_.start_eviction(0.0) == 0  # already marked
        assert st_.finish_eviction() == 1
        assert st_.hot.count() == 4
    finally:
        db.close()


def test_rows_written_at_the_base_version_are_not_written_since(tmp_path: Path) -> None:
    """Past 64 entries the write log folds into one chunk: the rows' versions must filter it."""
    with _store(tmp_path) as store:
        _train(store, [1])  # version 1
        base = store.version
        for _ in range(70):
            _train(store, [2])
        ids, rows = store.written_since("t", base)
        assert ids.tolist() == [2]
        assert rows["version"].tolist() == [store.version]
