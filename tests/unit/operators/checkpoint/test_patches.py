"""Patch layers in checkpoints: each capture asks the source, restore gives the chain's layers.

The source records what it was asked (full or since which base), and gives a layer naming
the capture, so the tests see which layers a restore returns and in what order, after
increments, a compaction, a world checkpoint and a re-shard.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from embedding_store import EmbeddingStore, StoreConfig, TableConfig
from embedding_store.collectives import single_process_group
from embedding_store.distributed import DistributedStore
from operators.checkpoint.dense_state import DenseValue
from operators.checkpoint.distributed import WorldCheckpoints, restore_rank
from operators.checkpoint.manager import CheckpointManager

TABLES = (TableConfig("t", 2),)


class Recorder:
    """A patch source: layer ``{"at": [version], "since": [base or -1]}``."""

    def __init__(self) -> None:
        self.asked: list[tuple[int, int | None]] = []

    def capture(self, version: int, base_version: int | None) -> Mapping[str, DenseValue]:
        self.asked.append((version, base_version))
        since = -1 if base_version is None else base_version
        return {"at": np.array([version], np.int64), "since": np.array([since], np.int64)}


def train(store: EmbeddingStore | DistributedStore, ids: np.ndarray) -> None:
    emb = store.lookup("t", ids)
    store.apply_gradients("t", ids, emb.numpy())
    store.end_step()


def layers_of(patches: tuple[Mapping[str, np.ndarray], ...]) -> list[tuple[int, int]]:
    return [(int(p["at"][0]), int(p["since"][0])) for p in patches]


def test_increments_ask_since_their_base_and_restore_returns_every_layer(tmp_path: Path) -> None:
    source = Recorder()
    manager = CheckpointManager(str(tmp_path / "ckpt"), patches=source)
    with EmbeddingStore(StoreConfig(str(tmp_path / "a"), TABLES, 1)) as store:
        train(store, np.arange(10, dtype=np.int64))
        manager.write_full(store, {"w": np.ones(2)})
        train(store, np.arange(3, dtype=np.int64))
        manager.submit_incremental(store, {"w": np.ones(2)}).result()
        train(store, np.arange(2, dtype=np.int64))
        manager.write_incremental(store, {"w": np.ones(2)})
    assert source.asked == [(1, None), (2, 1), (3, 2)]
    with EmbeddingStore(StoreConfig(str(tmp_path / "b"), TABLES, 1)) as fresh:
        state = manager.restore(fresh)
    assert layers_of(state.patches) == [(1, -1), (2, 1), (3, 2)]
    assert sorted(state.dense) == ["w"]  # patch arrays are not dense parameters
    # a compaction keeps every layer in order, and increments go on after it
    compacted = manager.compact()
    assert compacted.index == 0
    with EmbeddingStore(StoreConfig(str(tmp_path / "c"), TABLES, 1)) as fresh:
        state = manager.restore(fresh)
        assert layers_of(state.patches) == [(1, -1), (2, 1), (3, 2)]
        train(fresh, np.arange(4, dtype=np.int64))
        manager.write_incremental(fresh, {"w": np.ones(2)})
    assert source.asked[-1] == (4, 3)
    with EmbeddingStore(StoreConfig(str(tmp_path / "d"), TABLES, 1)) as fresh:
        state = manager.restore(fresh)
    assert layers_of(state.patches) == [(1, -1), (2, 1), (3, 2), (4, 3)]
    manager.close()


def test_a_world_part_keeps_its_ranks_layers_and_a_reshard_starts_without(
    tmp_path: Path,
) -> None:
    ckpt = tmp_path / "ckpt"
    source = Recorder()
    with single_process_group():
        with DistributedStore(StoreConfig(str(tmp_path / "s"), TABLES, num_shards=1)) as store:
            world = WorldCheckpoints(str(ckpt), store.rank, patches=source)
            train(store, np.arange(20, dtype=np.int64))
            world.write(store.local, {"w": np.ones(2)}, {"t/0": 1})
            train(store, np.arange(5, dtype=np.int64))
            entry = world.write(store.local, {"w": np.ones(2)}, {"t/0": 2})
            world.close()
    again = WorldCheckpoints(str(ckpt), 0)
    with EmbeddingStore(StoreConfig(str(tmp_path / "r"), TABLES, 1)) as local:
        got = again.restore(local, 1)
    again.close()
    assert not got.resharded and layers_of(got.patches) == [(1, -1), (2, 1)]
    assert sorted(got.dense) == ["w"]
    for rank in range(2):
        with EmbeddingStore(StoreConfig(str(tmp_path / f"x{rank}"), TABLES, 1)) as local:
            moved = restore_rank(str(ckpt), local, rank, 2, entry)
        assert moved.resharded and moved.patches == ()
        assert sorted(moved.dense) == ["w"]
