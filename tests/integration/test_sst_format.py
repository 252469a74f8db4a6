"""The cold tier's file layout (SstConfig) is per file: directories written with another one
read the same, and the vectorised read and write paths return exactly the stored rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embedding_store import EmbeddingStore, StoreConfig, TableConfig
from embedding_store.config import SstConfig
from embedding_store.errors import ConfigError
from embedding_store.rocks import RocksMemory, RocksShard, table_cf
from embedding_store.rows import RowLayout

pytestmark = pytest.mark.integration

OLD = SstConfig(block_size=4096, compression="snappy", bloom_bits_per_key=0)
LAYOUT = RowLayout(dim=5, state_dim=1)


def rows_for(ids: np.ndarray, salt: float) -> np.ndarray:
    rows = LAYOUT.empty(len(ids))
    rows["emb"] = ids[:, None] * 0.5 + salt + np.arange(5)
    rows["state"] = salt
    rows["version"] = ids
    rows["last_step"] = ids + 1
    rows["last_time"] = 0.25
    rows["freq"] = 2.0
    rows["epoch"] = 3
    return rows


def store_config(path: Path, sst: SstConfig) -> StoreConfig:
    return StoreConfig(str(path), (TableConfig("t", 5, hot_rows=100),), num_shards=2, sst=sst)


@pytest.mark.parametrize(
    ("first", "then"),
    [
        (OLD, SstConfig()),
        (SstConfig(), OLD),
        (SstConfig(block_size=1024, compression="zstd", hash_index=True), SstConfig()),
    ],
)
def test_a_directory_reads_the_same_under_another_layout(
    tmp_path: Path, first: SstConfig, then: SstConfig
) -> None:
    ids = np.arange(0, 6000, 3, dtype=np.int64)
    rows = rows_for(ids, 0.0)
    with EmbeddingStore(store_config(tmp_path, first)) as store:
        store.import_rows("t", ids, rows)
    more = np.arange(1, 3000, 3, dtype=np.int64)
    with EmbeddingStore(store_config(tmp_path, then)) as store:
        found, got = store.read_rows("t", ids)
        assert found.all() and got.tobytes() == rows.tobytes()
        store.import_rows("t", more, rows_for(more, 1.0))  # new files in the new layout
        store.flush()
    with EmbeddingStore(store_config(tmp_path, first)) as store:
        found, got = store.read_rows("t", np.concatenate([ids, more]))
        assert found.all()
        assert got[: len(ids)].tobytes() == rows.tobytes()
        assert got[len(ids) :].tobytes() == rows_for(more, 1.0).tobytes()


@pytest.mark.parametrize("sst", [OLD, SstConfig(), SstConfig(verify_checksums=False)])
def test_multi_get_keeps_order_with_rows_missing(tmp_path: Path, sst: SstConfig) -> None:
    shard = RocksShard(str(tmp_path / "s"), ["t"], sst=sst)
    shard.open()
    try:
        tier = shard.tier("t", LAYOUT)
        stored = np.array([0, 7, 255, 256, 2**40, 2**62], dtype=np.int64)  # zero bytes in keys
        tier.put(stored, rows_for(stored, 2.0))
        asked = np.array([256, 1, 2**62, 0, 9, 7, 2**40, 255], dtype=np.int64)
        found, got = tier.get(asked)
        assert found.tolist() == [True, False, True, True, False, True, True, True]
        assert got[found].tobytes() == rows_for(asked[found], 2.0).tobytes()
        found, got = tier.get(stored[::-1].copy())  # all present: the one-copy path
        assert found.all() and got.tobytes() == rows_for(stored[::-1], 2.0).tobytes()
        got["emb"] += 1.0  # writable, like any block
        tier.delete(stored[:2])
        assert tier.get(stored)[0].tolist() == [False, False, True, True, True, True]
        assert tier.get(np.empty(0, dtype=np.int64))[1].shape == (0,)
    finally:
        shard.close()


@pytest.mark.parametrize("fill", [False, True])
def test_multi_get_reads_with_the_configured_read_options(tmp_path: Path, fill: bool) -> None:
    # rocksdict ignores a read_opt passed with a list of keys; the shard sets its options on
    # each column family instead, and the block cache shows whether fill_cache reached a read
    memory = RocksMemory(8 << 20, None)
    shard = RocksShard(str(tmp_path / "s"), ["t"], memory=memory, sst=SstConfig(fill_cache=fill))
    shard.open()
    try:
        tier = shard.tier("t", LAYOUT)
        ids = np.arange(0, 20_000, dtype=np.int64)
        tier.put(ids, rows_for(ids, 3.0))
        shard.cf(table_cf("t")).flush()  # into a table file: reads now load data blocks
        before = memory.usage()["block_cache"]
        found, got = tier.get(ids[::97].copy())
        assert found.all() and got.tobytes() == rows_for(ids[::97], 3.0).tobytes()
        grown = memory.usage()["block_cache"] - before
        if fill:
            assert grown > 100 * 1024  # ~200 data blocks of 4 KiB
        else:
            assert grown < 16 * 1024  # at most an index or filter block, never the data
    finally:
        shard.close()


def test_sst_config_is_validated() -> None:
    with pytest.raises(ConfigError, match="block_size"):
        SstConfig(block_size=100)
    with pytest.raises(ConfigError, match="compression"):
        SstConfig(compression="brotli")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="bloom_bits_per_key"):
        SstConfig(bloom_bits_per_key=-1)
