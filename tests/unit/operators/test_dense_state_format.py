"""Dense checkpoint state is one safetensors file; checkpoints written before it still restore."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load

from embedding_store import EmbeddingStore, OptimizerConfig, StoreConfig, TableConfig
from operators.checkpoint.dense_state import DENSE_FILE, decode_dense, encode_dense, snapshot_dense
from operators.checkpoint.manager import CheckpointManager
from operators.errors import CorruptCheckpointError, DenseStateError

OLD = Path(__file__).resolve().parents[2] / "fixtures" / "checkpoint-format-0.1.0"
TABLES = (TableConfig("t", 4, OptimizerConfig("adagrad", lr=0.1), hot_rows=8),)


def _store(path: Path) -> EmbeddingStore:
    return EmbeddingStore(StoreConfig(str(path), TABLES, num_shards=1))


def test_dense_state_round_trips_through_one_safetensors_file(tmp_path: Path) -> None:
    dense = {
        "model/w": torch.arange(6, dtype=torch.float32).reshape(2, 3),
        "model/b": torch.tensor([1.5, -2.0], dtype=torch.bfloat16),
        "optim/step": torch.tensor(7, dtype=torch.int64),
        "feats/counts": np.array([3, 0, 9], dtype=np.uint32),
        "a name with spaces/é": np.zeros((0, 2), np.float64),
    }
    manager = CheckpointManager(str(tmp_path / "ckpt"))
    with _store(tmp_path / "s") as store:
        info = manager.write_full(store, dense, {"p": 1}, "cfg")
    folder = Path(manager.root) / info.relpath
    assert sorted(p.name for p in folder.glob("dense*")) == [DENSE_FILE]
    raw = (folder / DENSE_FILE).read_bytes()
    header = json.loads(raw[8 : 8 + struct.unpack_from("<Q", raw)[0]])
    dtypes = json.loads(header["__metadata__"]["freshet.torch_dtypes"])
    assert dtypes == {
        "model/w": "float32",
        "model/b": "bfloat16",
        "optim/step": "int64",
        "feats/counts": None,
        "a name with spaces/é": None,
    }
    assert load(raw)["model/w"].tolist() == [[0, 1, 2], [3, 4, 5]]  # any safetensors reader
    with _store(tmp_path / "fresh") as fresh:
        restored = manager.restore(fresh)
    tensors = restored.dense_tensors()
    for name, value in dense.items():
        want = value if isinstance(value, torch.Tensor) else torch.from_numpy(value)
        assert tensors[name].dtype == want.dtype and torch.equal(tensors[name], want), name


def test_a_checkpoint_written_before_safetensors_still_restores(tmp_path: Path) -> None:
    root = tmp_path / "old"
    shutil.copytree(OLD, root)
    assert sorted(p.name for p in root.rglob("dense*")) == ["dense-0000.npy", "dense-0001.npy"]
    manager = CheckpointManager(str(root))
    assert manager.verify(manager.latest_complete().id) == []
    with _store(tmp_path / "fresh") as fresh:
        restored = manager.restore(fresh)
        assert restored.dense_tensors()["w"].tolist() == [0.0, 1.0, 2.0]
        b = restored.dense_tensors()["b"]
        assert b.dtype == torch.bfloat16 and b.tolist() == [1.5, -2.0]
        # the next checkpoint on top of it is written in the new layout
        info = manager.write_incremental(fresh, {"w": np.ones(3, np.float32)}, {"p": 8}, "cfg")
    assert (root / info.relpath / DENSE_FILE).exists()


def test_a_damaged_dense_file_names_the_file(tmp_path: Path) -> None:
    manager = CheckpointManager(str(tmp_path / "ckpt"))
    with _store(tmp_path / "s") as store:
        info = manager.write_full(store, {"w": np.ones(3, np.float32)}, {}, "cfg")
    path = Path(manager.root) / info.relpath / DENSE_FILE
    path.write_bytes(path.read_bytes()[:-2])
    with (
        _store(tmp_path / "fresh") as fresh,
        pytest.raises(CorruptCheckpointError, match=r"dense\.safetensors"),
    ):
        manager.restore(fresh, info.id, verify=False)
    with pytest.raises(DenseStateError, match="not a dense-state safetensors file"):
        decode_dense(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    assert decode_dense(encode_dense(snapshot_dense({}))) == {}
