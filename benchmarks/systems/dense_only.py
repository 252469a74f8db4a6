"""The dense MLP alone: the ceiling on every system's samples/s in the store benchmark.

::

    prepare:  one fixed (B, F, dim) embedding tensor, a leaf that requires grad
    step i:   MLP forward on it ─► BCE(labels of batch i) ─► backward (down to the
              embeddings, as every system needs) ─► Adam step; no lookup, no sparse update

Every system under test does at least this work per batch, on the same tower, optimizer and
torch threads, so none can train faster than this one. Where a target asks the tiered store
for more samples/s than this measures in the same run, no embedding store could meet it on
that machine.
"""

from __future__ import annotations

from typing import Any

import torch

from benchmarks.systems.base import INIT_SCALE, DenseHead, SystemContext


class DenseOnlySystem:
    """The MLP trained on one fixed embedding tensor (no embedding work at all)."""

    def __init__(self, ctx: SystemContext) -> None:
        self.ctx = ctx
        self.dense = DenseHead(ctx.workload)
        self.emb: torch.Tensor | None = None
        self.notes = [
            "the dense MLP alone on a fixed embedding tensor: forward, backward to the "
            "embeddings, Adam; no lookup, gather or sparse update (a ceiling, not a competitor)",
        ]

    def prepare(self) -> None:
        """The fixed embeddings (uniform in [-INIT_SCALE, INIT_SCALE])."""
        w = self.ctx.workload
        torch.manual_seed(w.seed)
        emb = torch.empty(w.batch, w.features, w.dim).uniform_(-INIT_SCALE, INIT_SCALE)
        self.emb = emb.requires_grad_(True)

    def train_step(self, i: int) -> float:
        """Train the MLP on the fixed embeddings and batch ``i``'s labels."""
        assert self.emb is not None
        self.emb.grad = None  # the gradient is computed, as for every system, then dropped
        return self.dense.backward(self.emb, self.ctx.batches.label(i))

    def counters(self) -> dict[str, float]:
        """No counters."""
        return {}

    def quiesce(self) -> None:
        """Nothing runs in the background."""

    def finish(self) -> dict[str, Any]:
        """Nothing to report."""
        return {}
