"""The job's checkpoints: layout by world, and a clear error for N ranks over 1-rank ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embedding_store import EmbeddingStore, StoreConfig, TableConfig
from operators.checkpoint.manager import CheckpointManager
from pipeline.training.checkpoints import CheckpointLayoutError, JobCheckpoints, checkpoint_layout
from pipeline.training.spec import CheckpointSpec
from pipeline.training.world import World


def test_n_ranks_refuse_a_one_rank_checkpoint_directory(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    with EmbeddingStore(StoreConfig(str(tmp_path / "s"), (TableConfig("t", 2),), 1)) as store:
        store.lookup("t", np.array([1, 2], np.int64))
        store.step()
        manager = CheckpointManager(str(ckpt))
        manager.write_full(store)
        manager.close()
    assert checkpoint_layout(str(ckpt), World.solo()) == "solo"
    two = World(rank=0, size=2)
    assert checkpoint_layout(str(ckpt), two) == "world"
    checkpoints = JobCheckpoints(CheckpointSpec(str(ckpt)), two)
    with EmbeddingStore(StoreConfig(str(tmp_path / "r0"), (TableConfig("t", 2),), 1)) as local:
        with pytest.raises(CheckpointLayoutError, match="1-rank run; 2 ranks cannot resume"):
            checkpoints.restore(local, state=None)  # type: ignore[arg-type]
    checkpoints.close()
