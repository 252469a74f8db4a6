"""Pins: rows of a pending batch (prefetched, or looked up this step) stay in DRAM."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embedding_store import EmbeddingStore, OptimizerConfig, StoreConfig, TableConfig


def _store(path: Path) -> EmbeddingStore:
    t = TableConfig("t", 2, OptimizerConfig("sgd", lr=0.1), hot_rows=100)
    return EmbeddingStore(StoreConfig(str(path), (t,), num_shards=1))


def test_prefetched_rows_survive_demotion_until_released(tmp_path: Path) -> None:
    with _store(tmp_path) as store:
        store.lookup("t", np.arange(8, dtype=np.int64))
        store.end_step()
        assert store.demote("t", 8) == 8  # all in RocksDB now
        store.lookup("t", np.array([0, 1], dtype=np.int64))  # 0, 1 back in DRAM
        store.end_step()
        wanted = np.array([0, 1, 2, 3], dtype=np.int64)  # two in DRAM, two cold
        ticket = store.prefetch([{"t": wanted}])
        ticket.wait()
        assert store.stats("t").prefetched == 2
        assert store.demote("t", 100) == 0  # everything in DRAM is pinned
        before = store.stats("t")
        store.lookup("t", wanted)
        store.end_step()
        after = store.stats("t")
        assert after.hits - before.hits == 4 and after.cold_reads == before.cold_reads
        ticket.release()
        ticket.release()  # idempotent: pins drop once
        assert store.demote("t", 100) == 4


def test_rows_looked_up_stay_pinned_until_the_step_ends(tmp_path: Path) -> None:
    with _store(tmp_path) as store:
        ids = np.array([5, 6, 7], dtype=np.int64)
        store.lookup("t", ids)
        assert store.demote("t", 10) == 0
        reads = store.stats("t").cold_reads
        store.apply_gradients("t", ids, np.ones((3, 2), np.float32))
        assert store.stats("t").cold_reads == reads
        store.end_step()
        assert store.demote("t", 10) == 3
        store.lookup("t", ids, pin=False)
        assert store.demote("t", 10) == 3
