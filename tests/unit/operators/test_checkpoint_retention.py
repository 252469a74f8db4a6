"""Retention keeps N chains; compaction folds a chain into a new full checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from embedding_store import EmbeddingStore, OptimizerConfig, StoreConfig, TableConfig
from operators.checkpoint.format import CheckpointKind
from operators.checkpoint.manager import CheckpointManager
from operators.errors import CheckpointWriteError
from tests.unit.operators.conftest import assert_same_contents, store_contents, train_step

TABLES = (TableConfig("t", 4, OptimizerConfig("rowwise_adagrad", lr=0.1), hot_rows=8),)


def config(path: Path) -> StoreConfig:
    return StoreConfig(str(path), TABLES, num_shards=2)


def chain_dirs(root: Path) -> list[str]:
    return sorted(n for n in os.listdir(root) if n.startswith("chain-"))


def step(store: EmbeddingStore, k: int) -> None:
    train_step(store, "t", np.arange(k, k + 10, dtype=np.int64))
    store.end_step()


def test_retention_keeps_the_newest_chains(tmp_path: Path) -> None:
    manager = CheckpointManager(str(tmp_path / "ckpt"), retention=2)
    with EmbeddingStore(config(tmp_path / "store")) as store:
        for k in range(4):
            step(store, k)
            manager.write_full(store)
            step(store, k + 20)
            manager.write_incremental(store)
            kept = [c.id for c in manager.chains()]
            assert kept == list(range(max(1, k), k + 2))
    assert chain_dirs(tmp_path / "ckpt") == ["chain-000003", "chain-000004"]
    assert [c.id for c in manager.list()] == [
        "000003-0000",
        "000003-0001",
        "000004-0000",
        "000004-0001",
    ]


def test_a_failed_full_write_deletes_nothing(tmp_path: Path) -> None:
    written: list[str] = []

    def fail_on_third_file(path: str) -> None:
        written.append(path)
        if len(written) == 3:
            raise OSError(28, "No space left on device", path)

    root = tmp_path / "ckpt"
    manager = CheckpointManager(str(root), retention=1)
    with EmbeddingStore(config(tmp_path / "store")) as store:
        step(store, 0)
        good = manager.write_full(store)
        want = store_contents(store)
        step(store, 1)
        failing = CheckpointManager(str(root), retention=1, file_hook=fail_on_third_file)
        with pytest.raises(CheckpointWriteError, match="No space left"):
            failing.write_full(store)
    assert [c.id for c in manager.list()] == [good.id]
    assert manager.latest_complete() == good
    assert sorted(os.listdir(root)) == [".lock", "chain-000001", "chains.json"]
    with EmbeddingStore(config(tmp_path / "fresh")) as fresh:
        manager.restore(fresh)
        assert_same_contents(store_contents(fresh), want)


def test_compaction_folds_a_chain_and_increments_continue_on_it(tmp_path: Path) -> None:
    manager = CheckpointManager(str(tmp_path / "ckpt"), retention=1, rows_per_file=7)
    with EmbeddingStore(config(tmp_path / "store")) as store:
        step(store, 0)
        manager.write_full(store)
        for k in range(1, 4):
            step(store, 5 * k)
            store.expire(now=None)
            tip = manager.write_incremental(store)
        at_tip = store_contents(store)
        # another process (the CLI) compacts while the trainer keeps its base
        compacted = CheckpointManager(str(tmp_path / "ckpt"), retention=1).compact()
        assert compacted.kind is CheckpointKind.FULL
        assert (compacted.compacted_from, compacted.version) == (tip.id, tip.version)
        assert compacted.rows == len(at_tip["t"][0])
        assert chain_dirs(tmp_path / "ckpt") == ["chain-000002"]  # retention=1 pruned chain 1
        ids, rows = manager.read_table(compacted.id, "t")
        assert np.array_equal(ids, at_tip["t"][0])
        assert rows.tobytes() == at_tip["t"][1].tobytes()
        step(store, 40)
        after = manager.write_incremental(store)
        want = store_contents(store)
    assert (after.chain, after.index, after.parent) == (compacted.chain, 1, compacted.id)
    assert after.rows == 10
    with EmbeddingStore(config(tmp_path / "fresh")) as fresh:
        assert manager.restore(fresh).checkpoint == after.id
        assert_same_contents(store_contents(fresh), want)


def test_compacting_a_single_full_checkpoint_is_a_no_op(tmp_path: Path) -> None:
    manager = CheckpointManager(str(tmp_path / "ckpt"))
    with EmbeddingStore(config(tmp_path / "store")) as store:
        step(store, 0)
        full = manager.write_full(store)
    assert manager.compact() == full
    assert manager.list() == (full,)


def test_background_write_returns_a_handle_and_training_goes_on(tmp_path: Path) -> None:
    manager = CheckpointManager(str(tmp_path / "ckpt"))
    with EmbeddingStore(config(tmp_path / "store")) as store:
        step(store, 0)
        want = store_contents(store)
        handle = manager.submit_full(store, {"w": np.ones(2)}, {"p": 1})
        assert (handle.version, handle.rows) == (1, 10)
        for k in range(1, 4):  # rows change while the write is in flight
            step(store, k)
        info = handle.result(timeout=60)
        assert manager.base == info
        assert not manager.busy
    with EmbeddingStore(config(tmp_path / "fresh")) as fresh:
        assert manager.restore(fresh).offsets == {"p": 1}
        assert_same_contents(store_contents(fresh), want)
    manager.close()
