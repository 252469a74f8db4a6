"""A row trained again while its old copy is being written back keeps its new value.

The write-back thread copies the marked rows (phase 1), writes them below DRAM outside the
shard's lock (phase 2) and frees those still marked (phase 3). A step between phases 1 and 3
may train a marked row (which clears its mark), and that step's own eviction round may mark
it again: phase 3 then saw a marked row and freed it, and the tier below held the copy from
before the step. The 3-tier placement test failed about one run in two on it.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from embedding_store import EmbeddingStore, OptimizerConfig, StoreConfig, TableConfig

LR = 0.5


@pytest.mark.parametrize("flushed", [False, True], ids=["dirty", "clean"])
@pytest.mark.parametrize("slab_rows", [None, 8])
def test_a_row_marked_again_while_written_back_is_not_freed_with_its_old_copy(
    tmp_path: Path, slab_rows: int | None, flushed: bool
) -> None:
    table = TableConfig(
        "t", 2, OptimizerConfig("sgd", lr=LR), seed=3, hot_rows=2, slab_rows=slab_rows
    )
    with EmbeddingStore(StoreConfig(str(tmp_path), (table,), num_shards=1)) as store:
        st = store._shard_tables("t")[0]
        rounds: list[object] = []
        store._writeback.submit = rounds.append  # type: ignore[method-assign]  # rounds by hand

        def train(ids: list[int]) -> None:
            arr = np.array(ids, dtype=np.int64)
            store.lookup("t", arr)
            store.apply_gradients("t", arr, np.ones((len(arr), 2), np.float32))
            store.end_step()

        train([1, 2, 3])  # 3 rows over a budget of 2: round 1 marks some
        marked = st.hot.ids[st.hot.live_slots()[st.hot.evicting[st.hot.live_slots()]]]
        assert len(marked) and rounds == [st]
        x = int(marked[0])
        if flushed:  # clean when copied: round 1 writes nothing and must see x trained since
            store.flush()
            assert not st.hot.dirty[st.hot.live_slots()].any()

        in_put, go = threading.Event(), threading.Event()
        below = st.cold
        put = below.put

        def slow_put(ids: np.ndarray, rows: np.ndarray) -> None:
            in_put.set()
            assert go.wait(20)
            put(ids, rows)

        below.put = slow_put  # type: ignore[method-assign]
        writer = threading.Thread(target=st.finish_eviction)
        writer.start()
        assert in_put.wait(20)  # round 1 holds x's copy from step 1
        below.put = put  # type: ignore[method-assign]
        before = store.read_rows("t", np.array([x]))[1]["emb"].copy()
        train([x])  # step 2 trains x (its mark is cleared) ...
        after = store.read_rows("t", np.array([x]))[1]["emb"].copy()
        assert not np.array_equal(after, before)
        slot = int(st.hot.find(np.array([x], dtype=np.int64))[0])
        if not st.hot.evicting[slot]:  # ... and round 2 marks it again (force it if it did not)
            st.hot.evicting[slot] = True
        go.set()
        writer.join(20)
        assert not writer.is_alive()
        others = np.array([int(i) for i in marked[1:]], dtype=np.int64)
        assert (st.hot.find(others) < 0).all()  # the rest of round 1 did leave DRAM
        assert st.hot.find(np.array([x], dtype=np.int64))[0] >= 0  # x stayed for round 2
        st.finish_eviction()  # round 2
        got = store.read_rows("t", np.array([x]))[1]["emb"]
        np.testing.assert_array_equal(got, after)


def test_a_row_prefetched_while_written_back_stays_pinned_in_dram(tmp_path: Path) -> None:
    """A prefetch pins a marked row without changing it: the write-back must not free it."""
    table = TableConfig("t", 2, OptimizerConfig("sgd", lr=LR), seed=3, hot_rows=2)
    with EmbeddingStore(StoreConfig(str(tmp_path), (table,), num_shards=1)) as store:
        st = store._shard_tables("t")[0]
        store._writeback.submit = lambda _: None  # type: ignore[method-assign]
        arr = np.array([1, 2, 3], dtype=np.int64)
        store.lookup("t", arr)
        store.apply_gradients("t", arr, np.ones((3, 2), np.float32))
        store.end_step()
        live = st.hot.live_slots()
        marked = st.hot.ids[live[st.hot.evicting[live]]]
        x = np.array([int(marked[0])], dtype=np.int64)
        in_put, go = threading.Event(), threading.Event()
        put = st.cold.put

        def slow_put(ids: np.ndarray, rows: np.ndarray) -> None:
            in_put.set()
            assert go.wait(20)
            put(ids, rows)

        st.cold.put = slow_put  # type: ignore[method-assign]
        writer = threading.Thread(target=st.finish_eviction)
        writer.start()
        assert in_put.wait(20)
        st.cold.put = put  # type: ignore[method-assign]
        ticket = store.prefetch([{"t": x}])
        ticket.wait(timeout=20)
        go.set()
        writer.join(20)
        slot = int(st.hot.find(x)[0])
        assert slot >= 0 and st.hot.pins[slot] == 1  # still in DRAM, pinned by the ticket
        ticket.release()
        assert st.hot.pins[slot] == 0
