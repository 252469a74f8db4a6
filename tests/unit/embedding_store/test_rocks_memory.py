"""RocksDB memory is bounded per store: one block cache and one memtable budget shared."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embedding_store import EmbeddingStore, StoreConfig, TableConfig
from embedding_store.errors import ConfigError

MiB = 1 << 20


def peak_memtables(path: Path, budget: int | None) -> tuple[int, int, int]:
    """Train ~400k random rows through a tiny DRAM tier; peak bytes in all memtables."""
    cfg = StoreConfig(
        str(path),
        (TableConfig("a", 32, hot_rows=1000), TableConfig("b", 32, hot_rows=1000)),
        num_shards=4,
        block_cache_bytes=2 * MiB,
        memtable_budget_bytes=budget,
    )
    with EmbeddingStore(cfg) as store:
        memory = store._shards[0].memory
        assert memory is not None
        assert all(shard.memory is memory for shard in store._shards)  # one, shared
        families = [cf for shard in store._shards for cf in shard._cfs.values()]
        rng = np.random.default_rng(0)
        peak = 0
        for _ in range(80):
            for table in ("a", "b"):
                ids = rng.integers(0, 10**9, 2500, dtype=np.int64)
                emb = store.lookup(table, ids)
                store.apply_gradients(table, ids, np.ones_like(emb.numpy()))
            store.step()
            sizes = [
                int(cf.property_int_value("rocksdb.size-all-mem-tables") or 0) for cf in families
            ]
            peak = max(peak, sum(sizes))
        for table in ("a", "b"):  # reads go through the shared cache
            store.lookup(table, rng.integers(0, 10**9, 5000, dtype=np.int64))
        return peak, memory.usage()["block_cache"], len(families)


def test_memtables_and_block_cache_stay_within_the_store_budget(tmp_path: Path) -> None:
    unbounded, _, _ = peak_memtables(tmp_path / "free", None)
    bounded, cache, families = peak_memtables(tmp_path / "capped", 4 * MiB)
    # each column family's live memtable keeps an arena block (<= 1 MiB) beyond the budget
    assert bounded <= 4 * MiB + families * MiB
    assert unbounded > 4 * bounded  # ~80 MiB measured: 16 MiB memtables fill unflushed
    assert cache <= 2 * MiB


def test_budget_is_validated() -> None:
    with pytest.raises(ConfigError, match="memtable_budget_bytes"):
        StoreConfig("x", (), memtable_budget_bytes=1000)
    with pytest.raises(ConfigError, match="block_cache_bytes"):
        StoreConfig("x", (), block_cache_bytes=-1)
