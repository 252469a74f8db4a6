"""Placement is invisible: tiered + sharded == all-DRAM == plain torch, for every optimizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from embedding_store import (
    EmbeddingStore,
    OptimizerConfig,
    StoreConfig,
    StoreEmbeddingBag,
    TableConfig,
)
from embedding_store.initializers import initial_values
from tests.conftest import zipf_ids

STEPS, BATCH, BAG, VOCAB, DIM = 200, 32, 3, 3000, 8
OPTIMIZERS = {
    "sgd": OptimizerConfig("sgd", lr=0.5),
    "adagrad": OptimizerConfig("adagrad", lr=0.1, eps=1e-8),
    "rowwise_adagrad": OptimizerConfig("rowwise_adagrad", lr=0.1),
    "adam": OptimizerConfig("adam", lr=0.01),
    "ftrl": OptimizerConfig("ftrl", lr=0.1, l1=0.001, l2=0.01),
}


def stream() -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """200 steps: bags of BAG ids per sample (multi-hot), dense inputs, labels."""
    rng = np.random.default_rng(7)
    out = []
    for _ in range(STEPS):
        ids = zipf_ids(rng, BATCH * BAG, VOCAB)
        dense = rng.normal(size=(BATCH, 4)).astype(np.float32)
        y = (rng.random(BATCH) < 0.3).astype(np.float32)
        out.append((ids, dense, y))
    return out


class Tower(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.mlp = nn.Sequential(nn.Linear(DIM + 4, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, pooled: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([pooled, dense], dim=1)).squeeze(1)


def train_store(
    path: Path,
    opt: OptimizerConfig,
    shards: int,
    hot_rows: int | None,
    slab_rows: int | None = None,
    parallel_min_rows: int = 1024,
):
    table = TableConfig("t", DIM, opt, seed=3, hot_rows=hot_rows, slab_rows=slab_rows)
    cfg = StoreConfig(str(path), (table,), num_shards=shards, parallel_min_rows=parallel_min_rows)
    data = stream()
    offsets = torch.arange(0, BATCH * BAG, BAG)
    tower = Tower()
    dense_opt = torch.optim.Adam(tower.parameters(), lr=0.01)
    with EmbeddingStore(cfg) as store:
        bag = StoreEmbeddingBag(store, "t", mode="mean")
        for ids, dense, y in data:
            logits = tower(bag(torch.from_numpy(ids), offsets=offsets), torch.from_numpy(dense))
            loss = F.binary_cross_entropy_with_logits(logits, torch.from_numpy(y))
            dense_opt.zero_grad()
            loss.backward()
            dense_opt.step()
            store.step()
        touched = np.unique(np.concatenate([d[0] for d in data]))
        found, rows = store.read_rows("t", touched)
        stats = store.stats("t")
    assert found.all()
    return touched, rows, [p.detach().clone() for p in tower.parameters()], stats


def train_torch(opt: OptimizerConfig):
    data = stream()
    offsets = torch.arange(0, BATCH * BAG, BAG)
    tower = Tower()
    dense_opt = torch.optim.Adam(tower.parameters(), lr=0.01)
    emb = nn.Embedding(VOCAB, DIM)
    with torch.no_grad():
        emb.weight.copy_(
            torch.from_numpy(initial_values(np.arange(VOCAB, dtype=np.int64), DIM, 3, 0.05))
        )
    if opt.kind == "sgd":
        sparse_opt: torch.optim.Optimizer = torch.optim.SGD(emb.parameters(), lr=opt.lr)
    else:
        sparse_opt = torch.optim.Adagrad(emb.parameters(), lr=opt.lr, eps=opt.eps)
    for ids, dense, y in data:
        pooled = F.embedding_bag(torch.from_numpy(ids), emb.weight, offsets, mode="mean")
        loss = F.binary_cross_entropy_with_logits(
            tower(pooled, torch.from_numpy(dense)), torch.from_numpy(y)
        )
        dense_opt.zero_grad()
        sparse_opt.zero_grad()
        loss.backward()
        dense_opt.step()
        sparse_opt.step()
    return emb.weight.detach().numpy(), [p.detach().clone() for p in tower.parameters()]


@pytest.mark.parametrize("tiers", ["dram+rocksdb", "dram+slab+rocksdb"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_tiered_sharded_equals_all_dram(tmp_path: Path, name: str, tiers: str) -> None:
    opt = OPTIMIZERS[name]
    touched, ref_rows, ref_dense, _ = train_store(tmp_path / "dram", opt, shards=1, hot_rows=None)
    budget = max(1, int(0.05 * len(touched)))
    # three tiers: the slab holds a fifth of the rows, so it also overflows into RocksDB
    slab = max(1, int(0.2 * len(touched))) if "slab" in tiers else None
    ids, rows, dense, stats = train_store(
        tmp_path / "tiered", opt, shards=4, hot_rows=budget, slab_rows=slab
    )
    assert np.array_equal(ids, touched)
    # the tiered store really did use its lower tiers: it evicted and missed
    assert stats.evicted > 0 and stats.misses > len(touched)
    if slab is not None:  # ... and every tier of the chain held rows and passed them down
        assert 0 < stats.slab_rows <= slab + 4 and stats.slab_demoted > 0
    assert np.abs(rows["emb"] - ref_rows["emb"]).max() <= 1e-6
    if opt.kind != "sgd":
        assert np.abs(rows["state"] - ref_rows["state"]).max() <= 1e-6
    assert np.array_equal(rows["version"], ref_rows["version"])
    for a, b in zip(dense, ref_dense, strict=True):
        assert (a - b).abs().max().item() <= 1e-6
    # and training moved the rows away from their initial values
    init = initial_values(touched, DIM, 3, 0.05)
    assert np.abs(rows["emb"] - init).max() > 1e-3


@pytest.mark.parametrize("name", ["sgd", "adagrad"])
def test_store_matches_plain_torch(tmp_path: Path, name: str) -> None:
    opt = OPTIMIZERS[name]
    touched, rows, dense, _ = train_store(tmp_path / "tiered", opt, shards=4, hot_rows=100)
    weight, ref_dense = train_torch(opt)
    assert np.abs(rows["emb"] - weight[touched]).max() <= 1e-6
    untouched = np.setdiff1d(np.arange(VOCAB), touched)
    init = initial_values(untouched, DIM, 3, 0.05)
    assert np.array_equal(weight[untouched], init)
    for a, b in zip(dense, ref_dense, strict=True):
        assert (a - b).abs().max().item() <= 1e-6


@pytest.mark.parametrize("name", ["adagrad", "ftrl"])
def test_shard_work_inline_or_on_the_pool_is_the_same(tmp_path: Path, name: str) -> None:
    """Small calls run the shards inline, large ones on the pool: the same rows either way."""
    opt = OPTIMIZERS[name]
    pooled = train_store(tmp_path / "pool", opt, shards=4, hot_rows=100, parallel_min_rows=0)
    inline = train_store(tmp_path / "inline", opt, shards=4, hot_rows=100, parallel_min_rows=10**9)
    assert np.array_equal(pooled[0], inline[0])
    for f in ("emb", "state", "version", "last_step", "freq", "epoch"):  # bit for bit
        assert np.array_equal(pooled[1][f], inline[1][f]), f
    for a, b in zip(pooled[2], inline[2], strict=True):
        assert torch.equal(a, b)
