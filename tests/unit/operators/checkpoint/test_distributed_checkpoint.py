"""World checkpoints: written by a 1-rank world here, re-sharded into 1, 2 and 3 ranks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from embedding_store import EmbeddingStore, OptimizerConfig, StoreConfig, TableConfig
from embedding_store.collectives import single_process_group
from embedding_store.distributed import DistributedStore, owner_of, rank_path
from operators.checkpoint.distributed import (
    WORLD_FILE,
    WorldCheckpointError,
    WorldCheckpoints,
    load_world,
    restore_rank,
)
from operators.errors import StoreNotEmptyError

TABLES = (
    TableConfig("t", 4, OptimizerConfig("adagrad", lr=0.1), seed=3, expire_after_steps=2),
    TableConfig("u", 2, OptimizerConfig("sgd", lr=0.5), seed=4),
)


def _train(store: DistributedStore, ids: np.ndarray) -> None:
    for t in TABLES:
        emb = store.lookup(t.name, ids)
        store.apply_gradients(t.name, ids, (emb + 1.0).numpy())
    store.end_step()


def _rows(store: EmbeddingStore, table: str) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    for ids, block in store.export_rows(table):
        for i, r in zip(ids.tolist(), block, strict=True):
            assert i not in out
            out[i] = r.tobytes()
    return out


def test_full_plus_increment_with_tombstones_reshards_into_any_world(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    with single_process_group():
        with DistributedStore(StoreConfig(str(tmp_path / "s"), TABLES, num_shards=2)) as store:
            world = WorldCheckpoints(str(ckpt), store.rank)
            _train(store, np.arange(100, dtype=np.int64))
            first = world.write(store.local, {"w": np.ones(3, np.float32)}, {"t/0": 10})
            _train(store, np.arange(40, 60, dtype=np.int64))
            _train(store, np.arange(50, 60, dtype=np.int64))
            _train(store, np.arange(55, 60, dtype=np.int64))
            expired = store.local.expire()["t"]
            assert len(expired) > 0  # tombstones go into the increment
            second = world.write(store.local, {"w": np.zeros(3, np.float32)}, {"t/0": 30})
            world.close()
            want = {t.name: _rows(store.local, t.name) for t in TABLES}
            version = store.version
    assert [e.version for e in load_world(str(ckpt))] == [first.version, second.version]
    assert second.offsets == {"t/0": 30} and second.parts[0].checkpoint.endswith("-0001")
    for size in (1, 2, 3):
        got: dict[str, dict[int, bytes]] = {t.name: {} for t in TABLES}
        for rank in range(size):
            cfg = StoreConfig(rank_path(str(tmp_path / f"w{size}"), rank), TABLES, num_shards=2)
            with EmbeddingStore(cfg) as local:
                restored = restore_rank(str(ckpt), local, rank, size, second)
                assert local.version == version == restored.version
                assert restored.dense["w"].array.tolist() == [0.0, 0.0, 0.0]
                for t in TABLES:
                    mine = _rows(local, t.name)
                    assert (owner_of(np.array(list(mine), np.int64), size) == rank).all()
                    assert not set(mine) & set(got[t.name]), "a row on two ranks"
                    got[t.name].update(mine)
        assert got == want, f"world of {size}: rows differ from the trained store"


def test_restoring_the_same_world_continues_increments(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    with single_process_group():
        with DistributedStore(StoreConfig(str(tmp_path / "a"), TABLES)) as store:
            world = WorldCheckpoints(str(ckpt), 0)
            _train(store, np.arange(10, dtype=np.int64))
            world.write(store.local, {}, {"t/0": 5})
            world.close()
        with DistributedStore(StoreConfig(str(tmp_path / "b"), TABLES)) as store:
            world = WorldCheckpoints(str(ckpt), 0)
            restored = world.restore(store.local, 1)
            assert not restored.resharded and restored.rows == {"t": 10, "u": 10}
            with pytest.raises(StoreNotEmptyError):
                world.restore(store.local, 1)
            _train(store, np.array([3], dtype=np.int64))
            again = world.write(store.local, {}, {"t/0": 6})
            assert again.parts[0].checkpoint.endswith("-0001")  # an increment on the restored one
            world.close()


def test_a_failed_part_commits_nothing_and_names_the_rank(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "rank-0000").write_text("not a directory")
    with single_process_group():
        with DistributedStore(StoreConfig(str(tmp_path / "s"), TABLES)) as store:
            world = WorldCheckpoints(str(ckpt), 0)
            _train(store, np.arange(5, dtype=np.int64))
            with pytest.raises(WorldCheckpointError, match=r"rank 0"):
                world.write(store.local, {}, {})
            world.close()
    assert not (ckpt / WORLD_FILE).exists()
    assert load_world(str(ckpt)) == ()


def test_a_damaged_world_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / WORLD_FILE).write_text(json.dumps({"checkpoints": [{"version": 1}]}))
    with pytest.raises(WorldCheckpointError, match="unreadable"):
        load_world(str(tmp_path))
