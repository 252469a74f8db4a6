"""Property tests: placement operations never lose, duplicate or change a row.

A tiered, sharded store and an all-DRAM reference receive the same training steps; between
steps hypothesis interleaves migrate / demote / prefetch / expire / flush / age calls on the
tiered store. After every call the set of live ids and every row's value, optimizer state and
version must equal the reference's, except exactly the rows expiry removed (from both).
"""

from __future__ import annotations

import dataclasses
import tempfile

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embedding_store import EmbeddingStore, OptimizerConfig, StoreConfig, TableConfig

VOCAB, DIM = 400, 4
TABLE = TableConfig(
    "t", DIM, OptimizerConfig("adagrad", lr=0.1), seed=1, hot_rows=24, expire_after_steps=3
)
REF_TABLE = TableConfig("t", DIM, OptimizerConfig("adagrad", lr=0.1), seed=1, expire_after_steps=3)

ids_st = st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=40).map(
    lambda xs: np.array(xs, dtype=np.int64)
)
op_st = st.one_of(
    st.tuples(st.just("train"), ids_st),
    st.tuples(st.just("migrate"), st.none()),
    st.tuples(st.just("demote"), st.integers(0, 50)),
    st.tuples(st.just("prefetch"), ids_st),
    st.tuples(st.just("expire"), st.none()),
    st.tuples(st.just("flush"), st.none()),
    st.tuples(st.just("age"), st.none()),
)


def contents(store: EmbeddingStore) -> dict[str, np.ndarray]:
    ids = np.arange(VOCAB, dtype=np.int64)
    found, rows = store.read_rows("t", ids)
    return {
        "ids": ids[found],
        "emb": rows["emb"][found],
        "state": rows["state"][found],
        "version": rows["version"][found],
        "last_step": rows["last_step"][found],
    }


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    for key in a:
        assert np.array_equal(a[key], b[key]), key


def train(store: EmbeddingStore, ids: np.ndarray) -> None:
    emb = store.lookup("t", ids)
    grads = (emb * 0.5 + 0.01).numpy().astype(np.float32)
    store.apply_gradients("t", ids, grads)
    store.end_step()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=st.lists(op_st, min_size=1, max_size=25),
    shards=st.sampled_from([1, 3]),
    slab_rows=st.sampled_from([None, 40]),  # 40: three tiers, the slab overflowing to RocksDB
)
def test_placement_ops_preserve_rows(
    ops: list[tuple[str, object]], shards: int, slab_rows: int | None
) -> None:
    table = dataclasses.replace(TABLE, slab_rows=slab_rows)
    with tempfile.TemporaryDirectory() as d:
        tiered = EmbeddingStore(StoreConfig(d + "/a", (table,), num_shards=shards, evict_slack=0.0))
        ref = EmbeddingStore(StoreConfig(d + "/b", (REF_TABLE,), num_shards=1))
        clock = iter(range(10**6))
        with tiered, ref:
            tickets = []
            for name, arg in ops:
                before = contents(tiered)
                if name == "train":
                    assert isinstance(arg, np.ndarray)
                    train(tiered, arg)
                    train(ref, arg)
                elif name == "expire":
                    now = float(next(clock))
                    gone = tiered.expire(now=now)["t"]
                    ref_gone = ref.expire(now=now)["t"]
                    assert np.array_equal(gone, ref_gone)
                    after = contents(tiered)
                    assert not np.isin(gone, after["ids"]).any()
                    kept = ~np.isin(before["ids"], gone)
                    assert np.array_equal(after["ids"], before["ids"][kept])
                    assert np.array_equal(after["emb"], before["emb"][kept])
                    assert np.array_equal(
                        tiered.tombstones_since("t", -1),
                        np.unique(np.concatenate([tiered.tombstones_since("t", -1), gone])),
                    )
                else:
                    if name == "migrate":
                        tiered.migrate()
                    elif name == "demote":
                        assert isinstance(arg, int)
                        tiered.demote("t", arg)
                    elif name == "prefetch":
                        ticket = tiered.prefetch([{"t": arg}])
                        ticket.wait()
                        tickets.append(ticket)
                        if len(tickets) > 2:
                            tickets.pop(0).release()
                    elif name == "flush":
                        tiered.flush()
                    elif name == "age":
                        tiered.age()
                    assert_same(contents(tiered), before)
                assert_same(contents(tiered), contents(ref))
                assert (
                    tiered.stats("t").hot_rows
                    <= max(TABLE.hot_rows or 0, sum(len(t.wanted["t"]) for t in tickets) + 40) + 40
                )
            for ticket in tickets:
                ticket.release()
