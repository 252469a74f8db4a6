"""Featurizer state budget, expiry and incremental state (issue 21 #4)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.features.aggregates import WindowedAggregate
from pipeline.features.featurizer import Featurizer
from pipeline.features.spec import AggregateSpec, DenseSpec, FeatureSpec
from pipeline.features.state_budget import StateBudget


def by_key(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    order = np.argsort(state["keys"])
    return {k: v[order] if v.ndim and len(v) == len(order) else v for k, v in state.items()}


def stream(agg: WindowedAggregate, rng: np.random.Generator, steps: int, ids: int, day0: int = 0):
    outs = []
    for step in range(steps):
        keys = rng.integers(0, ids, 64).astype(np.int64)
        buckets = np.full(64, day0 + step // 4, dtype=np.int64)
        values = rng.normal(size=64)
        outs.append(agg.query(keys, buckets, values).total)
        agg.update(keys, buckets, values)
    return outs


def test_budget_bounds_entities_and_keeps_the_recent_ones() -> None:
    agg = WindowedAggregate(window=7, max_entities=1000)
    keys = np.arange(50_000, dtype=np.int64)  # only new entities
    for start in range(0, len(keys), 500):
        chunk = keys[start : start + 500]
        agg.update(chunk, np.full(len(chunk), start // 5000), np.ones(len(chunk)))
        assert agg.entities <= 1000
    assert len(agg._keys) <= 1000  # capacity never beyond the budget
    kept = set(agg.state_dict()["keys"].tolist())
    assert set(range(49_500, 50_000)) <= kept  # the last batch is kept whole
    assert min(kept) >= 50_000 - 1000  # the oldest went first
    assert agg.evicted == 50_000 - agg.entities


def test_ttl_equal_to_the_ring_changes_no_in_order_result() -> None:
    bounded = WindowedAggregate(window=3, delay=1, ttl_buckets=4)
    full = WindowedAggregate(window=3, delay=1)
    a = stream(bounded, np.random.default_rng(1), 200, 5000)
    b = stream(full, np.random.default_rng(1), 200, 5000)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x, y)
    assert bounded.entities < full.entities  # idle entities expired
    assert bounded.evicted >= full.entities - bounded.entities  # some came back later


def test_delta_applied_to_the_marked_state_gives_the_state() -> None:
    rng = np.random.default_rng(7)
    agg = WindowedAggregate(window=5, max_entities=400, ttl_buckets=6)
    stream(agg, rng, 40, 2000)
    replica = WindowedAggregate(window=5, max_entities=400, ttl_buckets=6)
    replica.load_state_dict(agg.state_dict())
    mark = agg.mark()
    stream(agg, rng, 60, 2000, day0=10)  # evicts and expires on the way
    assert agg.evicted > 0
    replica.load_state_delta(agg.dirty_state_since(mark))
    want, got = by_key(agg.state_dict()), by_key(replica.state_dict())
    assert want.keys() == got.keys()
    for name in want:
        assert np.array_equal(want[name], got[name]), name
    probe = np.arange(2000, dtype=np.int64)
    days = np.full(2000, 30, dtype=np.int64)
    zeros = np.zeros(2000)
    assert np.array_equal(
        agg.query(probe, days, zeros).total, replica.query(probe, days, zeros).total
    )


def test_deltas_rebuild_the_same_places_so_a_restored_state_evicts_the_same() -> None:
    def make() -> WindowedAggregate:
        return WindowedAggregate(window=5, max_entities=300, ttl_buckets=6)

    agg, replica = make(), make()
    stream(agg, np.random.default_rng(3), 30, 1500)
    replica.load_state_dict(agg.state_dict())
    for day0 in (10, 20, 30):  # a chain of three deltas, each on the state the last one left
        mark = agg.mark()
        stream(agg, np.random.default_rng(day0), 20, 1500, day0=day0)
        replica.load_state_delta(agg.dirty_state_since(mark))
        want, got = agg.state_dict(), replica.state_dict()
        assert want.keys() == got.keys()
        for name in want:  # bit for bit, in the same row order
            assert np.array_equal(want[name], got[name]), (day0, name)
    assert agg.evicted > 300
    # both go on alike: evictions pick by place among ties, so places must agree
    a = stream(agg, np.random.default_rng(99), 40, 5000, day0=40)
    b = stream(replica, np.random.default_rng(99), 40, 5000, day0=40)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x, y)
    for name, value in agg.state_dict().items():
        assert np.array_equal(value, replica.state_dict()[name]), name


def test_delta_bytes_grow_with_the_entities_changed_not_with_the_state() -> None:
    agg = WindowedAggregate(window=30)
    keys = np.arange(100_000, dtype=np.int64)
    agg.update(keys, np.zeros(len(keys), dtype=np.int64), np.ones(len(keys)))
    full = sum(v.nbytes for v in agg.state_dict().values())
    sizes = {}
    for changed in (100, 1000, 10_000):
        mark = agg.mark()
        some = keys[:changed]
        agg.update(some, np.ones(changed, dtype=np.int64), np.ones(changed))
        sizes[changed] = sum(v.nbytes for v in agg.dirty_state_since(mark).values())
    per_entity = 8 * 30 + 24 * 30 + 8 * 4  # bucket, stats; key, newest, changed, place
    for changed, size in sizes.items():
        assert changed * per_entity <= size <= changed * per_entity + 64, (changed, size)
    assert sizes[100] * 100 < full  # 100 of 100,000 changed: a thousandth of the bytes


def test_featurizer_budget_and_delta() -> None:
    spec = FeatureSpec(
        time_field="t",
        aggregates=(
            AggregateSpec("c7", ("c",), "x", window=7),
            AggregateSpec("c1", ("c",), "x", window=1),
        ),
        dense=(DenseSpec("n7", aggregate="c7", stat="count"),),
    )
    per_entity = WindowedAggregate.bytes_per_entity(7) + WindowedAggregate.bytes_per_entity(1)
    budget = StateBudget(budget_bytes=2000 * per_entity, ttl_seconds=30 * 86400)
    feat = Featurizer(spec, budget)
    twin = Featurizer(spec, budget)
    mark = feat.state_mark()
    for day in range(20):
        events = [
            {"c": day * 1000 + i, "x": 1.0, "t": day * 86400.0, "label": 0} for i in range(800)
        ]
        feat.transform(events)
    assert feat.state_nbytes() <= budget.budget_bytes
    twin.load_state_delta(feat.dirty_state_since(mark))
    a, b = feat.state_dict(), twin.state_dict()
    for name in a:
        if name.endswith(".keys"):
            assert np.array_equal(np.sort(a[name]), np.sort(b[name]))
    assert len(a["agg.c7.keys"]) <= 2000


def test_budget_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="budget_bytes"):
        StateBudget(budget_bytes=0)
    with pytest.raises(ValueError, match="ttl_seconds"):
        StateBudget(ttl_seconds=-1.0)


def test_published_patch_after_evictions_carries_the_changed_rows_only() -> None:
    from pipeline.publishing.array_patch import ArrayPatch, diff

    agg = WindowedAggregate(window=30, max_entities=10_000)
    keys = np.arange(10_000, dtype=np.int64)
    agg.update(keys, np.zeros(len(keys), dtype=np.int64), np.ones(len(keys)))
    before = agg.state_dict()
    new = np.arange(10_000, 10_100, dtype=np.int64)  # 100 new entities: 100 evictions
    agg.update(new, np.ones(100, dtype=np.int64), np.ones(100))
    after = agg.state_dict()
    assert agg.entities == 10_000 and agg.evicted == 100
    sent = 0
    for name in ("keys", "bucket", "stats"):
        patch = diff(before[name], after[name])
        assert isinstance(patch, ArrayPatch), name  # a patch, not the whole array
        sent += patch.nbytes
    whole = sum(before[k].nbytes for k in ("keys", "bucket", "stats"))
    assert sent <= 110 * (8 + 30 * 8 + 30 * 24 + 3 * 8)  # about the 100 replaced rows
    assert sent * 50 < whole
