"""All-DRAM baseline: ``torch.nn.EmbeddingBag``, sparse gradients, ``torch.optim.Adagrad``.

::

    weight (num_ids, dim) float32 in DRAM + Adagrad "sum" (num_ids, dim) float32
    step: bag(ids, offsets = 0, 1, 2, ...) ─► (B*F, dim) ─► (B, F, dim) ─► MLP ─► backward
          ─► dense step ─► sparse Adagrad step (sparse grad: only the batch's rows)

torch's Adagrad keeps one accumulator per element; Freshet's row-wise Adagrad keeps one per
row. That is the accepted comparison: it is the optimizer torch ships for sparse gradients.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from benchmarks.systems.base import INIT_SCALE, SPARSE_LR, DenseHead, SystemContext


class TorchBagSystem:
    """Every row in one ``nn.EmbeddingBag`` (pre-warmed: the whole table exists up front)."""

    def __init__(self, ctx: SystemContext) -> None:
        self.ctx = ctx
        self.dense = DenseHead(ctx.workload)
        self.bag: nn.EmbeddingBag | None = None
        self.sparse_opt: torch.optim.Optimizer | None = None
        w = ctx.workload
        self.offsets = torch.arange(w.batch * w.features, dtype=torch.int64)
        self.notes = [
            "torch.optim.Adagrad is element-wise (dim accumulators per row); Freshet's row-wise "
            "Adagrad keeps 1 per row: the accepted comparison",
            "mode='sum' bags of one id each (offsets 0..B*F-1), sparse=True",
        ]

    def prepare(self) -> None:
        """Allocate and initialise the table and the optimizer state."""
        w = self.ctx.workload
        torch.manual_seed(w.seed)
        weight = torch.empty(w.num_ids, w.dim).uniform_(-INIT_SCALE, INIT_SCALE)
        self.bag = nn.EmbeddingBag(w.num_ids, w.dim, mode="sum", sparse=True, _weight=weight)
        self.sparse_opt = torch.optim.Adagrad(self.bag.parameters(), lr=SPARSE_LR)
        warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")

    def train_step(self, i: int) -> float:
        """Train batch ``i``."""
        assert self.bag is not None and self.sparse_opt is not None
        w, batches = self.ctx.workload, self.ctx.batches
        ids = torch.from_numpy(batches.grid(i)).reshape(-1)
        self.sparse_opt.zero_grad(set_to_none=True)
        emb = self.bag(ids, self.offsets).view(w.batch, w.features, w.dim)
        loss = self.dense.backward(emb, batches.label(i))
        self.sparse_opt.step()
        return loss

    def counters(self) -> dict[str, float]:
        """No counters: everything is in DRAM."""
        return {}

    def quiesce(self) -> None:
        """Nothing runs in the background."""

    def finish(self) -> dict[str, Any]:
        """Table size."""
        return {"rows": self.ctx.workload.num_ids}
