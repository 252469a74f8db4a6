"""The distributed store: 2 gloo ranks train to the numbers of one store fed the union batch."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import given, settings
from hypothesis import strategies as st

from embedding_store import (
    EmbeddingStore,
    OptimizerConfig,
    StoreClosedError,
    StoreConfig,
    TableConfig,
)
from embedding_store.collectives import all_reduce_gradients, single_process_group
from embedding_store.distributed import (
    DistributedEmbeddingBag,
    DistributedStore,
    DistributedStoreError,
    distribute_bags,
    owner_of,
)
from embedding_store.initializers import hash_ids
from embedding_store.module import StoreEmbeddingBag
from embedding_store.store import SHARD_SALT

TABLES = (
    TableConfig("a", 4, OptimizerConfig("adagrad", lr=0.1), seed=1, init_scale=0.1),
    TableConfig("b", 3, OptimizerConfig("ftrl", lr=0.5), seed=2, init_scale=0.0),
)
STEPS = 4
BATCH, FIELDS = 16, 3


def _batch(step: int, rank: int) -> np.ndarray:
    """Rank ``rank``'s ids at ``step``: overlapping id ranges, duplicates; rank 1 idle at step 2."""
    if rank == 1 and step == 2:
        return np.empty((0, FIELDS), dtype=np.int64)
    rng = np.random.default_rng(1000 * step + rank)
    return rng.integers(0, 40, size=(BATCH, FIELDS)).astype(np.int64)


def _coef(ids: np.ndarray, dim: int) -> torch.Tensor:
    """A fixed loss weight per position, so each position gets its own gradient."""
    x = (ids[..., None] % 7).astype(np.float32) - 3.0 + np.arange(dim, dtype=np.float32)
    return torch.from_numpy(x)


def _train_step(bags: dict[str, torch.nn.Module], ids: np.ndarray) -> None:
    t = torch.from_numpy(ids)
    loss = torch.zeros(())
    for bag in bags.values():
        out = bag(t)
        loss = loss + (out * _coef(ids, out.shape[-1])).sum() + (out**2).sum()
    loss.backward()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, port: int, root: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        with DistributedStore(StoreConfig(root, TABLES, num_shards=2)) as store:
            bags = {t.name: DistributedEmbeddingBag(store, t.name) for t in TABLES}
            for step in range(STEPS):
                _train_step(bags, _batch(step, rank))  # type: ignore[arg-type]
                store.step()
            # the plain update path: rank 0 gives gradients of id 5 twice, rank 1 once
            ids = np.array([5, 5] if rank == 0 else [5], dtype=np.int64)
            store.apply_gradients("a", ids, np.ones((len(ids), 4), np.float32))
            store.end_step()
            # dense gradients: rank 1 has none for `c`, nobody has one for `d`
            c = torch.nn.Parameter(torch.zeros(3))
            d = torch.nn.Parameter(torch.zeros(2))
            c.grad = torch.full((3,), float(rank + 1)) if rank == 0 else None
            all_reduce_gradients([c, d])
            assert c.grad is not None and c.grad.tolist() == [1.0, 1.0, 1.0]
            assert d.grad is None
            calls = torch.tensor([store.stats.calls])
            gathered = [torch.zeros(1, dtype=torch.int64) for _ in range(world)]
            dist.all_gather(gathered, calls)
            assert len({int(g) for g in gathered}) == 1, "ranks made different collective calls"
            assert store.version == STEPS + 1
    finally:
        dist.destroy_process_group()


def _reference(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """One store trained on the union batches: table -> (ids, rows)."""
    with EmbeddingStore(StoreConfig(str(root), TABLES, num_shards=1)) as store:
        bags = {t.name: StoreEmbeddingBag(store, t.name) for t in TABLES}
        touched: set[int] = set()
        for step in range(STEPS):
            ids = np.concatenate([_batch(step, r) for r in range(2)])
            touched.update(ids.reshape(-1).tolist())
            _train_step(bags, ids)  # type: ignore[arg-type]
            store.step()
        store.apply_gradients("a", np.array([5, 5, 5], np.int64), np.ones((3, 4), np.float32))
        store.end_step()
        all_ids = np.array(sorted(touched | {5}), dtype=np.int64)
        return {t.name: (all_ids, store.read_rows(t.name, all_ids)[1]) for t in TABLES}


@pytest.mark.integration  # two rank processes over gloo
def test_two_ranks_train_like_one_store_on_the_union_batch(tmp_path: Path) -> None:
    root = tmp_path / "dist"
    mp.start_processes(_worker, args=(2, _free_port(), str(root)), nprocs=2, start_method="spawn")
    reference = _reference(tmp_path / "single")
    for t in TABLES:
        ids, want = reference[t.name]
        seen: list[np.ndarray] = []
        for rank in range(2):
            local = StoreConfig(str(root / f"rank-{rank:04d}"), TABLES, num_shards=2)
            with EmbeddingStore(local) as store:
                found, rows = store.read_rows(t.name, ids)
                exported = np.concatenate([i for i, _ in store.export_rows(t.name)])
            mine = owner_of(ids, 2) == rank
            assert (found == mine).all(), f"rank {rank} holds rows it does not own"
            np.testing.assert_allclose(rows["emb"][mine], want["emb"][mine], atol=1e-5)
            if t.optimizer.state_dim(t.dim):
                np.testing.assert_allclose(
                    rows["state"][mine], want["state"][mine], rtol=1e-5, atol=1e-5
                )
            assert (rows["version"][mine] == want["version"][mine]).all()
            assert (rows["freq"][mine] == want["freq"][mine]).all()
            seen.append(exported)
        union = np.concatenate(seen)
        assert len(union) == len(np.unique(union)) == len(ids)  # every row once, none twice


def test_one_rank_is_bit_identical_to_the_single_store(tmp_path: Path) -> None:
    with single_process_group():
        with DistributedStore(StoreConfig(str(tmp_path / "d"), TABLES, num_shards=2)) as dstore:
            bags = {t.name: DistributedEmbeddingBag(dstore, t.name) for t in TABLES}
            for step in range(STEPS):
                _train_step(bags, _batch(step, 0))  # type: ignore[arg-type]
                dstore.step()
            ids = np.arange(40, dtype=np.int64)
            got = {t.name: dstore.read_rows(t.name, ids) for t in TABLES}
            assert dstore.stats.calls == STEPS * len(TABLES) * 4  # counts, ids, rows, grads
    with EmbeddingStore(StoreConfig(str(tmp_path / "s"), TABLES, num_shards=2)) as store:
        plain = {t.name: StoreEmbeddingBag(store, t.name) for t in TABLES}
        for step in range(STEPS):
            _train_step(plain, _batch(step, 0))  # type: ignore[arg-type]
            store.step()
        for t in TABLES:
            found, rows = store.read_rows(t.name, ids)
            assert (found == got[t.name][0]).all()
            assert (rows["emb"] == got[t.name][1]["emb"]).all()


def test_empty_batch_and_jagged_forward_on_one_rank(tmp_path: Path) -> None:
    with single_process_group():
        with DistributedStore(StoreConfig(str(tmp_path), TABLES, num_shards=1)) as store:
            bag = DistributedEmbeddingBag(store, "a", mode="mean")
            empty = bag(torch.empty((0, 3), dtype=torch.int64))
            pooled = bag(torch.tensor([1, 2, 3]), lengths=torch.tensor([2, 0, 1]))
            (empty.sum() + pooled.sum()).backward()
            assert store.step() == 3
            assert tuple(empty.shape) == (0, 3, 4) and tuple(pooled.shape) == (3, 4)


def test_swapping_bags_of_a_built_model(tmp_path: Path) -> None:
    with single_process_group():
        with DistributedStore(StoreConfig(str(tmp_path), TABLES, num_shards=1)) as store:
            model = torch.nn.ModuleDict(
                {
                    "x": StoreEmbeddingBag(store, "a"),
                    "y": torch.nn.Sequential(StoreEmbeddingBag(store, "b")),
                }  # type: ignore[arg-type]
            )
            assert distribute_bags(model, store) == 2
            assert all(
                isinstance(m, DistributedEmbeddingBag)
                for m in model.modules()
                if isinstance(m, StoreEmbeddingBag)
            )


def test_misuse_names_the_rank_and_table(tmp_path: Path) -> None:
    store = DistributedStore(StoreConfig(str(tmp_path), TABLES))
    if not dist.is_initialized():
        with pytest.raises(DistributedStoreError, match="not initialised"):
            store.open()
    with single_process_group():
        with DistributedStore(StoreConfig(str(tmp_path), TABLES)) as store:
            with pytest.raises(DistributedStoreError, match=r"rank 0, table 'a'"):
                store.register("a", np.array([1], np.int64), torch.zeros(1, 4))
            store.close()
            with pytest.raises(StoreClosedError):
                store.lookup("a", np.array([1], np.int64))


@settings(max_examples=50, deadline=None)
@given(
    ids=st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=200),
    world=st.integers(1, 8),
)
def test_every_id_has_exactly_one_owner_independent_of_its_shard(
    ids: list[int], world: int
) -> None:
    arr = np.array(ids, dtype=np.int64)
    owners = owner_of(arr, world)
    assert ((owners >= 0) & (owners < world)).all()
    assert (owners == owner_of(arr, world)).all()  # deterministic
    assert (owner_of(arr[::-1], world) == owners[::-1]).all()  # a function of the id alone


def test_owners_and_shards_split_ids_independently() -> None:
    ids = np.arange(20_000, dtype=np.int64)
    owners = owner_of(ids, 2)
    shards = (hash_ids(ids, SHARD_SALT) % np.uint64(2)).astype(np.int64)
    table: Any = np.zeros((2, 2))
    np.add.at(table, (owners, shards), 1)
    assert (np.abs(table / len(ids) - 0.25) < 0.02).all()  # each rank's rows fill both shards


def test_constructor_does_no_io(tmp_path: Path) -> None:
    DistributedStore(StoreConfig(str(tmp_path / "nothing"), TABLES))
    assert not os.path.exists(tmp_path / "nothing")
