"""Naive RocksDB offloading: every batch reads its rows from RocksDB and writes them back.

::

    step: unique ids ─► multi-get (rocksdict, one RocksDB, no cache of our own)
          ─► rows (U, dim + 1) float32: embedding | row-wise Adagrad accumulator
          ─► W (U, dim) leaf ─► W[inverse] (B, F, dim) ─► MLP ─► backward ─► dense step
          ─► row-wise Adagrad on W.grad ─► write batch of the U updated rows

The same optimizer as Freshet (row-wise Adagrad); RocksDB with rocksdict's default options.
Pre-warm writes every id's row (ascending keys) before the run.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from rocksdict import Options, Rdict, WriteBatch

from benchmarks.systems.base import EPS, SPARSE_LR, DenseHead, SystemContext, id_chunks, random_rows

KEY = np.dtype(">i8")
WRITE_CHUNK = 250_000


def encode_keys(ids: npt.NDArray[np.int64]) -> list[bytes]:
    """Big-endian 8-byte keys (key order == id order)."""
    raw = ids.astype(KEY).tobytes()
    return [raw[i : i + 8] for i in range(0, len(raw), 8)]


def encode_rows(rows: npt.NDArray[np.float32]) -> list[bytes]:
    """One value per row."""
    raw = np.ascontiguousarray(rows, dtype=np.float32).tobytes()
    size = rows.shape[1] * 4
    return [raw[i : i + size] for i in range(0, len(raw), size)]


class NaiveRocksSystem:
    """Rows live only in RocksDB; each batch is a multi-get and a write batch."""

    def __init__(self, ctx: SystemContext) -> None:
        self.ctx = ctx
        self.dense = DenseHead(ctx.workload)
        self.db: Rdict | None = None
        self.notes = [
            "per batch: rocksdict multi-get of the unique ids, train, write batch of the updated "
            "rows; no cache; row-wise Adagrad like Freshet; default RocksDB options",
        ]

    def prepare(self) -> None:
        """Open RocksDB and write every id's row."""
        w = self.ctx.workload
        self.db = Rdict(str(self.ctx.workdir / "naive-rocksdb"), Options(raw_mode=True))
        rng = np.random.default_rng(w.seed + 1)
        for ids in id_chunks(w.num_ids, WRITE_CHUNK):
            rows = np.zeros((len(ids), w.dim + 1), dtype=np.float32)
            rows[:, : w.dim] = random_rows(rng, len(ids), w.dim)
            self._write(ids, rows)

    def _write(self, ids: npt.NDArray[np.int64], rows: npt.NDArray[np.float32]) -> None:
        assert self.db is not None
        wb = WriteBatch(raw_mode=True)
        for k, v in zip(encode_keys(ids), encode_rows(rows), strict=True):
            wb.put(k, v)
        self.db.write(wb)

    def train_step(self, i: int) -> float:
        """Read, train and write back batch ``i``."""
        assert self.db is not None
        w, batches = self.ctx.workload, self.ctx.batches
        uniq, inverse = np.unique(batches.grid(i), return_inverse=True)
        values = self.db.get(encode_keys(uniq))
        rows = np.frombuffer(b"".join(values), dtype=np.float32).reshape(len(uniq), w.dim + 1)
        weight = torch.from_numpy(rows[:, : w.dim].copy()).requires_grad_(True)
        acc = torch.from_numpy(rows[:, w.dim :].copy())
        emb = weight[torch.from_numpy(inverse.reshape(-1))].view(w.batch, w.features, w.dim)
        loss = self.dense.backward(emb, batches.label(i))
        assert weight.grad is not None
        g = weight.grad
        with torch.no_grad():
            acc.add_((g * g).mean(dim=1, keepdim=True))
            weight.addcdiv_(g, acc.sqrt().add_(EPS), value=-SPARSE_LR)
        self._write(uniq, torch.cat([weight.detach(), acc], dim=1).numpy())
        return loss

    def counters(self) -> dict[str, float]:
        """No counters: every row is read from RocksDB."""
        return {}

    def quiesce(self) -> None:
        """Nothing runs in the background."""

    def finish(self) -> dict[str, Any]:
        """Rows written at pre-warm."""
        return {"rows": self.ctx.workload.num_ids}
