"""The shard's migration, prefetch and expiry edges a mutation run found untested (issue 17).

Each test drives one :class:`ShardTable` over a real RocksDB shard with rows whose LFU counts
are set by hand. The races (a row trained, demoted, expired, deleted or overwritten while a
prefetch reads RocksDB outside the lock) are played deterministically: the tier's ``get`` is
wrapped so the competing call runs right after the prefetch's first read returned.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embedding_store import TableConfig
from embedding_store.initializers import initial_values
from embedding_store.rocks import RocksShard
from embedding_store.shard import ShardTable

Ids = list[int]


@contextmanager
def _shard(path: Path, budget: int | None, admit_after: int = 1) -> Iterator[ShardTable]:
    db = RocksShard(str(path / "db"), ["t"])
    db.open()
    try:
        table = TableConfig("t", 2, hot_rows=budget, admit_after=admit_after)
        yield ShardTable(table, db, budget, 0.5)
    finally:
        db.close()


def _ids(ids: Ids) -> np.ndarray[Any, np.dtype[np.int64]]:
    return np.array(ids, dtype=np.int64)


def _rows(st: ShardTable, freq: list[float], emb: float = 0.0) -> np.ndarray[Any, Any]:
    """Rows used ``freq`` times in the current epoch, embedding ``emb`` everywhere."""
    rows = np.zeros(len(freq), dtype=st.layout.dtype)
    rows["emb"] = emb
    rows["freq"] = freq
    rows["epoch"] = st.epoch
    return rows


def _cold(st: ShardTable, ids: Ids, freq: list[float], emb: float = 0.0) -> None:
    st.cold.put(_ids(ids), _rows(st, freq, emb))


def _hot(st: ShardTable, ids: Ids, freq: list[float]) -> np.ndarray[Any, Any]:
    """Rows in DRAM only (dirty: RocksDB does not have them)."""
    return st.hot.insert(_ids(ids), _rows(st, freq), dirty=True)


def _hot_ids(st: ShardTable) -> list[int]:
    return sorted(st.hot.ids[st.hot.live_slots()].tolist())


def _emb(st: ShardTable, ids: Ids) -> list[list[float]]:
    found, rows = st.read(_ids(ids))
    assert found.all()
    out: list[list[float]] = rows["emb"].tolist()
    return out


def _racing_prefetch(st: ShardTable, ids: Ids, meanwhile: Callable[[], object]) -> list[int]:
    """Prefetch ``ids``; ``meanwhile`` runs once, after the prefetch's RocksDB read."""
    real = st.cold.get
    ran: list[bool] = []

    def get(ids_: np.ndarray[Any, Any]) -> Any:
        out = real(ids_)
        if not ran:
            ran.append(True)
            meanwhile()
        return out

    st.cold.get = get  # type: ignore[method-assign,assignment]
    try:
        slots: list[int] = st.prefetch(_ids(ids)).tolist()
    finally:
        del st.cold.get
    assert ran
    return slots


# -- migrate -------------------------------------------------------------------------------
def test_migration_fills_the_free_room_with_the_most_used_cold_rows(tmp_path: Path) -> None:
    with _shard(tmp_path, budget=4) as st:
        _hot(st, [1, 2, 3], [10.0, 10.0, 10.0])
        _cold(st, [4, 5, 6, 7, 8], [1.0, 5.0, 2.0, 3.0, 4.0])
        assert st.migrate() == (1, 0)  # one free row; no cold row beats a hot one
        assert _hot_ids(st) == [1, 2, 3, 5]
        # a promoted row is clean: demoting it again writes only the three others
        assert st.demote(10) == 4
        assert st.counters.written_back == 3


def test_migration_swaps_the_least_used_unpinned_row_for_a_hotter_cold_one(
    tmp_path: Path,
) -> None:
    with _shard(tmp_path, budget=2) as st:
        pinned = _hot(st, [1], [1.0])
        st.hot.pins[pinned] += 1
        _hot(st, [2], [2.0])
        _cold(st, [3], [10.0])
        assert st.migrate() == (1, 1)
        assert _hot_ids(st) == [1, 3]  # the pinned row stays, however little used
        assert st.read(_ids([2]))[0].tolist() == [True]  # demoted, not lost


def test_migration_does_not_swap_equally_used_rows(tmp_path: Path) -> None:
    with _shard(tmp_path, budget=2) as st:
        _hot(st, [1, 2], [2.0, 3.0])
        _cold(st, [3], [2.0])
        assert st.migrate() == (0, 0)
        assert _hot_ids(st) == [1, 2]


def test_migration_without_a_budget_moves_nothing(tmp_path: Path) -> None:
    with _shard(tmp_path, budget=None) as st:
        _cold(st, [1, 2], [5.0, 6.0])
        assert st.migrate() == (0, 0)
        assert _hot_ids(st) == []


@pytest.mark.parametrize(("scan_limit", "promoted"), [(5, 7), (8, 7), (9, 11)])
def test_migration_scans_whole_chunks_up_to_the_scan_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scan_limit: int, promoted: int
) -> None:
    """Chunks of 4 rows; id i used i + 1 times: the best row scanned is the last one."""
    with _shard(tmp_path, budget=1) as st:
        _cold(st, list(range(16)), [float(i + 1) for i in range(16)])
        real = st.cold.iterate
        monkeypatch.setattr(st.cold, "iterate", lambda chunk=4: real(4))
        assert st.migrate(scan_limit=scan_limit) == (1, 0)
        assert _hot_ids(st) == [promoted]


@pytest.mark.parametrize("seed", [6, 34])
def test_migration_keeps_exactly_the_most_used_when_it_trims_the_scan(
    tmp_path: Path, seed: int
) -> None:
    """1000 cold rows for a budget of 200: the scan trims to the 200 most used. Partitioning
    at a neighbouring rank keeps a wrong row in these draws (most draws do not tell)."""
    freq = (np.random.default_rng(seed).permutation(1000) + 1).astype(np.float32)
    with _shard(tmp_path, budget=200) as st:
        _cold(st, list(range(1000)), freq.tolist())
        assert st.migrate() == (200, 0)
        assert _hot_ids(st) == sorted(np.argsort(-freq)[:200].tolist())


@pytest.mark.parametrize("then_evict", [False, True])
def test_a_prefetch_racing_a_migration_that_demotes_its_row_reads_it_again(
    tmp_path: Path, then_evict: bool
) -> None:
    """Row 1 is read from RocksDB (value 0), then trained in DRAM and demoted by a migration
    (and, in one case, an eviction follows) before the prefetch inserts it: it must read the
    trained value again, not put the stale one in DRAM."""
    with _shard(tmp_path, budget=1) as st:
        _hot(st, [9], [0.5])
        assert st.demote(1) == 1  # the eviction generation is no longer 0
        _cold(st, [1], [0.0], emb=0.0)
        _cold(st, [2], [100.0], emb=5.0)
        _cold(st, [3], [0.0], emb=7.0)
        trained: list[list[list[float]]] = []

        def train_then_migrate() -> None:
            st.fetch(_ids([1]), step=1, now=0.0, pin=False)
            st.apply(_ids([1]), np.ones((1, 2), np.float32), 1, 1, 0.0)
            trained.append(_emb(st, [1]))
            assert st.migrate() == (1, 1)  # 2 (used 100 times) replaces 1
            if then_evict:
                st.fetch(_ids([3]), step=1, now=0.0, pin=False)
                assert st.demote(2) == 2

        _racing_prefetch(st, [1], train_then_migrate)
        assert trained[0] != [[0.0, 0.0]]
        assert _emb(st, [1]) == trained[0]


# -- prefetch ------------------------------------------------------------------------------
def test_each_prefetch_of_a_dram_row_adds_a_pin_and_pins_nothing_else(tmp_path: Path) -> None:
    with _shard(tmp_path, budget=None) as st:
        st.fetch(_ids([1, 2]), step=1, now=0.0, pin=False)
        first = st.prefetch(_ids([1]))
        second = st.prefetch(_ids([1]))
        st.unpin(first)
        assert st.demote(10) == 1  # 2; 1 still has a pin
        assert _hot_ids(st) == [1]
        st.unpin(second)
        assert st.demote(10) == 1


def test_prefetched_rows_are_clean_and_not_marked_for_eviction(tmp_path: Path) -> None:
    with _shard(tmp_path, budget=None) as st:
        st.fetch(_ids([1]), step=1, now=0.0, pin=False)
        st.flush()
        _cold(st, [2], [1.0])
        written = st.counters.written_back
        st.unpin(st.prefetch(_ids([1, 2, 3])))  # in DRAM, in RocksDB, new
        assert st.finish_eviction() == 0  # nothing was marked
        assert _hot_ids(st) == [1, 2, 3]
        assert st.demote(10) == 3
        assert st.counters.written_back == written  # nothing to write
        assert st.read(_ids([1, 2, 3]))[0].tolist() == [True, True, False]  # 3 never real


def test_a_prefetch_clears_the_eviction_mark_of_a_row_it_pins(tmp_path: Path) -> None:
    with _shard(tmp_path, budget=2) as st:
        _hot(st, [1, 2], [5.0, 6.0])
        _hot(st, [3], [1.0])
        assert st.start_eviction(0.0) == 1
        assert st.hot.evicting[st.hot.find(_ids([3]))].tolist() == [True]
        st.unpin(st.prefetch(_ids([3])))
        assert st.finish_eviction() == 0
        assert _hot_ids(st) == [1, 2, 3]


def test_the_prefetch_counts_its_cold_reads(tmp_path: Path) -> None:
    with _shard(tmp_path, budget=None) as st:
        st.fetch(_ids([7]), step=1, now=0.0, pin=False)  # one cold read
        _cold(st, [1, 2], [1.0, 1.0])
        st.unpin(st.prefetch(_ids([1, 2, 7])))
        assert st.demote(10) == 3
        st.unpin(st.prefetch(_ids([1, 2])))
        assert st.counters.cold_reads == 5


def test_a_prefetch_reads_rocksdb_once_when_nothing_evicted_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _shard(tmp_path, budget=None) as st:
        _cold(st, [1, 2], [1.0, 1.0])
        real = st.cold.get
        reads: list[list[int]] = []

        def get(ids: np.ndarray[Any, Any]) -> Any:
            reads.append(ids.tolist())
            return real(ids)

        monkeypatch.setattr(st.cold, "get", get)
        assert len(st.prefetch(_ids([1, 2, 3]))) == 3
        assert reads == [[1, 2, 3]]


def test_a_prefetched_new_id_is_found_by_its_lookup(tmp_path: Path) -> None:
    with _shard(tmp_path, budget=None) as st:
        slots = st.prefetch(_ids([4]))
        assert len(slots) == 1
        assert st.read(_ids([4]))[0].tolist() == [False]  # invisible until looked up
        st.fetch(_ids([4]), step=1, now=0.0)
        assert (st.counters.hits, st.counters.misses, st.counters.created) == (1, 0, 1)


def test_a_prefetch_of_an_unadmitted_id_pins_no_row(tmp_path: Path) -> None:
    """With ``admit_after=2`` a new id gets no slot (-1): no row may be pinned for it (the
    last slot of a full tier is the one a -1 would reach)."""
    with _shard(tmp_path, budget=None, admit_after=2) as st:
        _hot(st, list(range(1024)), [1.0] * 1024)  # the tier's whole first allocation
        assert st.prefetch(_ids([5000])).tolist() == []
        assert st.demote(2000) == 1024


@pytest.mark.parametrize("stored", [True, False])
def test_a_row_loaded_into_slot_zero_during_the_prefetch_read_is_not_loaded_twice(
    tmp_path: Path, stored: bool
) -> None:
    """A lookup loads (stored) or creates (new) the id while the prefetch reads RocksDB."""
    with _shard(tmp_path, budget=None) as st:
        if stored:
            _cold(st, [1], [1.0])
        slots = _racing_prefetch(st, [1], lambda: st.fetch(_ids([1]), step=1, now=0.0, pin=False))
        assert slots == [0]
        assert st.hot.count() == 1
        assert st.hot.pins[0] == 1


def test_a_row_pinned_during_the_prefetch_read_keeps_both_pins(tmp_path: Path) -> None:
    with _shard(tmp_path, budget=None) as st:
        _cold(st, [1], [1.0])
        other: list[np.ndarray[Any, Any]] = []
        slots = _racing_prefetch(st, [1], lambda: other.append(st.prefetch(_ids([1]))))
        st.unpin(np.array(slots, dtype=np.int64))
        assert st.demote(10) == 0  # the other prefetch still pins it
        st.unpin(other[0])
        assert st.demote(10) == 1


# -- expire --------------------------------------------------------------------------------
def test_expiry_drops_unpinned_provisional_rows_and_keeps_pinned_ones(tmp_path: Path) -> None:
    with _shard(tmp_path, budget=None) as st:
        st.unpin(st.prefetch(_ids([1])))
        held = st.prefetch(_ids([2]))
        assert st.expire(None, None).tolist() == []
        assert st.hot.find(_ids([1, 2])).tolist() == [-1, int(held[0])]


def test_an_expired_unpinned_row_frees_its_slot_at_once(tmp_path: Path) -> None:
    with _shard(tmp_path, budget=None) as st:
        st.fetch(_ids([1, 2, 3]), step=1, now=0.0, pin=False)
        st.fetch(_ids([4]), step=5, now=0.0, pin=False)
        assert st.expire(3, None).tolist() == [1, 2, 3]
        st.fetch(_ids([5, 6, 7]), step=6, now=0.0, pin=False)
        assert st.hot.high == 4  # the three freed slots were reused


def test_a_fresh_dram_row_in_slot_zero_does_not_expire_by_its_stale_stored_copy(
    tmp_path: Path,
) -> None:
    with _shard(tmp_path, budget=None) as st:
        st.fetch(_ids([1]), step=1, now=0.0, pin=False)
        assert st.demote(10) == 1  # RocksDB holds it as seen at step 1
        _, slots = st.fetch(_ids([1]), step=5, now=0.0, pin=False)
        assert slots.tolist() == [0]
        assert st.expire(3, None).tolist() == []
        assert st.read(_ids([1]))[0].tolist() == [True]


@pytest.mark.parametrize("then_evict", [False, True])
@pytest.mark.parametrize("op", ["expire", "remove", "write"])
def test_a_prefetch_racing_a_deletion_or_an_import_reads_again(
    tmp_path: Path, op: str, then_evict: bool
) -> None:
    """Row 1 is read from RocksDB (value 3), then expired, deleted or overwritten (value 8),
    and, in one case, a row is evicted, before the prefetch inserts it: the prefetch must not
    put the old row back in DRAM."""
    with _shard(tmp_path, budget=None) as st:
        _hot(st, [9], [0.5])
        assert st.demote(1) == 1  # the eviction generation is no longer 0
        _cold(st, [1], [1.0], emb=3.0)

        def meanwhile() -> None:
            if op == "expire":
                assert st.expire(1, None).tolist() == [1, 9]  # both last seen at step 0
            elif op == "remove":
                st.remove_rows(_ids([1]))
            else:
                st.write(_ids([1]), _rows(st, [1.0], emb=8.0))
            if then_evict:
                st.fetch(_ids([7]), step=1, now=0.0, pin=False)
                assert st.demote(1) == 1

        _racing_prefetch(st, [1], meanwhile)
        found, rows = st.read(_ids([1]))
        if op == "write":
            assert found.tolist() == [True]
            assert rows["emb"].tolist() == [[8.0, 8.0]]
        else:
            assert found.tolist() == [False]


def test_a_row_seen_exactly_at_the_time_bound_does_not_expire(tmp_path: Path) -> None:
    with _shard(tmp_path, budget=None) as st:
        st.fetch(_ids([1]), step=1, now=10.0, pin=False)
        assert st.expire(None, 10.0).tolist() == []
        assert st.expire(None, 10.5).tolist() == [1]


def test_each_epoch_ages_the_counts_by_one_decay_step(tmp_path: Path) -> None:
    with _shard(tmp_path, budget=None) as st:
        _, slots = st.fetch(_ids([1]), step=1, now=0.0, pin=False)
        assert st.effective_freq(slots).tolist() == [1.0]
        st.advance_epoch()
        assert st.effective_freq(slots).tolist() == [0.5]  # decay 0.5
        st.advance_epoch()
        assert st.effective_freq(slots).tolist() == [0.25]


def test_nothing_is_written_since_any_version_before_a_write(tmp_path: Path) -> None:
    with _shard(tmp_path, budget=None) as st:
        ids, rows = st.written_since(0)
        assert (len(ids), len(rows)) == (0, 0)
        assert rows.dtype == st.layout.dtype


def test_a_truncated_log_forgets_the_writes_at_its_version(tmp_path: Path) -> None:
    with _shard(tmp_path, budget=None) as st:
        grad = np.ones((1, 2), np.float32)
        st.apply(_ids([1]), grad, 1, 1, 0.0)
        st.apply(_ids([2]), grad, 2, 2, 0.0)
        st.truncate_log(1)
        st.apply(_ids([3]), grad, 3, 3, 0.0)
        assert st.written_since(0)[0].tolist() == [2, 3]  # 1's entry is forgotten
        assert st.written_since(2)[0].tolist() == [3]


def test_a_stored_read_counts_and_caches_like_a_lookup_and_creates_nothing(
    tmp_path: Path,
) -> None:
    """1 in DRAM slot 0 (and in RocksDB), 2 in RocksDB only, 3 nowhere."""
    with _shard(tmp_path, budget=None) as st:
        st.fetch(_ids([1]), step=1, now=0.0, pin=False)
        st.fetch(_ids([1]), step=1, now=0.0, pin=False)  # a miss, then a hit
        assert st.flush() == 1
        _cold(st, [2], [1.0], emb=4.0)
        want_1 = _emb(st, [1])[0]
        before = (st.counters.hits, st.counters.misses, st.counters.cold_reads)
        got = st.fetch_stored(_ids([1, 2, 3]), step=2, now=0.0)
        after = (st.counters.hits, st.counters.misses, st.counters.cold_reads)
        assert np.subtract(after, before).tolist() == [1, 2, 2]
        unadmitted = initial_values(_ids([3]), 2, 0, TableConfig("t", 2).init_scale)[0]
        np.testing.assert_array_equal(got, [want_1, [4.0, 4.0], unadmitted])
        assert _hot_ids(st) == [1, 2]  # 2 cached in DRAM; no row for 3
        assert st.read(_ids([3]))[0].tolist() == [False]


def test_removing_a_row_held_in_slot_zero_removes_it_from_both_tiers(tmp_path: Path) -> None:
    with _shard(tmp_path, budget=None) as st:
        _, slots = st.fetch(_ids([1, 2]), step=1, now=0.0, pin=False)
        assert slots.tolist() == [0, 1]
        assert st.flush() == 2
        st.remove_rows(_ids([1]))
        assert st.read(_ids([1, 2]))[0].tolist() == [False, True]
        assert _hot_ids(st) == [2]
