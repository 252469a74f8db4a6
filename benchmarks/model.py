"""The dense part every system trains: an MLP over the concatenated embeddings, BCE loss.

::

    embeddings (B, F, dim) ─► flatten (B, F*dim) ─► Linear 256 ─► ReLU ─► Linear 128 ─► ReLU
                                                 ─► Linear 1 ─► logit ─► BCE-with-logits(label)

With the workload of DESIGN.md that is the MLP 1664-256-128-1, updated by ``torch.optim.Adam``.

>>> import torch
>>> tower = DenseTower(features=2, dim=3)
>>> tower(torch.zeros(4, 2, 3)).shape
torch.Size([4])
"""

from __future__ import annotations

import torch
from torch import nn

DENSE_LR = 1e-3


class DenseTower(nn.Module):
    """MLP ``features*dim - 256 - 128 - 1`` returning one logit per sample."""

    def __init__(self, features: int, dim: int, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.mlp = nn.Sequential(
            nn.Linear(features * dim, 256),
            nn.ReLU(),
            nn.Linear(256, 128),
            nn.ReLU(),
            nn.Linear(128, 1),
        )

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        """Logits ``(B,)`` from embeddings ``(B, F, dim)``."""
        return self.mlp(emb.reshape(emb.shape[0], -1)).squeeze(1)


def dense_optimizer(tower: DenseTower) -> torch.optim.Optimizer:
    """The dense parameters' optimizer (the same for every system)."""
    return torch.optim.Adam(tower.parameters(), lr=DENSE_LR)


def bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy on logits."""
    return nn.functional.binary_cross_entropy_with_logits(logits, labels)
