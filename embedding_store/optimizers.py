"""Sparse optimizers fused into ``apply_gradients``: vectorised numpy math on gathered rows.

State columns per row (``sdim``)::

    sgd              -                        (0)
    adagrad          acc[dim]                 (dim)
    rowwise_adagrad  acc                      (1)
    adam             m[dim] | v[dim] | t      (2*dim + 1; t counts this row's updates)
    ftrl             z[dim] | n[dim]          (2*dim)

Every update reads only the row's own state, so a row's trajectory does not depend on
where it lives or which other rows share its batch.

>>> import numpy as np
>>> from embedding_store.config import OptimizerConfig
>>> cfg = OptimizerConfig("adagrad", lr=0.1)
>>> emb = np.ones((1, 2), np.float32); state = initial_state(emb, cfg)
>>> emb, state = update(emb, state, np.full((1, 2), 2.0, np.float32), cfg)
>>> [round(float(x), 4) for x in emb[0]], state.tolist()
([0.9, 0.9], [[4.0, 4.0]])
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch

from embedding_store.config import OptimizerConfig

F32 = npt.NDArray[np.float32]


def initial_state(emb: F32, cfg: OptimizerConfig) -> F32:
    """Optimizer state for new rows whose first values are ``emb``."""
    n, dim = emb.shape
    acc0 = np.float32(cfg.initial_accumulator)
    if cfg.kind == "sgd":
        return np.zeros((n, 0), np.float32)
    if cfg.kind == "adagrad":
        return np.full((n, dim), acc0, np.float32)
    if cfg.kind == "rowwise_adagrad":
        return np.full((n, 1), acc0, np.float32)
    if cfg.kind == "adam":
        return np.zeros((n, 2 * dim + 1), np.float32)
    # FTRL: choose z so that the closed form gives back the initial weights (l1 = l2 = 0).
    nacc = np.full((n, dim), acc0, np.float32)
    z = -emb * ((np.float32(cfg.beta) + np.sqrt(nacc)) / np.float32(cfg.lr))
    return np.concatenate([z, nacc], axis=1).astype(np.float32)


def update(emb: F32, state: F32, grad: F32, cfg: OptimizerConfig) -> tuple[F32, F32]:
    """One optimizer step on gathered rows; returns the new ``(emb, state)``."""
    lr = np.float32(cfg.lr)
    g = grad.astype(np.float32, copy=False)
    if cfg.kind == "sgd":
        return (emb - lr * g).astype(np.float32), state
    if cfg.kind in ("adagrad", "rowwise_adagrad"):
        return _adagrad(emb, state, g, cfg)
    if cfg.kind == "adam":
        return _adam(emb, state, g, cfg)
    return _ftrl(emb, state, g, cfg)


def _adagrad(emb: F32, state: F32, g: F32, cfg: OptimizerConfig) -> tuple[F32, F32]:
    # torch kernels in torch.optim.Adagrad's order (addcmul_, sqrt, add_, addcdiv_), so the
    # store's rows are bit-identical to an nn.Embedding trained with torch's Adagrad.
    w = torch.from_numpy(np.array(emb, dtype=np.float32))
    acc = torch.from_numpy(np.array(state, dtype=np.float32))
    gt = torch.from_numpy(np.ascontiguousarray(g))
    if cfg.kind == "adagrad":
        acc.addcmul_(gt, gt, value=1.0)
    else:
        acc.add_((gt * gt).mean(dim=1, keepdim=True))
    std = acc.sqrt().add_(cfg.eps)
    w.addcdiv_(gt, std, value=-cfg.lr)
    return w.numpy(), acc.numpy()


def _adam(emb: F32, state: F32, g: F32, cfg: OptimizerConfig) -> tuple[F32, F32]:
    dim = emb.shape[1]
    b1, b2 = np.float32(cfg.beta1), np.float32(cfg.beta2)
    m = b1 * state[:, :dim] + (1 - b1) * g
    v = b2 * state[:, dim : 2 * dim] + (1 - b2) * g * g
    t = state[:, 2 * dim :] + np.float32(1.0)
    m_hat = m / (1 - np.power(b1, t))
    v_hat = v / (1 - np.power(b2, t))
    new = emb - np.float32(cfg.lr) * m_hat / (np.sqrt(v_hat) + np.float32(cfg.eps))
    return new.astype(np.float32), np.concatenate([m, v, t], axis=1).astype(np.float32)


def _ftrl(emb: F32, state: F32, g: F32, cfg: OptimizerConfig) -> tuple[F32, F32]:
    dim = emb.shape[1]
    alpha, beta = np.float32(cfg.lr), np.float32(cfg.beta)
    l1, l2 = np.float32(cfg.l1), np.float32(cfg.l2)
    z, n = state[:, :dim], state[:, dim:]
    n_new = n + g * g
    sigma = (np.sqrt(n_new) - np.sqrt(n)) / alpha
    z_new = z + g - sigma * emb
    shrunk = z_new - np.sign(z_new) * l1
    w = np.where(
        np.abs(z_new) <= l1, np.float32(0.0), -shrunk / ((beta + np.sqrt(n_new)) / alpha + l2)
    )
    return w.astype(np.float32), np.concatenate([z_new, n_new], axis=1).astype(np.float32)
