"""Durability on real RocksDB: SIGKILL after flush() loses nothing; schemas are checked."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from embedding_store import EmbeddingStore, SchemaMismatchError, StoreConfig, TableConfig
from embedding_store.config import OptimizerConfig

pytestmark = pytest.mark.integration

CHILD = r"""
import sys, time, numpy as np
from embedding_store import EmbeddingStore, StoreConfig, TableConfig, OptimizerConfig
path, out = sys.argv[1], sys.argv[2]
slab = int(sys.argv[3]) or None
table = TableConfig("t", 8, OptimizerConfig("adam", lr=0.01), hot_rows=50, slab_rows=slab)
cfg = StoreConfig(path, (table,), num_shards=4)
store = EmbeddingStore(cfg).open()
rng = np.random.default_rng(0)
for step in range(30):
    ids = rng.integers(0, 2000, 256).astype(np.int64)
    emb = store.lookup("t", ids)
    store.apply_gradients("t", ids, (emb + 0.1).numpy())
    store.end_step()
store.flush()
ids = np.arange(2000, dtype=np.int64)
found, rows = store.read_rows("t", ids)
np.savez(out, found=found, emb=rows["emb"], state=rows["state"], version=rows["version"],
         store_version=store.version)
print("flushed", flush=True)
# keep writing into DRAM only (not flushed) and then hang: the kill comes now
for step in range(5):
    ids = rng.integers(0, 2000, 256).astype(np.int64)
    store.lookup("t", ids)
time.sleep(600)
"""


@pytest.mark.parametrize("slab_rows", [0, 400], ids=["dram+rocksdb", "dram+slab+rocksdb"])
def test_sigkill_after_flush_loses_nothing(tmp_path: Path, slab_rows: int) -> None:
    """With a slab too: flush() pushes its dirty rows to RocksDB; its file is a cache."""
    out = tmp_path / "expected.npz"
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path / "store"), str(out), str(slab_rows)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "flushed"
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    expected = np.load(out)
    slab_files = sorted((tmp_path / "store" / "slab").glob("*.slab"))
    assert len(slab_files) == (4 if slab_rows else 0)  # the killed process left them behind
    table = TableConfig(
        "t", 8, OptimizerConfig("adam", lr=0.01), hot_rows=50, slab_rows=slab_rows or None
    )
    cfg = StoreConfig(str(tmp_path / "store"), (table,), num_shards=4)
    with EmbeddingStore(cfg) as store:
        assert store.version == int(expected["store_version"]) == 30
        # reopening discarded whatever the slab files held: every row below comes from RocksDB
        assert store.stats("t").slab_rows == 0
        found, rows = store.read_rows("t", np.arange(2000, dtype=np.int64))
    assert np.array_equal(found, expected["found"])
    assert found.sum() > 1000
    # rows where found is False are undefined, so compare the stored ones
    assert np.array_equal(rows["emb"][found], expected["emb"][found])
    assert np.array_equal(rows["state"][found], expected["state"][found])
    assert np.array_equal(rows["version"][found], expected["version"][found])
    assert rows["version"][found].max() == 30


def test_reopen_with_other_schema_fails_clearly(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    with EmbeddingStore(StoreConfig(path, (TableConfig("ads", 8),), num_shards=2)) as store:
        store.lookup("ads", np.arange(10, dtype=np.int64))
    with pytest.raises(SchemaMismatchError, match=r"table 'ads'.*'dim': 8.*'dim': 16"):
        EmbeddingStore(StoreConfig(path, (TableConfig("ads", 16),), num_shards=2)).open()
    with pytest.raises(SchemaMismatchError, match="'optimizer': 'rowwise_adagrad'"):
        EmbeddingStore(
            StoreConfig(path, (TableConfig("ads", 8, OptimizerConfig("adam")),), num_shards=2)
        ).open()
    with pytest.raises(SchemaMismatchError, match="num_shards=2"):
        EmbeddingStore(StoreConfig(path, (TableConfig("ads", 8),), num_shards=3)).open()
    # the original schema still opens, with its rows
    with EmbeddingStore(StoreConfig(path, (TableConfig("ads", 8),), num_shards=2)) as store:
        found, _ = store.read_rows("ads", np.arange(10, dtype=np.int64))
        assert found.all()


def test_slab_rows_live_in_rocksdb_after_flush(tmp_path: Path) -> None:
    """The slab is a cache of RocksDB: after flush() RocksDB alone holds every row's value."""
    table = TableConfig("t", 4, OptimizerConfig("adagrad", lr=0.1), hot_rows=8, slab_rows=64)
    cfg = StoreConfig(str(tmp_path / "s"), (table,), num_shards=2)
    rng = np.random.default_rng(1)
    with EmbeddingStore(cfg) as store:
        for _ in range(20):
            ids = np.unique(rng.integers(0, 300, 64)).astype(np.int64)
            emb = store.lookup("t", ids)
            store.apply_gradients("t", ids, (emb + 0.1).numpy())
            store.end_step()
        assert store.stats("t").slab_rows > 0
        store.flush()
        found, rows = store.read_rows("t", np.arange(300, dtype=np.int64))
    # a store without a slab over the same directory reads the same rows from RocksDB
    plain = StoreConfig(str(tmp_path / "s"), (TableConfig("t", 4, OptimizerConfig("adagrad")),), 2)
    with EmbeddingStore(plain) as store:
        found2, rows2 = store.read_rows("t", np.arange(300, dtype=np.int64))
    assert np.array_equal(found, found2) and found.sum() > 200
    assert np.array_equal(rows["emb"][found], rows2["emb"][found])
    assert not list((tmp_path / "s" / "slab").glob("*.slab"))  # close() deleted the cache
