"""Every misuse raises a subclass of EmbeddingStoreError naming what was wrong."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from embedding_store import (
    ConfigError,
    EmbeddingStore,
    EmbeddingStoreError,
    InvalidIdsError,
    ShapeError,
    StorageError,
    StoreClosedError,
    StoreConfig,
    StoreNotOpenError,
    TableConfig,
    UnknownTableError,
)


@pytest.fixture
def store(tmp_path: Path):
    with EmbeddingStore(
        StoreConfig(str(tmp_path / "s"), (TableConfig("ads", 4),), num_shards=2)
    ) as s:
        yield s


def test_unknown_table(store: EmbeddingStore) -> None:
    with pytest.raises(
        UnknownTableError, match="unknown table 'clicks'; known tables: \\['ads'\\]"
    ):
        store.lookup("clicks", np.array([1], dtype=np.int64))


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        (np.array([1, 2], dtype=np.int32), "array of int32"),
        (torch.tensor([1.0]), "tensor of torch.float32"),
        ([1, 2], "got list"),
        (np.zeros((2, 2), dtype=np.int64), "shape \\(2, 2\\)"),
    ],
)
def test_bad_ids(store: EmbeddingStore, ids: object, message: str) -> None:
    with pytest.raises(InvalidIdsError, match=f"table 'ads': ids must be a 1-D int64.*{message}"):
        store.lookup("ads", ids)


def test_bad_gradients(store: EmbeddingStore) -> None:
    ids = np.array([1, 2], dtype=np.int64)
    with pytest.raises(ShapeError, match=r"shape \(2, 4\), got \(2, 3\)"):
        store.apply_gradients("ads", ids, np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(ShapeError, match="float32, got float64"):
        store.apply_gradients("ads", ids, np.zeros((2, 4)))


def test_use_before_open_and_after_close(tmp_path: Path) -> None:
    s = EmbeddingStore(StoreConfig(str(tmp_path / "x"), (TableConfig("ads", 4),)))
    assert not (tmp_path / "x").exists()  # the constructor does no I/O
    with pytest.raises(StoreNotOpenError, match="not open"):
        s.lookup("ads", np.array([1], dtype=np.int64))
    s.open()
    s.close()
    with pytest.raises(StoreClosedError, match="is closed"):
        s.lookup("ads", np.array([1], dtype=np.int64))
    with pytest.raises(StoreClosedError):
        s.open()


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="dim must be in"):
        TableConfig("t", 0)
    with pytest.raises(ConfigError, match="duplicate table names"):
        StoreConfig("/tmp/x", (TableConfig("t", 2), TableConfig("t", 3)))
    assert issubclass(ConfigError, EmbeddingStoreError)


def test_disk_error_names_path_and_operation(tmp_path: Path) -> None:
    # a file where a shard directory should be: RocksDB cannot open it
    path = tmp_path / "s"
    path.mkdir()
    (path / "shard-0000").write_text("not a directory")
    with pytest.raises(StorageError, match=r"failed at '.*shard-0000'"):
        EmbeddingStore(StoreConfig(str(path), (TableConfig("ads", 4),), num_shards=1)).open()


def test_state_roundtrip_and_delete_rows(store: EmbeddingStore) -> None:
    ids = np.arange(5, dtype=np.int64)
    store.lookup("ads", ids)
    store.apply_gradients("ads", ids, np.ones((5, 4), np.float32))
    store.end_step()
    store.age()
    state = store.state()
    assert state == {"version": 1, "epochs": {"ads": 1}}
    store.delete_rows("ads", ids[:2])
    found, _ = store.read_rows("ads", ids)
    assert found.tolist() == [False, False, True, True, True]
    store.load_state({"version": 7, "epochs": {"ads": 3}})
    assert store.version == 7 and store.state()["epochs"] == {"ads": 3}


def test_truncating_the_write_log_prunes_old_tombstones(tmp_path: Path) -> None:
    table = TableConfig("ads", 4, expire_after_steps=1)
    with EmbeddingStore(StoreConfig(str(tmp_path / "e"), (table,), num_shards=1)) as store:
        for step in range(4):
            ids = np.array([step], dtype=np.int64)
            store.lookup("ads", ids)
            store.apply_gradients("ads", ids, np.ones((1, 4), np.float32))
            store.end_step()
            store.expire()
        assert store.tombstones_since("ads", -1).tolist() == [0, 1]
        # id 0 expired at the boundary of version 3, id 1 at version 4
        store.truncate_write_log(3)
        assert store.tombstones_since("ads", -1).tolist() == [0, 1]  # kept: recorded at 3
        store.truncate_write_log(4)
        assert store.tombstones_since("ads", -1).tolist() == [1]
        store.truncate_write_log(5)
        assert store.tombstones_since("ads", -1).tolist() == []
