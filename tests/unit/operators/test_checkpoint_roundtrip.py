"""Property: a full checkpoint plus its increments restores exactly the step it names.

Hypothesis generates training sequences on a small tiered store (two tables, a DRAM budget,
expiry by steps) interleaved with aging, migration, expiry, full and incremental checkpoints
(inline or on the background thread, while training goes on) and compactions. At each
checkpoint the test snapshots every row (all fields, bit for bit), the store's state, the
dense arrays and the offsets; afterwards each checkpoint is restored into a fresh store and
must match its snapshot exactly.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embedding_store import EmbeddingStore, OptimizerConfig, StoreConfig, TableConfig
from operators.checkpoint.manager import CheckpointHandle, CheckpointManager
from operators.errors import NoBaseCheckpointError
from tests.unit.operators.conftest import assert_same_contents, store_contents, train_step

VOCAB = 150
TABLES = (
    TableConfig(
        "ads", 4, OptimizerConfig("adam", lr=0.05), seed=1, hot_rows=16, expire_after_steps=1
    ),
    TableConfig("users", 3, OptimizerConfig("sgd", lr=0.1), seed=2, expire_after_steps=2),
)

ids_st = st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=30).map(
    lambda xs: np.array(xs, dtype=np.int64)
)
# one round: some training steps, placement and expiry calls, then maybe a checkpoint
round_st = st.fixed_dictionaries(
    {
        "train": st.lists(ids_st, max_size=3),
        "expire": st.sampled_from(["no", "before", "after"]),  # around the checkpoint
        "age": st.booleans(),
        "migrate": st.booleans(),
        "checkpoint": st.sampled_from(["none", "full", "incremental", "incremental", "compact"]),
        "background": st.booleans(),
    }
)


def dense_at(step: int) -> dict[str, object]:
    rng = np.random.default_rng(step)
    return {
        "mlp.weight": rng.standard_normal((3, 2)).astype(np.float32),
        "optim/step": torch.tensor(float(step)),
    }


def config(path: str) -> StoreConfig:
    return StoreConfig(path, TABLES, num_shards=2)


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(rounds=st.lists(round_st, min_size=2, max_size=8))
def test_chain_restores_the_named_step_exactly(rounds: list[dict[str, Any]]) -> None:
    with tempfile.TemporaryDirectory() as d:
        manager = CheckpointManager(f"{d}/ckpt", retention=100, rows_per_file=64)
        expected: dict[str, dict[str, Any]] = {}
        pending: list[tuple[CheckpointHandle, dict[str, Any]]] = []

        def collect() -> None:
            manager.wait()
            for handle, snap in pending:
                expected[handle.result().id] = snap
            pending.clear()

        with EmbeddingStore(config(f"{d}/store")) as store:
            step = 0
            based = False  # a full checkpoint was written, so increments have a base
            for r in rounds:
                for ids in r["train"]:
                    train_step(store, "ads", ids)
                    train_step(store, "users", ids[::2] + 1)
                    store.end_step()
                    step += 1
                if r["age"]:
                    store.age()
                if r["migrate"]:
                    store.migrate()
                if r["expire"] == "before":
                    store.expire()
                kind = r["checkpoint"]
                if kind == "compact":
                    collect()
                    if manager.list():
                        tip = manager.latest_complete()
                        assert tip is not None
                        info = manager.compact()
                        expected[info.id] = expected[tip.id]
                elif kind != "none":
                    snap = {
                        "rows": store_contents(store),
                        "state": store.state(),
                        "dense": dense_at(step),
                        "offsets": {"events/0": step * 7},
                    }
                    args = (store, dense_at(step), {"events/0": step * 7}, "cfg")
                    if kind == "incremental" and not based:
                        with pytest.raises(NoBaseCheckpointError):
                            manager.write_incremental(*args)
                        kind = "full"
                    if r["background"]:  # written while training goes on
                        submit = (
                            manager.submit_full if kind == "full" else manager.submit_incremental
                        )
                        pending.append((submit(*args), snap))
                    else:
                        write = manager.write_full if kind == "full" else manager.write_incremental
                        expected[write(*args).id] = snap
                    based = based or kind == "full"
                if r["expire"] == "after":
                    store.expire()
            collect()
        assert sorted(expected) == [c.id for c in manager.list()]
        for i, (ident, snap) in enumerate(sorted(expected.items())):
            assert manager.verify(ident) == []
            with EmbeddingStore(config(f"{d}/restored-{i}")) as fresh:
                restored = manager.restore(fresh, ident)
                assert_same_contents(store_contents(fresh), snap["rows"])
                assert fresh.state() == snap["state"]
                assert fresh.version == restored.version == snap["state"]["version"]
            assert restored.offsets == snap["offsets"]
            assert restored.config_hash == "cfg"
            want_dense = snap["dense"]
            assert np.array_equal(restored.dense["mlp.weight"], want_dense["mlp.weight"])
            step_tensor = restored.dense_tensors()["optim/step"]
            assert step_tensor.dtype == torch.float32
            assert torch.equal(step_tensor, want_dense["optim/step"])
        manager.close()


def test_latest_restores_the_newest_and_increments_hold_only_written_rows(tmp_path: Path) -> None:
    manager = CheckpointManager(str(tmp_path / "ckpt"))
    rng = np.random.default_rng(0)
    with EmbeddingStore(config(str(tmp_path / "store"))) as store:
        for _ in range(5):
            train_step(store, "ads", rng.integers(0, VOCAB, 40).astype(np.int64))
            store.end_step()
        full = manager.write_full(store)
        train_step(store, "ads", np.array([1, 2, 3], dtype=np.int64))
        store.end_step()
        incr = manager.write_incremental(store)
        want = store_contents(store)
    assert full.rows > 3
    assert (incr.rows, incr.parent, incr.version) == (3, full.id, 6)
    assert manager.latest_complete() == incr
    with EmbeddingStore(config(str(tmp_path / "fresh"))) as fresh:
        assert manager.restore(fresh).checkpoint == incr.id
        assert_same_contents(store_contents(fresh), want)


def test_increment_carries_expiries_at_and_after_its_base(tmp_path: Path) -> None:
    manager = CheckpointManager(str(tmp_path / "ckpt"))
    with EmbeddingStore(config(str(tmp_path / "store"))) as store:
        train_step(store, "ads", np.arange(10, dtype=np.int64))
        store.end_step()
        for _ in range(3):
            train_step(store, "ads", np.arange(5, dtype=np.int64))
            store.end_step()
        manager.write_full(store)
        # expired at the base's own boundary: recorded at the base's version
        assert store.expire()["ads"].tolist() == [5, 6, 7, 8, 9]
        train_step(store, "ads", np.array([0, 7], dtype=np.int64))  # 7 comes back
        store.end_step()
        incr = manager.write_incremental(store)
        want = store_contents(store)
    assert incr.tombstones == 4  # 5, 6, 8, 9: 7 was written again
    with EmbeddingStore(config(str(tmp_path / "fresh"))) as fresh:
        manager.restore(fresh)
        assert_same_contents(store_contents(fresh), want)
    assert want["ads"][0].tolist() == [0, 1, 2, 3, 4, 7]
