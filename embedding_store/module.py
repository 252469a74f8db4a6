"""A torch module over a store table: autograd in, fused sparse optimizer out.

::

    ids (jagged: values + offsets, or a dense (B, F) grid)
      └─ unique ─► store lookup (pinned, DRAM) ─► leaf tensor W (U, dim), requires_grad
                          F.embedding_bag(inverse, W, offsets) / W[inverse] ─► model ─► loss
    loss.backward()  fills W.grad (duplicates already summed)
    store.step()     applies W.grad with the table's optimizer, bumps the version

>>> import tempfile, torch
>>> from embedding_store import EmbeddingStore, StoreConfig, TableConfig
>>> with tempfile.TemporaryDirectory() as d:
...     with EmbeddingStore(StoreConfig(d, (TableConfig("t", 4),), num_shards=2)) as store:
...         bag = StoreEmbeddingBag(store, "t", mode="sum")
...         out = bag(torch.tensor([1, 2, 2, 3]), offsets=torch.tensor([0, 3]))
...         out.sum().backward()
...         written = store.step()
>>> tuple(out.shape), written, store.version
((2, 4), 3, 1)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import nn

from embedding_store.dedup import unique_inverse
from embedding_store.errors import InvalidIdsError, ShapeError

if TYPE_CHECKING:
    from embedding_store.store import EmbeddingStore


class StoreEmbeddingBag(nn.Module):
    """Sum/mean pooled bags over a store table (or a plain per-position lookup).

    Give ``offsets`` (start of each bag in ``ids``) or ``lengths`` (size of each bag) for
    variable-length multi-hot ids; give a 2-D ``ids`` grid and neither for one id per
    position, which returns ``(B, F, dim)``.
    """

    def __init__(
        self, store: EmbeddingStore, table: str, mode: Literal["sum", "mean"] = "sum"
    ) -> None:
        super().__init__()
        if mode not in ("sum", "mean"):
            raise ShapeError(table, f"pooling mode must be 'sum' or 'mean', got {mode!r}")
        self.store = store
        self.table = table
        self.mode = mode

    def forward(
        self,
        ids: torch.Tensor,
        offsets: torch.Tensor | None = None,
        lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Pooled embeddings ``(B, dim)``, or ``(B, F, dim)`` for a 2-D grid of ids."""
        if not isinstance(ids, torch.Tensor) or ids.dtype != torch.int64:
            raise InvalidIdsError(self.table, f"got {getattr(ids, 'dtype', type(ids))}")
        flat = ids.reshape(-1).detach().cpu().numpy()
        uniq, inverse = unique_inverse(flat)
        training = torch.is_grad_enabled() and self.training
        # rows are pinned until store.step() only when this forward will be trained on
        rows = self.store._lookup_unique(self.table, uniq, pin=training)
        weight = torch.from_numpy(rows)
        if training:
            weight.requires_grad_(True)
            self.store.register(self.table, uniq, weight)
        inv = torch.from_numpy(inverse.reshape(-1))
        if offsets is None and lengths is None:
            if ids.dim() != 2:
                raise ShapeError(self.table, "without offsets or lengths, ids must be (B, F)")
            return weight.index_select(0, inv).view(ids.shape[0], ids.shape[1], weight.shape[1])
        if ids.dim() != 1:
            raise ShapeError(self.table, "with offsets or lengths, ids must be 1-D values")
        if offsets is None:
            assert lengths is not None
            offsets = torch.zeros(len(lengths), dtype=torch.int64)
            offsets[1:] = torch.cumsum(lengths, 0)[:-1]
        return F.embedding_bag(inv, weight, offsets.to(torch.int64), mode=self.mode)
