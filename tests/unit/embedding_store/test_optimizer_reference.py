"""Every sparse optimizer against a float64 numpy reference written here, on duplicate ids and
rows that move between DRAM and RocksDB every step (a DRAM budget of 4 rows, demotions)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embedding_store import EmbeddingStore, OptimizerConfig, StoreConfig, TableConfig
from embedding_store.initializers import initial_values

DIM, STEPS, SEED, SCALE = 3, 12, 5, 0.5
IDS = np.arange(10, dtype=np.int64)

CONFIGS = {
    "sgd": OptimizerConfig("sgd", lr=0.3),
    "adagrad": OptimizerConfig("adagrad", lr=0.2, eps=1e-3, initial_accumulator=0.1),
    "rowwise_adagrad": OptimizerConfig(
        "rowwise_adagrad", lr=0.2, eps=1e-3, initial_accumulator=0.1
    ),
    "adam": OptimizerConfig("adam", lr=0.05, beta1=0.8, beta2=0.95, eps=1e-4),
    "ftrl": OptimizerConfig("ftrl", lr=0.4, beta=0.7, l1=0.05, l2=0.6, initial_accumulator=0.2),
}


def _batch(step: int) -> np.ndarray:
    """Ids of one step, with duplicates; some ids skip steps."""
    rng = np.random.default_rng(100 + step)
    return rng.choice(IDS, size=14, replace=True).astype(np.int64)


def _grads(ids: np.ndarray, step: int) -> np.ndarray:
    k = np.arange(DIM, dtype=np.float64)
    return np.sin(ids[:, None] * 0.37 + step * 0.9 + k) * (1 + (ids[:, None] % 3))


class Reference:
    """The optimizers in float64, row by row, as their papers write them."""

    def __init__(self, cfg: OptimizerConfig) -> None:
        self.cfg = cfg
        self.w = initial_values(IDS, DIM, SEED, SCALE).astype(np.float64)
        acc0 = cfg.initial_accumulator
        self.acc = np.full((len(IDS), DIM), acc0)  # adagrad (row-wise: column 0)
        self.m = np.zeros((len(IDS), DIM))
        self.v = np.zeros((len(IDS), DIM))
        self.t = np.zeros(len(IDS))
        self.n = np.full((len(IDS), DIM), acc0)
        self.z = -self.w * (cfg.beta + np.sqrt(self.n)) / cfg.lr

    def step(self, ids: np.ndarray, grads: np.ndarray) -> None:
        c = self.cfg
        summed: dict[int, np.ndarray] = {}
        for i, g in zip(ids.tolist(), grads, strict=True):
            summed[i] = summed.get(i, 0.0) + g
        for i, g in summed.items():
            if c.kind == "sgd":
                self.w[i] -= c.lr * g
            elif c.kind == "adagrad":
                self.acc[i] += g * g
                self.w[i] -= c.lr * g / (np.sqrt(self.acc[i]) + c.eps)
            elif c.kind == "rowwise_adagrad":
                self.acc[i] += np.mean(g * g)
                self.w[i] -= c.lr * g / (np.sqrt(self.acc[i][0]) + c.eps)
            elif c.kind == "adam":
                self.t[i] += 1
                self.m[i] = c.beta1 * self.m[i] + (1 - c.beta1) * g
                self.v[i] = c.beta2 * self.v[i] + (1 - c.beta2) * g * g
                m_hat = self.m[i] / (1 - c.beta1 ** self.t[i])
                v_hat = self.v[i] / (1 - c.beta2 ** self.t[i])
                self.w[i] -= c.lr * m_hat / (np.sqrt(v_hat) + c.eps)
            else:
                n_new = self.n[i] + g * g
                sigma = (np.sqrt(n_new) - np.sqrt(self.n[i])) / c.lr
                self.z[i] += g - sigma * self.w[i]
                self.n[i] = n_new
                z = self.z[i]
                self.w[i] = np.where(
                    np.abs(z) <= c.l1,
                    0.0,
                    -(z - np.sign(z) * c.l1) / ((c.beta + np.sqrt(n_new)) / c.lr + c.l2),
                )

    def state(self) -> np.ndarray:
        kind = self.cfg.kind
        if kind == "adagrad":
            return self.acc
        if kind == "rowwise_adagrad":
            return self.acc[:, :1]
        if kind == "adam":
            return np.concatenate([self.m, self.v, self.t[:, None]], axis=1)
        if kind == "ftrl":
            return np.concatenate([self.z, self.n], axis=1)
        return np.zeros((len(IDS), 0))


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_optimizer_matches_a_float64_reference_across_tiers(tmp_path: Path, kind: str) -> None:
    cfg = CONFIGS[kind]
    table = TableConfig("t", DIM, cfg, seed=SEED, init_scale=SCALE, hot_rows=4)
    ref = Reference(cfg)
    moved = 0
    with EmbeddingStore(StoreConfig(str(tmp_path), (table,), num_shards=2)) as store:
        store.lookup("t", IDS)
        store.end_step()  # every row exists, most of them now in RocksDB
        for step in range(STEPS):
            ids = _batch(step)
            emb = store.lookup("t", ids).numpy()
            np.testing.assert_allclose(emb, ref.w[ids], rtol=1e-4, atol=1e-5)
            g = _grads(ids, step)
            store.apply_gradients("t", ids, g.astype(np.float32))
            ref.step(ids, g)
            store.end_step()
            moved += store.demote("t", 3)
        found, rows = store.read_rows("t", IDS)
        assert store.stats("t", count_cold=True).cold_rows
    assert found.all() and moved > STEPS
    np.testing.assert_allclose(rows["emb"], ref.w, rtol=1e-4, atol=1e-5)
    state = rows["state"] if ref.state().shape[1] else np.zeros((len(IDS), 0))
    np.testing.assert_allclose(state, ref.state(), rtol=1e-4, atol=1e-5)
    assert not np.allclose(rows["emb"], initial_values(IDS, DIM, SEED, SCALE), atol=1e-3)
