"""Entity states under a budget and an expiry, and their incremental deltas (issue 21 #4).

Like the window aggregates, ``since_previous`` and ``distinct`` states keep one row per entity
(and per (entity, value) pair): new ids must not grow them past the budget, and a checkpoint
or published version must carry only the entities changed, rebuilt in the same places.
"""

from __future__ import annotations

import numpy as np

from pipeline.features.entity_state import PAIRS_PER_ENTITY, DistinctCount, SincePrevious
from pipeline.features.featurizer import Featurizer
from pipeline.features.spec import DenseSpec, EntityStateSpec, FeatureSpec
from pipeline.features.state_budget import StateBudget

SPEC = FeatureSpec(
    time_field="t",
    entity_states=(
        EntityStateSpec("gap", "since_previous", ("c",)),
        EntityStateSpec("terms", "distinct", ("c",), value="m"),
    ),
    dense=(DenseSpec("gap_s", aggregate="gap"), DenseSpec("n_terms", aggregate="terms")),
)


def batch(ids: np.ndarray, t: float, rng: np.random.Generator) -> list[dict[str, object]]:
    terms = rng.integers(0, 3, len(ids))
    return [
        {"c": int(c), "m": int(m), "t": t + i, "label": 0}
        for i, (c, m) in enumerate(zip(ids, terms, strict=True))
    ]


def equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_new_ids_stay_within_the_cap_and_the_newest_are_kept() -> None:
    since = SincePrevious(max_entities=1000)
    distinct = DistinctCount(max_entities=1000)
    for start in range(0, 50_000, 500):
        keys = np.arange(start, start + 500, dtype=np.int64)
        times = np.full(500, float(start))
        since.update(keys, times)
        distinct.update(keys, keys % 7, times=times)
        assert len(since.state_dict()["keys"]) <= 1000
        assert len(distinct.state_dict()["keys"]) <= 1000
        assert len(distinct.state_dict()["pairs"]) <= PAIRS_PER_ENTITY * 1000
    kept = set(since.state_dict()["keys"].tolist())
    assert set(range(49_500, 50_000)) <= kept and min(kept) >= 49_000
    # a dropped entity went with its pairs: every pair left has its entity
    state = distinct.state_dict()
    assert set(state["pair_entity"].tolist()) <= set(state["keys"].tolist())
    # and comes back as new: NaN gap, zero distinct values before
    old = np.array([0], dtype=np.int64)
    assert np.isnan(since.query(old, np.array([1e9]))[0])
    assert distinct.query(old, np.array([0], dtype=np.int64))[0] == 0.0


def test_expiry_drops_idle_entities_in_event_time() -> None:
    since = SincePrevious(ttl_seconds=100.0)
    since.update(np.array([1, 2], dtype=np.int64), np.array([0.0, 50.0]))
    since.update(np.array([2], dtype=np.int64), np.array([120.0]))  # 1 idle 120 s > 100
    assert since.state_dict()["keys"].tolist() == [2]
    assert since.query(np.array([2], dtype=np.int64), np.array([130.0])).tolist() == [10.0]


def test_featurizer_budget_covers_entity_states_and_deltas_rebuild_them_exactly() -> None:
    per_entity = SincePrevious.bytes_per_entity() + DistinctCount.bytes_per_entity()
    budget = StateBudget(budget_bytes=800 * per_entity, ttl_seconds=5000.0)
    feat, twin = Featurizer(SPEC, budget), Featurizer(SPEC, budget)
    rng = np.random.default_rng(5)
    t = 0.0
    for _ in range(10):  # warm: well past the cap of 800
        feat.transform(batch(rng.integers(0, 5000, 300), t, rng))
        t += 300
    twin.load_state_dict(feat.state_dict())
    for new in (10, 100, 40):  # a chain of deltas: known ids and ``new`` unseen ones each
        mark = feat.state_mark()
        ids = np.concatenate([rng.integers(0, 5000, 50), rng.integers(10**6, 10**7, new)])
        feat.transform(batch(ids, t, rng))
        t += 300
        delta = feat.dirty_state_since(mark)
        assert len(delta["entity.gap.keys"]) == len(np.unique(ids))  # the entities changed
        twin.load_state_delta(delta)
        assert equal(feat.state_dict(), twin.state_dict())
    assert feat.state_nbytes() <= budget.budget_bytes
    assert len(feat.state_dict()["entity.gap.keys"]) == 800
    probe = batch(rng.integers(0, 5000, 200), t, rng)
    a, b = feat.transform(probe), twin.transform(probe)
    assert np.array_equal(a.dense, b.dense)
    assert equal(feat.state_dict(), twin.state_dict())  # both updated alike


def test_old_distinct_state_without_pair_owners_loads() -> None:
    distinct = DistinctCount()
    distinct.load_state_dict(
        {"keys": np.array([7]), "counts": np.array([2.0]), "pairs": np.array([11, 12])}
    )
    assert distinct.state_dict()["pair_entity"].tolist() == [-1, -1]
    assert distinct.query(np.array([7], dtype=np.int64), np.array([0]))[0] == 2.0
