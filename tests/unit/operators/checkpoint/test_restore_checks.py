"""Restore's refusals, message by message (mutation testing, issue 17): a store whose tables
differ from the checkpoint's, and a target that is not empty only on disk or only in its
second table."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from embedding_store import EmbeddingStore, OptimizerConfig, StoreConfig, TableConfig
from operators.checkpoint.manager import CheckpointManager
from operators.checkpoint.restore import RestoredState
from operators.errors import IncompatibleCheckpointError, StoreNotEmptyError
from tests.unit.operators.conftest import train_step

SGD = OptimizerConfig("sgd", lr=0.1)


def _cfg(path: Path, *tables: TableConfig) -> StoreConfig:
    return StoreConfig(str(path), tables, num_shards=1)


def _checkpoint(tmp_path: Path) -> CheckpointManager:
    manager = CheckpointManager(str(tmp_path / "ckpt"))
    with EmbeddingStore(_cfg(tmp_path / "src", TableConfig("t", 2, SGD))) as store:
        train_step(store, "t", np.arange(6, dtype=np.int64))
        store.end_step()
        manager.write_full(store)
    return manager


def test_a_store_unlike_the_checkpoint_is_refused(tmp_path: Path) -> None:
    manager = _checkpoint(tmp_path)
    with (
        EmbeddingStore(_cfg(tmp_path / "a", TableConfig("u", 2, SGD))) as other,
        pytest.raises(
            IncompatibleCheckpointError, match=r"table 't': the target store has no such table$"
        ),
    ):
        manager.restore(other)
    with (
        EmbeddingStore(_cfg(tmp_path / "b", TableConfig("t", 3, SGD))) as other,
        pytest.raises(
            IncompatibleCheckpointError,
            match=r"table 't': checkpoint rows are dim=2 state_dim=0, the store's "
            r"dim=3 state_dim=0$",
        ),
    ):
        manager.restore(other)
    with (
        EmbeddingStore(_cfg(tmp_path / "c", TableConfig("t", 2, SGD, seed=99))) as other,
        pytest.raises(
            IncompatibleCheckpointError,
            match=r"table 't': checkpoint schema \{.*'seed': 0.*\}, store's \{.*'seed': 99.*\}$",
        ),
    ):
        manager.restore(other)
    with EmbeddingStore(_cfg(tmp_path / "d", TableConfig("t", 2, SGD))) as same:
        state = manager.restore(same)  # the default: refuses nothing when tables match
        assert state.version == 1


def test_rows_only_on_disk_or_only_in_a_later_table_make_a_store_non_empty(tmp_path: Path) -> None:
    manager = _checkpoint(tmp_path)
    tables = (TableConfig("a", 2, SGD), TableConfig("t", 2, SGD))
    with EmbeddingStore(_cfg(tmp_path / "o", *tables)) as other:
        train_step(other, "t", np.arange(100, 105, dtype=np.int64))
        other.end_step()
        assert other.demote("t", 100) == 5  # all five on disk, none in DRAM
        with pytest.raises(StoreNotEmptyError, match="table 't' holds 5 rows"):
            manager.restore(other)  # table "a" is empty: "t" must still be counted
        manager.restore(other, clear=True)
        assert sorted(np.concatenate([b[0] for b in other.export_rows("t")]).tolist()) == list(
            range(6)
        )


def test_a_row_in_dram_and_on_disk_is_counted_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Flushed rows stay in DRAM and are on disk too: 5 rows, not hot 5 + cold 5 = 10."""
    manager = _checkpoint(tmp_path)
    with EmbeddingStore(_cfg(tmp_path / "o", TableConfig("t", 2, SGD))) as other:
        train_step(other, "t", np.arange(100, 105, dtype=np.int64))
        other.end_step()
        other.flush()
        stats = other.stats("t", count_cold=True)
        assert (stats.hot_rows, stats.cold_rows) == (5, 5)
        with pytest.raises(StoreNotEmptyError, match="table 't' holds 5 rows;"):
            manager.restore(other)
        with caplog.at_level("INFO", logger="operators.checkpoint.restore"):
            manager.restore(other, clear=True)
        tip = manager.list()[-1].id
        assert [
            r.getMessage() for r in caplog.records if r.name == "operators.checkpoint.restore"
        ] == [f"cleared 5 rows of table 't' before restoring {tip}"]
        assert sorted(np.concatenate([b[0] for b in other.export_rows("t")]).tolist()) == list(
            range(6)
        )


def test_a_store_that_only_prefetched_new_ids_is_empty(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Prefetched ids never looked up have placeholder rows in DRAM and no stored row: the
    restore neither refuses the store ("holds 0 rows") nor clears anything."""
    manager = _checkpoint(tmp_path)
    with EmbeddingStore(_cfg(tmp_path / "o", TableConfig("t", 2, SGD))) as other:
        ticket = other.prefetch([{"t": np.arange(3, 9, dtype=np.int64)}])
        ticket.wait(timeout=20)
        ticket.release()
        assert other.stats("t", count_cold=True).hot_rows == 6
        with caplog.at_level("INFO", logger="operators.checkpoint.restore"):
            state = manager.restore(other)
        assert state.version == 1
        assert not [r for r in caplog.records if "cleared" in r.getMessage()]
        with EmbeddingStore(_cfg(tmp_path / "src", TableConfig("t", 2, SGD))) as source:
            want = source.read_rows("t", np.arange(6, dtype=np.int64))[1]["emb"]
        got = other.lookup("t", np.arange(6, dtype=np.int64), pin=False).numpy()
        np.testing.assert_array_equal(got, want)  # the placeholders did not shadow the rows


def test_restored_state_is_frozen_and_has_no_patches_by_default() -> None:
    state = RestoredState("c", 1, {}, {}, {}, "", {}, {})
    assert state.patches == ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.version = 2  # type: ignore[misc]


def test_a_table_of_placeholders_does_not_hide_a_later_table_with_rows(tmp_path: Path) -> None:
    manager = _checkpoint(tmp_path)
    tables = (TableConfig("a", 2, SGD), TableConfig("t", 2, SGD))
    with EmbeddingStore(_cfg(tmp_path / "o", *tables)) as other:
        ticket = other.prefetch([{"a": np.arange(3, dtype=np.int64)}])
        ticket.wait(timeout=20)
        ticket.release()
        train_step(other, "t", np.arange(100, 105, dtype=np.int64))
        other.end_step()
        with pytest.raises(StoreNotEmptyError, match="table 't' holds 5 rows"):
            manager.restore(other)
