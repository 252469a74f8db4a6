"""FixedSlotIndex (the slab's id -> slot index) against a dict, through churn and rebuilds."""

from __future__ import annotations

import numpy as np
import pytest

from embedding_store.index import FixedSlotIndex


class Tier:
    """The slot arrays a tier keeps, with a free stack, driving the index as SlabTier does."""

    def __init__(self, capacity: int) -> None:
        self.ids = np.zeros(capacity, dtype=np.int64)
        self.live = np.zeros(capacity, dtype=np.bool_)
        self.index = FixedSlotIndex(capacity)
        self.where: dict[int, int] = {}

    def insert(self, keys: np.ndarray) -> None:
        free = np.flatnonzero(~self.live)[: len(keys)]
        assert len(free) == len(keys)
        self.ids[free] = keys
        self.live[free] = True
        self.index.insert(keys, free, self.ids, self.live)
        self.where.update(zip(keys.tolist(), free.tolist(), strict=True))

    def remove(self, keys: np.ndarray) -> None:
        slots = np.array([self.where.pop(int(k)) for k in keys], dtype=np.int64)
        self.live[slots] = False

    def check(self, queries: np.ndarray) -> None:
        got = self.index.lookup(queries, self.ids, self.live)
        want = [self.where.get(int(q), -1) for q in queries]
        assert got.tolist() == want


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lookups_agree_with_a_dict_through_churn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    tier = Tier(capacity=300)
    universe = rng.choice(np.arange(-(2**62), 2**62, 2**50), 2000, replace=False)
    for _ in range(60):
        present = np.array(list(tier.where), dtype=np.int64)
        if len(present) and rng.random() < 0.45:
            tier.remove(rng.choice(present, min(len(present), rng.integers(1, 80)), replace=False))
        absent = np.setdiff1d(universe, present)
        room = 300 - len(tier.where)
        if room:
            tier.insert(rng.choice(absent, min(room, int(rng.integers(1, 90))), replace=False))
        tier.check(np.concatenate([universe[:500], present[:50]]))
    # with 60 rounds of churn on 300 slots, inserts passed the load limit: rebuilt at least once
    assert tier.index.rebuilds > 0
    assert tier.index.entries <= 0.7 * tier.index.buckets


def test_a_freed_and_reused_slot_answers_for_its_new_id_only() -> None:
    tier = Tier(capacity=4)
    tier.insert(np.array([7, 8], dtype=np.int64))
    tier.remove(np.array([7], dtype=np.int64))
    tier.insert(np.array([9], dtype=np.int64))  # takes 7's slot (0)
    assert tier.where == {8: 1, 9: 0}
    tier.check(np.array([7, 8, 9, 10], dtype=np.int64))


def test_keys_sharing_a_home_bucket_all_land() -> None:
    """Every key in one batch hashed to the same bucket: the probe places them one by one."""
    index = FixedSlotIndex(capacity=64)
    keys = np.arange(5000, dtype=np.int64)
    same = keys[index._home(keys) == index._home(keys[:1])[0]]
    assert len(same) >= 3  # 5000 keys into 128 buckets: several share bucket 0's home
    ids = np.zeros(64, dtype=np.int64)
    live = np.zeros(64, dtype=np.bool_)
    slots = np.arange(len(same))
    ids[slots], live[slots] = same, True
    index.insert(same, slots, ids, live)
    assert index.lookup(same, ids, live).tolist() == slots.tolist()
    assert index.entries == len(same)


def test_an_insert_past_the_load_limit_rebuilds_from_the_live_slots() -> None:
    tier = Tier(capacity=10)  # 20 buckets; at most 14 entries
    tier.insert(np.arange(10, dtype=np.int64))
    tier.remove(np.arange(6, dtype=np.int64))
    assert tier.index.rebuilds == 0 and tier.index.entries == 10
    tier.insert(np.arange(100, 106, dtype=np.int64))  # 16 > 14: rebuild first
    assert tier.index.rebuilds == 1
    assert tier.index.entries == 4 + 6  # the 4 live rows and the 6 new ones, no stale entry
    tier.check(np.arange(0, 110, dtype=np.int64))


def test_sizes_and_refusals() -> None:
    index = FixedSlotIndex(capacity=1000)
    assert index.buckets == 2000 and index.nbytes() == 2000 * 4
    assert FixedSlotIndex(capacity=1).buckets == 16
    empty = np.empty(0, dtype=np.int64)
    assert index.lookup(empty, empty, np.empty(0, dtype=np.bool_)).dtype == np.int64
    for bad in (0, 2**31 - 1):
        with pytest.raises(ValueError, match=rf"^capacity must be in 1..2\*\*31-2, got {bad}$"):
            FixedSlotIndex(bad)
