"""One shard-table, driven directly: what a whole-file mutation run of ``shard.py`` found
untested (issue 17). Each test names the behaviour it pins; values are asserted exactly."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from embedding_store.chain import SlabChain
from embedding_store.config import OptimizerConfig, TableConfig, Unadmitted
from embedding_store.initializers import initial_values
from embedding_store.rocks import RocksShard
from embedding_store.rows import RowLayout
from embedding_store.shard import ShardCounters, ShardTable, smallest
from embedding_store.slab import SlabTier

LR = 0.25


@pytest.fixture
def db(tmp_path: Path) -> Iterator[RocksShard]:
    shard = RocksShard(str(tmp_path / "db"), ["t"])
    shard.open()
    yield shard
    shard.close()


def _table(
    db: RocksShard, budget: int | None = None, decay: float = 0.5, **kw: object
) -> ShardTable:
    t = TableConfig("t", 2, OptimizerConfig("sgd", lr=LR), seed=3, **kw)  # type: ignore[arg-type]
    return ShardTable(t, db, budget, decay)


def _ids(*ids: int) -> np.ndarray:
    return np.array(ids, dtype=np.int64)


def test_smallest_on_the_full_partition_picks_the_minimum() -> None:
    values = np.random.default_rng(0).permutation(1000).astype(np.float32)
    assert smallest(values, 1).tolist() == [int(np.argmin(values))]


def test_counters_start_at_zero_and_are_a_dataclass() -> None:
    assert ShardCounters() == ShardCounters(0, 0, 0, 0, 0, 0, 0)
    assert ShardCounters(hits=2).hits == 2


def test_a_fresh_table_counts_one_lookup_of_new_ids(db: RocksShard) -> None:
    st_ = _table(db)
    st_.fetch(_ids(1, 2, 3), step=1, now=0.0)
    assert st_.counters == ShardCounters(
        hits=0, misses=3, cold_reads=3, created=3, evicted=0, written_back=0, prefetched=0
    )
    st_.fetch(_ids(1, 2, 4), step=2, now=0.0)
    assert st_.counters == ShardCounters(
        hits=2, misses=4, cold_reads=4, created=4, evicted=0, written_back=0, prefetched=0
    )


def test_a_new_table_starts_at_epoch_zero_so_stored_counts_are_not_aged(db: RocksShard) -> None:
    st_ = _table(db)
    assert st_.epoch == 0
    rows = st_.layout.empty(1)
    rows["freq"], rows["epoch"], rows["version"] = 4.0, 0, 1
    st_.write(_ids(7), rows)
    _, slots = st_.fetch(_ids(7), step=1, now=0.0)
    assert st_.hot.rows["freq"][slots].tolist() == [5.0]  # 4 + this lookup, not 4 * 0.5 + 1


def test_the_slab_keeps_the_rows_with_the_highest_aged_counts(
    tmp_path: Path, db: RocksShard
) -> None:
    t = TableConfig("t", 2, OptimizerConfig("sgd", lr=LR), seed=3)
    layout = RowLayout(t.dim, t.state_dim)
    slab = SlabTier(str(tmp_path / "t.slab"), layout, capacity=2).open()
    st_ = ShardTable(t, db, None, 0.5, slab=slab)
    assert isinstance(st_.cold, SlabChain)
    _, slots = st_.fetch(_ids(1, 2, 3), step=1, now=0.0, pin=False)
    for _ in range(4):
        st_.advance_epoch()
    rows = st_.hot.rows
    rows["freq"][slots], rows["epoch"][slots] = [8.0, 2.0, 3.0], [0, 4, 4]  # aged: 0.5, 2, 3
    assert st_.demote(3) == 3
    assert st_.cold.slab.find(_ids(1, 2, 3)).tolist()[0] == -1  # id 1 lost: 8 aged 4 epochs
    assert (st_.cold.slab.find(_ids(2, 3)) >= 0).all()
    assert db.tier("t", layout).get(_ids(1, 2, 3))[0].tolist() == [True, False, False]
    assert st_.flush() == 0  # DRAM had nothing dirty left; the slab's two rows go down too
    assert db.tier("t", layout).get(_ids(1, 2, 3))[0].tolist() == [True, True, True]
    slab.close()


def _stored(st_: ShardTable, ids: np.ndarray, freq: float = 1.0) -> np.ndarray:
    """Write rows for ``ids`` straight to the cold tier (as an import does); returns their emb."""
    rows = st_.layout.empty(len(ids))
    rows["emb"] = np.stack([ids * 1.0, -ids * 1.0], axis=1)
    rows["freq"], rows["epoch"], rows["version"] = freq, 0, 1
    rows["last_step"], rows["last_time"] = 1, 0.0
    st_.write(ids, rows)
    return np.asarray(rows["emb"])


def test_a_background_eviction_counts_what_it_frees_and_writes(db: RocksShard) -> None:
    st_ = _table(db, budget=4)
    st_.fetch(_ids(*range(6)), step=1, now=0.0, pin=False)  # six new rows, all dirty
    assert st_.start_eviction(0.0) == 2
    assert st_.finish_eviction() == 2
    assert (st_.counters.evicted, st_.counters.written_back) == (2, 2)
    assert st_.hot.count() == 4 and st_.cold.count() == 2
    assert st_.evict_generation == 1
    st_.fetch(_ids(6, 7, 8), step=2, now=0.0, pin=False)  # three more: 7 rows, 3 over
    assert st_.start_eviction(0.0) == 3
    assert st_.finish_eviction() == 3
    assert (st_.counters.evicted, st_.counters.written_back) == (5, 5)


def test_a_prefetch_counts_cold_reads_and_rows_it_loads(db: RocksShard) -> None:
    st_ = _table(db)
    emb = _stored(st_, _ids(1, 2))
    st_.fetch(_ids(3), step=1, now=0.0, pin=False)  # 3 in DRAM: slot 0
    slots = st_.prefetch(_ids(1, 2, 3))
    assert sorted(st_.hot.ids[slots].tolist()) == [1, 2, 3]
    assert st_.hot.pins[slots].tolist() == [1, 1, 1]
    assert st_.counters == ShardCounters(
        hits=0, misses=1, cold_reads=3, created=1, evicted=0, written_back=0, prefetched=2
    )
    got, again = st_.fetch(_ids(1, 2), step=2, now=0.0)
    np.testing.assert_array_equal(got, emb)
    assert (st_.counters.hits, st_.counters.misses) == (2, 1)
    assert st_.hot.pins[again].tolist() == [2, 2]
    assert st_.hot.dirty[again].tolist() == [True, True]  # touched by the lookup


def test_a_prefetched_new_id_becomes_a_created_row_when_looked_up(db: RocksShard) -> None:
    st_ = _table(db)
    st_.fetch(_ids(9), step=1, now=0.0)
    assert st_.counters == ShardCounters(misses=1, cold_reads=1, created=1)
    slots = st_.prefetch(_ids(4, 5))
    assert st_.hot.provisional[slots].tolist() == [True, True]
    assert st_.hot.dirty[slots].tolist() == [False, False]
    assert st_.read(_ids(4, 5))[0].tolist() == [False, False]  # invisible until looked up
    assert st_.counters == ShardCounters(misses=1, cold_reads=3, created=1)
    st_.fetch(_ids(4), step=1, now=0.0)
    assert st_.counters == ShardCounters(hits=1, misses=1, cold_reads=3, created=2)
    assert st_.read(_ids(4, 5))[0].tolist() == [True, False]


def test_new_rows_start_at_version_zero_with_one_use(db: RocksShard) -> None:
    st_ = _table(db)
    st_.advance_epoch()
    emb, slots = st_.fetch(_ids(8, 9), step=3, now=12.5)
    np.testing.assert_array_equal(emb, initial_values(_ids(8, 9), 2, 3, st_.table.init_scale))
    found, rows = st_.read(_ids(8, 9))
    assert found.tolist() == [True, True]
    assert rows["version"].tolist() == [0, 0]
    assert rows["freq"].tolist() == [1.0, 1.0]
    assert rows["epoch"].tolist() == [1, 1]
    assert rows["last_step"].tolist() == [3, 3]
    assert rows["last_time"].tolist() == [12.5, 12.5]
    assert st_.hot.pins[slots].tolist() == [1, 1]
    st_.fetch(_ids(8), step=4, now=13.0, pin=False)
    assert st_.hot.pins[slots].tolist() == [1, 1]  # pin=False leaves the pins alone
    st_.unpin(slots)
    assert st_.hot.pins[slots].tolist() == [0, 0]


@pytest.mark.parametrize("mode", [Unadmitted.INITIAL, Unadmitted.ZEROS])
def test_unadmitted_ids_read_as_configured_and_store_nothing(
    db: RocksShard, mode: Unadmitted
) -> None:
    st_ = _table(db, admit_after=2, unadmitted=mode)
    emb, slots = st_.fetch(_ids(1, 2), step=1, now=0.0)
    assert slots.tolist() == [-1, -1]
    want = initial_values(_ids(1, 2), 2, 3, st_.table.init_scale)
    np.testing.assert_array_equal(emb, want if mode is Unadmitted.INITIAL else np.zeros((2, 2)))
    assert st_.apply(_ids(1, 2), np.ones((2, 2), np.float32), version=1, step=1, now=0.0) == 0
    assert st_.hot.count() == 0 and st_.counters.created == 0
    emb, slots = st_.fetch(_ids(1, 3), step=2, now=0.0)  # 1 seen a second time: admitted
    assert slots.tolist()[1] == -1 and slots.tolist()[0] >= 0
    np.testing.assert_array_equal(emb[0], want[0])
    three = initial_values(_ids(3), 2, 3, st_.table.init_scale)[0]
    np.testing.assert_array_equal(emb[1], three if mode is Unadmitted.INITIAL else [0.0, 0.0])
    assert st_.counters.created == 1


def test_apply_updates_the_rows_it_finds_and_loads_the_rest(db: RocksShard) -> None:
    st_ = _table(db)
    stored = _stored(st_, _ids(5))
    emb, _ = st_.fetch(_ids(1), step=1, now=0.0)
    grads = np.array([[1.0, 2.0], [4.0, -4.0]], np.float32)
    # 1 was looked up; 5 is on disk only: loaded, counted once, and updated too
    assert st_.apply(_ids(1, 5), grads, version=7, step=1, now=0.0) == 2
    found, rows = st_.read(_ids(1, 5))
    assert found.tolist() == [True, True]
    np.testing.assert_allclose(rows["emb"], np.concatenate([emb, stored]) - LR * grads, rtol=1e-6)
    assert rows["version"].tolist() == [7, 7]
    assert rows["freq"].tolist() == [1.0, 2.0]
    assert rows["last_step"].tolist() == [1, 1]
    ids, written = st_.written_since(6)
    assert ids.tolist() == [1, 5] and written["version"].tolist() == [7, 7]
    assert st_.written_since(7)[0].tolist() == []
    assert st_.apply(_ids(), np.zeros((0, 2), np.float32), version=8, step=2, now=0.0) == 0
    assert st_.written_since(7)[0].tolist() == []


def test_a_gradient_without_a_lookup_counts_as_a_use_even_in_slot_zero(db: RocksShard) -> None:
    st_ = _table(db)
    _stored(st_, _ids(5), freq=3.0)
    assert st_.apply(_ids(5), np.ones((1, 2), np.float32), version=2, step=6, now=9.0) == 1
    assert st_.hot.find(_ids(5)).tolist() == [0]
    _, rows = st_.read(_ids(5))
    assert (rows["freq"][0], rows["last_step"][0], rows["last_time"][0]) == (4.0, 6, 9.0)


def test_counts_age_by_the_epochs_since_the_last_use(db: RocksShard) -> None:
    st_ = _table(db, decay=0.5)
    _, slots = st_.fetch(_ids(1, 2), step=1, now=0.0, pin=False)
    st_.fetch(_ids(1), step=1, now=0.0, pin=False)  # same epoch: 1 + 1
    assert st_.hot.rows["freq"][slots].tolist() == [2.0, 1.0]
    st_.advance_epoch()
    st_.advance_epoch()
    assert st_.effective_freq(slots).tolist() == [0.5, 0.25]
    st_.fetch(_ids(1, 2), step=2, now=0.0, pin=False)  # both last used two epochs ago
    assert st_.hot.rows["freq"][slots].tolist() == [1.5, 1.25]
    assert st_.hot.rows["epoch"][slots].tolist() == [2, 2]


def test_a_dropped_gradient_touches_no_row_even_when_the_last_slot_is_live(db: RocksShard) -> None:
    st_ = _table(db, admit_after=2)
    ids = np.arange(1024, dtype=np.int64)
    st_.fetch(ids, step=1, now=0.0, pin=False)
    _, slots = st_.fetch(ids, step=2, now=0.0, pin=False)  # admitted: DRAM's 1024 slots, full
    assert len(st_.hot.rows) == 1024 and slots[-1] == 1023
    before = st_.hot.rows.copy()
    assert st_.apply(_ids(5000), np.ones((1, 2), np.float32), version=1, step=3, now=1.0) == 0
    np.testing.assert_array_equal(st_.hot.rows, before)


def test_a_table_at_its_budget_evicts_nothing_whatever_the_slack(db: RocksShard) -> None:
    st_ = _table(db, budget=4)
    st_.fetch(_ids(1, 2, 3, 4), step=1, now=0.0, pin=False)
    assert st_.enforce_budget(slack=0.5) == 0
    assert st_.start_eviction(slack=0.5) == 0
    assert not st_.hot.evicting.any()
    st_.fetch(_ids(5), step=1, now=0.0, pin=False)  # one over: down to 4 * (1 - 0.5)
    assert st_.enforce_budget(slack=0.5) == 3
    assert st_.hot.count() == 2 and st_.counters.evicted == 3


class Hooked:
    """The cold tier with a callback run once right after its next ``get``/``put``: what another
    thread does while a shard-table is in a RocksDB call outside its lock."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.after_get: Callable[[], object] | None = None
        self.after_put: Callable[[], object] | None = None
        self.gets = 0

    def get(self, ids: np.ndarray) -> object:
        out = self.inner.get(ids)  # type: ignore[attr-defined]
        self.gets += 1
        hook, self.after_get = self.after_get, None
        if hook is not None:
            hook()
        return out

    def put(self, ids: np.ndarray, rows: np.ndarray) -> None:
        self.inner.put(ids, rows)  # type: ignore[attr-defined]
        hook, self.after_put = self.after_put, None
        if hook is not None:
            hook()

    def iterate(self, chunk: int = 65536) -> object:
        return self.inner.iterate(2)  # type: ignore[attr-defined]  # two rows at a time

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def _hooked(st_: ShardTable) -> Hooked:
    cold = Hooked(st_.cold)
    st_.cold = cold  # type: ignore[assignment]
    return cold


def test_a_row_used_during_the_write_back_of_its_eviction_stays(db: RocksShard) -> None:
    st_ = _table(db, budget=4)
    cold = _hooked(st_)
    ids = np.arange(6, dtype=np.int64)
    _, slots = st_.fetch(ids, step=1, now=0.0, pin=False)
    assert st_.start_eviction(0.0) == 2
    marked = ids[st_.hot.evicting[slots]]
    cold.after_put = lambda: st_.fetch(marked[:1], step=2, now=0.0, pin=False)
    assert st_.finish_eviction() == 1  # the other marked row goes; the one used meanwhile stays
    assert st_.hot.find(marked).tolist()[0] >= 0 and st_.hot.find(marked).tolist()[1] == -1
    assert st_.hot.count() == 5
    assert (st_.counters.evicted, st_.counters.written_back) == (1, 2)


@pytest.mark.parametrize("evict", ["background", "demote"])
def test_a_prefetch_reads_again_after_an_eviction_wrote_its_row_meanwhile(
    db: RocksShard, evict: str
) -> None:
    st_ = _table(db, budget=1)
    cold = _hooked(st_)
    for _ in range(3):
        st_.fetch(_ids(1), step=1, now=0.0, pin=False)  # 1 is used most: it stays in DRAM
    st_.fetch(_ids(2), step=1, now=0.0, pin=False)
    assert st_.start_eviction(0.0) == 1 and st_.finish_eviction() == 1
    assert st_.evict_generation == 1
    grad = np.ones((1, 2), np.float32)

    def meanwhile() -> None:  # 7 is created, trained and evicted while the prefetch reads
        st_.fetch(_ids(7), step=2, now=0.0, pin=False)
        st_.apply(_ids(7), grad, version=2, step=2, now=0.0)
        if evict == "background":
            assert st_.start_eviction(0.0) == 1 and st_.finish_eviction() == 1
        else:
            assert st_.demote(1) == 1

    cold.after_get = meanwhile
    slots = st_.prefetch(_ids(7))
    assert st_.evict_generation == 2
    trained = initial_values(_ids(7), 2, 3, st_.table.init_scale) - LR * grad
    assert st_.hot.provisional[slots].tolist() == [False]  # the stored row, not a new one
    np.testing.assert_allclose(st_.fetch(_ids(7), step=3, now=0.0)[0], trained, rtol=1e-6)
    assert st_.counters.prefetched == 1


def test_flush_writes_each_dirty_row_once_and_counts_it(db: RocksShard) -> None:
    st_ = _table(db)
    st_.fetch(_ids(1, 2, 3), step=1, now=0.0, pin=False)
    assert st_.flush() == 3
    assert st_.flush() == 0
    assert st_.cold.count() == 3
    st_.fetch(_ids(2), step=2, now=0.0, pin=False)
    assert st_.flush() == 1
    assert st_.counters.written_back == 4


def _cold_rows(st_: ShardTable, freqs: dict[int, float]) -> None:
    ids = np.array(list(freqs), dtype=np.int64)
    _stored(st_, ids)
    rows = st_.read(ids)[1]
    rows["freq"] = list(freqs.values())
    st_.write(ids, rows)


def test_migration_fills_the_free_room_then_swaps_while_cold_beats_hot(db: RocksShard) -> None:
    st_ = _table(db, budget=4)
    st_.fetch(_ids(1, 2), step=1, now=0.0, pin=False)  # two hot rows used once: room for two
    _cold_rows(st_, {10: 5.0, 11: 4.0, 12: 3.0, 13: 0.5, 14: 0.25})
    generation = st_.evict_generation
    assert st_.migrate() == (3, 1)  # 10 and 11 fill the room; 12 (3 uses) beats a hot row (1)
    assert sorted(st_.hot.ids[st_.hot.live_slots()].tolist()) == [2, 10, 11, 12]
    assert st_.read(_ids(1))[0].tolist() == [True]  # the demoted row was written back
    assert st_.flush() == 1  # 2, created by its lookup; promoted rows are clean copies
    assert st_.evict_generation == generation + 1


@pytest.mark.parametrize("limit", [3, 4])
def test_migration_stops_scanning_at_the_scan_limit(db: RocksShard, limit: int) -> None:
    st_ = _table(db, budget=10)
    _hooked(st_)
    _cold_rows(st_, {10 + i: float(10 - i) for i in range(6)})
    assert st_.migrate(scan_limit=limit) == (4, 0)  # chunks of two: stops once 4 >= limit
    assert sorted(st_.hot.ids[st_.hot.live_slots()].tolist()) == [10, 11, 12, 13]
    assert st_.migrate(scan_limit=None) == (2, 0)


@pytest.mark.parametrize(("budget", "rows", "seed"), [(100, 300, 15), (130, 390, 21)])
def test_the_migration_scan_keeps_exactly_the_most_used(
    db: RocksShard, budget: int, rows: int, seed: int
) -> None:
    """More cold rows than twice the budget, so the scan prunes to the budget's most used:
    draws where partitioning at a neighbouring rank keeps a wrong row (most draws do not)."""
    st_ = _table(db, budget=budget)
    freq = np.random.default_rng(seed).permutation(rows).astype(np.float32)
    _cold_rows(st_, dict(enumerate(freq.tolist())))
    assert st_.migrate() == (budget, 0)
    hot = st_.hot.ids[st_.hot.live_slots()]
    assert sorted(hot.tolist()) == sorted(np.argsort(-freq)[:budget].tolist())


def test_migration_moves_nothing_without_a_budget_or_cold_rows(db: RocksShard) -> None:
    unbounded = _table(db)
    _cold_rows(unbounded, {1: 5.0, 2: 4.0})
    assert unbounded.migrate() == (0, 0)
    assert unbounded.hot.count() == 0
    unbounded.remove_rows(_ids(1, 2))
    bounded = _table(db, budget=4)
    bounded.fetch(_ids(3), step=1, now=0.0, pin=False)
    assert bounded.migrate() == (0, 0)  # nothing on disk
    assert bounded.hot.count() == 1


def test_migration_never_demotes_a_pinned_row(db: RocksShard) -> None:
    st_ = _table(db, budget=2)
    st_.fetch(_ids(1), step=1, now=0.0)  # pinned until the step ends
    st_.fetch(_ids(2), step=1, now=0.0, pin=False)
    _cold_rows(st_, {10: 5.0, 11: 4.0})
    assert st_.migrate() == (1, 1)  # only 2 could go; 10 takes its place
    assert sorted(st_.hot.ids[st_.hot.live_slots()].tolist()) == [1, 10]


def test_migration_swaps_only_a_cold_row_used_more_than_the_hot_one(db: RocksShard) -> None:
    st_ = _table(db, budget=1)
    st_.fetch(_ids(1), step=1, now=0.0, pin=False)  # one use
    _cold_rows(st_, {10: 1.0})  # as many uses: no swap
    assert st_.migrate() == (0, 0)
    assert st_.hot.ids[st_.hot.live_slots()].tolist() == [1]


def test_a_prefetch_pins_only_its_own_rows_and_unmarks_them(db: RocksShard) -> None:
    st_ = _table(db, budget=4)
    ids = np.arange(6, dtype=np.int64)
    _, slots = st_.fetch(ids, step=1, now=0.0, pin=False)
    assert st_.start_eviction(0.0) == 2
    looked_up = ids[st_.hot.evicting[slots]][:1]
    st_.fetch(looked_up, step=1, now=0.0)  # used again (unmarked) and pinned by a lookup
    assert st_.start_eviction(0.0) == 1  # another row marked instead
    marked = ids[st_.hot.evicting[slots]]
    assert len(marked) == 2 and looked_up[0] not in marked
    got = st_.prefetch(np.concatenate([marked[:1], looked_up]))
    assert not st_.hot.evicting[got].any()
    assert st_.hot.evicting[slots].sum() == 1
    pins = dict(zip(ids.tolist(), st_.hot.pins[slots].tolist(), strict=True))
    want = dict.fromkeys(ids.tolist(), 0) | {int(marked[0]): 1, int(looked_up[0]): 2}
    assert pins == want
    st_.unpin(got)
    assert st_.finish_eviction() == 1  # the prefetched row was unmarked: only the other goes


def test_a_prefetch_reads_rocksdb_once_when_nothing_was_evicted_meanwhile(db: RocksShard) -> None:
    st_ = _table(db)
    _stored(st_, _ids(1, 2))
    cold = _hooked(st_)
    slots = st_.prefetch(_ids(1, 2, 3))
    assert cold.gets == 1
    assert st_.hot.pins[slots].tolist() == [1, 1, 1]
    assert not st_.hot.evicting[slots].any()
    assert st_.flush() == 0  # prefetched rows are clean copies; the new one is provisional


@pytest.mark.parametrize("stored", [True, False])
def test_a_row_loaded_into_slot_zero_during_a_prefetch_read_is_not_loaded_twice(
    db: RocksShard, stored: bool
) -> None:
    st_ = _table(db)
    if stored:
        _stored(st_, _ids(5))
    cold = _hooked(st_)
    cold.after_get = lambda: st_.fetch(_ids(5), step=1, now=0.0)  # another thread: slot 0
    slots = st_.prefetch(_ids(5))
    assert slots.tolist() == [0]
    assert st_.hot.count() == 1
    assert st_.hot.pins[0] == 2  # the lookup's pin and the prefetch's
    assert not st_.hot.provisional[0] and not st_.hot.evicting[0]


def test_a_prefetch_of_unadmitted_ids_pins_nothing(db: RocksShard) -> None:
    st_ = _table(db, admit_after=2)
    ids = np.arange(1024, dtype=np.int64)
    st_.fetch(ids, step=1, now=0.0, pin=False)
    st_.fetch(ids, step=2, now=0.0, pin=False)  # admitted: DRAM's 1024 slots, the last live
    assert len(st_.hot.rows) == 1024 and st_.hot.live[1023]
    assert st_.prefetch(_ids(5000)).tolist() == []  # never seen: no row, nothing pinned
    assert not st_.hot.pins.any()


def test_expiry_drops_unpinned_provisional_rows_and_keeps_pinned_ones(db: RocksShard) -> None:
    st_ = _table(db)
    first = st_.prefetch(_ids(1, 2))  # new ids: provisional rows, pinned
    st_.unpin(first)
    kept = st_.prefetch(_ids(3))
    assert st_.hot.count() == 3
    assert st_.expire(min_step=0, min_time=None).tolist() == []  # never real: no tombstone
    assert st_.hot.count() == 1
    assert st_.hot.find(_ids(1, 2, 3)).tolist() == [-1, -1, int(kept[0])]


def test_an_expired_unpinned_row_frees_its_slot_at_once(db: RocksShard) -> None:
    st_ = _table(db)
    st_.fetch(_ids(1), step=1, now=0.0, pin=False)  # slot 0
    st_.fetch(_ids(2), step=5, now=0.0, pin=False)  # slot 1
    assert st_.expire(min_step=3, min_time=None).tolist() == [1]
    _, slots = st_.fetch(_ids(3), step=6, now=0.0, pin=False)
    assert slots.tolist() == [0]  # the expired row's slot, reused


def test_a_fresh_dram_row_in_slot_zero_keeps_its_stale_disk_copy_from_expiring(
    db: RocksShard,
) -> None:
    st_ = _table(db)
    st_.fetch(_ids(5), step=1, now=0.0, pin=False)  # slot 0
    assert st_.flush() == 1  # on disk as last seen at step 1
    st_.fetch(_ids(5), step=10, now=0.0, pin=False)  # seen again: DRAM says step 10
    assert st_.expire(min_step=5, min_time=None).tolist() == []
    assert st_.read(_ids(5))[0].tolist() == [True]
    st_.flush()
    assert st_.cold.get(_ids(5))[0].tolist() == [True]


def test_a_row_last_seen_exactly_at_the_bound_does_not_expire(db: RocksShard) -> None:
    st_ = _table(db)
    st_.fetch(_ids(1), step=4, now=100.0, pin=False)
    st_.fetch(_ids(2), step=4, now=99.5, pin=False)
    assert st_.expire(min_step=4, min_time=100.0).tolist() == [2]
    assert st_.hot.find(_ids(1)).tolist() == [0]


def test_the_write_log_forgets_entries_at_or_below_the_truncation(db: RocksShard) -> None:
    st_ = _table(db)
    st_.fetch(_ids(1, 2, 3), step=1, now=0.0)
    grad = np.ones((1, 2), np.float32)
    for version, i in ((4, 1), (5, 2), (6, 3)):
        st_.apply(_ids(i), grad, version=version, step=1, now=0.0)
    assert st_.written_since(3)[0].tolist() == [1, 2, 3]
    st_.truncate_log(5)
    ids, rows = st_.written_since(3)
    assert ids.tolist() == [3] and rows["version"].tolist() == [6]
    st_.truncate_log(6)
    ids, rows = st_.written_since(3)
    assert ids.tolist() == [] and len(rows) == 0 and rows.dtype == st_.layout.dtype
    st_.apply(_ids(1), grad, version=7, step=1, now=0.0)
    assert st_.written_since(6)[0].tolist() == [1]


def test_a_stored_read_of_a_row_in_slot_zero_uses_dram_not_its_older_disk_copy(
    db: RocksShard,
) -> None:
    st_ = _table(db)
    emb, _ = st_.fetch(_ids(1), step=1, now=0.0, pin=False)  # slot 0
    st_.flush()  # on disk: the initial value
    grad = np.ones((1, 2), np.float32)
    st_.apply(_ids(1), grad, version=1, step=1, now=0.0)  # DRAM only: the trained value
    before = st_.counters.cold_reads
    got = st_.fetch_stored(_ids(1, 2), step=2, now=0.0)
    np.testing.assert_allclose(got[0], emb[0] - LR * grad[0], rtol=1e-6)
    assert (st_.counters.hits, st_.counters.cold_reads - before) == (1, 1)  # only 2 read
    assert st_.hot.count() == 1  # and 2, which has no row, got none


@pytest.mark.parametrize("mode", [Unadmitted.INITIAL, Unadmitted.ZEROS])
def test_stored_reads_count_and_fill_ids_without_rows(db: RocksShard, mode: Unadmitted) -> None:
    st_ = _table(db, unadmitted=mode)
    on_disk = _stored(st_, _ids(1))
    in_dram, _ = st_.fetch(_ids(2), step=1, now=0.0, pin=False)
    assert st_.counters == ShardCounters(misses=1, cold_reads=1, created=1)
    three = initial_values(_ids(3), 2, 3, st_.table.init_scale)
    want = np.concatenate([on_disk, in_dram, three if mode is Unadmitted.INITIAL else [[0, 0]]])
    np.testing.assert_array_equal(st_.fetch_stored(_ids(1, 2, 3), step=2, now=0.0), want)
    assert st_.counters == ShardCounters(hits=1, misses=3, cold_reads=3, created=1)
    np.testing.assert_array_equal(st_.fetch_stored(_ids(1, 2, 3), step=3, now=0.0), want)
    assert st_.counters == ShardCounters(hits=3, misses=4, cold_reads=4, created=1)
    assert st_.hot.count() == 2 and not st_.hot.pins.any()


def test_removing_a_row_in_slot_zero_removes_it_from_dram_too(db: RocksShard) -> None:
    st_ = _table(db)
    st_.fetch(_ids(1, 2), step=1, now=0.0, pin=False)  # slots 0 and 1
    st_.flush()
    st_.remove_rows(_ids(1))
    assert st_.hot.find(_ids(1, 2)).tolist() == [-1, 1]
    assert st_.read(_ids(1))[0].tolist() == [False]
    assert st_.evict_generation == 1


@pytest.mark.parametrize("change", ["remove", "write"])
def test_a_prefetch_reads_again_after_its_row_was_removed_or_replaced_meanwhile(
    db: RocksShard, change: str
) -> None:
    st_ = _table(db)
    _stored(st_, _ids(5))
    assert st_.evict_generation == 1
    cold = _hooked(st_)
    new = st_.layout.empty(1)
    new["emb"], new["version"], new["last_step"] = [[7.0, -7.0]], 2, 1
    if change == "remove":
        cold.after_get = lambda: st_.remove_rows(_ids(5))
    else:
        cold.after_get = lambda: st_.write(_ids(5), new)
    slots = st_.prefetch(_ids(5))
    assert st_.evict_generation == 2
    if change == "remove":  # gone: a new id again, whose row stays invisible until looked up
        assert st_.hot.provisional[slots].tolist() == [True]
        assert st_.read(_ids(5))[0].tolist() == [False]
    else:
        assert st_.hot.provisional[slots].tolist() == [False]
        np.testing.assert_array_equal(st_.read(_ids(5))[1]["emb"], [[7.0, -7.0]])
