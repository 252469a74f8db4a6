"""Eviction picks the least-used unpinned rows: the sampled cut of ``smallest`` and the
one-pass ``start_eviction`` choose what a full ``argpartition`` of every hot row would."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embedding_store.config import TableConfig
from embedding_store.rocks import RocksShard
from embedding_store.shard import ShardTable, smallest


@settings(max_examples=60, deadline=None)
@given(
    size=st.sampled_from([1, 7, 100, 20_000, 70_000]),
    distinct=st.sampled_from([1, 3, 50, 10**6]),
    share=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_smallest_returns_the_n_smallest(size: int, distinct: int, share: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    values = (rng.integers(0, distinct, size) * np.float32(0.37)).astype(np.float32)
    n = max(1, min(size, int(size * share)))
    picked = smallest(values, n)
    assert len(np.unique(picked)) == n
    assert np.array_equal(np.sort(values[picked]), np.sort(values)[:n])


def legacy_victims(st_: ShardTable, slack: float) -> np.ndarray:
    """What start_eviction marked before it was made one-pass (argpartition of all rows)."""
    over = st_._over_budget(slack)
    live = st_.hot.live_slots()
    cand = live[(st_.hot.pins[live] == 0) & ~st_.hot.evicting[live]]
    n = min(over - int(st_.hot.evicting[live].sum()), len(cand))
    if n <= 0:
        return np.empty(0, dtype=np.int64)
    freq = st_.effective_freq(cand)
    return cand[np.argpartition(freq, n - 1)[:n]] if n < len(cand) else cand


@settings(max_examples=25, deadline=None)
@given(
    budget=st.sampled_from([10, 1000, 30_000]),
    over=st.sampled_from([0, 1, 50, 5000]),
    pinned=st.floats(0.0, 1.0),
    marked=st.floats(0.0, 0.2),
    seed=st.integers(0, 2**32 - 1),
)
def test_start_eviction_marks_the_least_used(
    tmp_path_factory: pytest.TempPathFactory,
    budget: int,
    over: int,
    pinned: float,
    marked: float,
    seed: int,
) -> None:
    db = RocksShard(str(tmp_path_factory.mktemp("evict")), ["t"])
    db.open()
    try:
        st_ = ShardTable(TableConfig("t", 2, hot_rows=budget), db, budget, 0.5)
        rng = np.random.default_rng(seed)
        n = budget + over
        rows = st_.layout.empty(n)
        rows["freq"] = rng.zipf(1.5, n).astype(np.float32)
        rows["epoch"] = rng.integers(0, 4, n)
        slots = st_.hot.insert(np.arange(n, dtype=np.int64) * 7, rows, dirty=False)
        st_.hot.remove(slots[rng.random(n) < 0.01])  # free slots below the high mark
        st_.hot.pins[slots[rng.random(n) < pinned]] = 1
        st_.hot.evicting[slots[(rng.random(n) < marked) & st_.hot.live[slots]]] = True
        st_.epoch = 4
        before = st_.hot.evicting.copy()
        want = legacy_victims(st_, 0.05)
        got = st_.start_eviction(0.05)
        new = np.flatnonzero(st_.hot.evicting & ~before)
        assert got == len(want) == len(new)
        assert not st_.hot.pins[new].any() and st_.hot.live[new].all()
        assert np.array_equal(np.sort(st_.effective_freq(new)), np.sort(st_.effective_freq(want)))
    finally:
        db.close()
