"""Models over the embedding store: a DeepFM with a DLRM-style dense tower, and plain LR.

Both share one linear part: a dim-1 store table of first-order weights, one per hashed id
of every sparse table, plus a bias id, trained by ``linear_optimizer`` (FTRL by default).
That alone is :class:`LogisticRegression`. DeepFM adds, per sparse table, a store table of
k-dimensional factors (``sparse_optimizer``), and for dense columns a linear term and a
bottom MLP mapping them to one more k-vector that takes part in the interactions.

::

    Batch.sparse ─► "linear" table (dim 1) ─► Σ w[id] + w[bias] ──────────────────────┐
    Batch.sparse[t] ─► table t (dim k) ─► v (B, F_t, k) ─┐                            │
    Batch.dense (B, D) ─┬─ bottom MLP ─► (B, 1, k) ──────┴► v (B, F+1, k)             │
                        │                    ├─ FM: ½((Σ_f v_f)² - Σ_f v_f²) ─────────┤
                        │                    └─ flatten ─┐                            │
                        ├────────────────────────────────┴─ top MLP ──────────────────┤
                        └─ linear ────────────────────────────────────────────────── + ─► logit

>>> import tempfile
>>> from embedding_store import EmbeddingStore, StoreConfig
>>> from pipeline.features.spec import CategoricalSpec, DenseSpec, FeatureSpec
>>> from pipeline.features.featurizer import Featurizer
>>> fspec = FeatureSpec(sparse=(CategoricalSpec("c1", "cat", "c1"),
...                             CategoricalSpec("c2", "cat", "c2")),
...                     dense=(DenseSpec("i1", field="i1"),))
>>> layout = BatchLayout.from_spec(fspec)
>>> mspec = ModelSpec(kind="deepfm", embedding_dim=4, hidden=(8,), bottom=(8,))
>>> batch = Featurizer(fspec).transform([{"c1": "a", "c2": "b", "i1": 1.0, "label": 1}])
>>> with tempfile.TemporaryDirectory() as d:
...     tables = model_tables(mspec, layout)
...     with EmbeddingStore(StoreConfig(d, tables, num_shards=1)) as store:
...         model = build_model(mspec, layout, store)
...         logits = model(batch)
...         _ = store.step()
>>> [t.name for t in tables], tuple(logits.shape)
(['linear', 'cat'], (1,))
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from embedding_store import EmbeddingStore, OptimizerConfig, StoreEmbeddingBag, TableConfig
from pipeline.features.featurizer import Batch, JaggedIds
from pipeline.features.hashing import hash_bases
from pipeline.features.spec import FeatureSpec

I64 = npt.NDArray[np.int64]
BIAS_ID: Final = int(hash_bases(np.zeros(1, dtype=np.uint64), "freshet/bias")[0])
"""The id whose weight is logistic regression's bias."""


@dataclass(frozen=True)
class DenseOptimizerSpec:
    """The torch optimizer of a model's dense parameters."""

    kind: Literal["adam", "adagrad", "sgd"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0

    def build(self, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer | None:
        """Build the optimizer, or ``None`` when there are no dense parameters."""
        plist = [p for p in params if p.requires_grad]
        if not plist:
            return None
        # foreach: one call per step for all tensors instead of a Python loop over them (the
        # same numbers: the per-tensor loop's kernels, batched)
        if self.kind == "adam":
            return torch.optim.Adam(plist, lr=self.lr, weight_decay=self.weight_decay, foreach=True)
        if self.kind == "adagrad":
            return torch.optim.Adagrad(
                plist, lr=self.lr, weight_decay=self.weight_decay, foreach=True
            )
        return torch.optim.SGD(plist, lr=self.lr, weight_decay=self.weight_decay, foreach=True)


@dataclass(frozen=True)
class ModelSpec:
    """Architecture and optimizers of one model (``configs.features.ModelConfig`` builds it).

    ``linear_optimizer`` trains first-order weights and the bias (both models);
    ``sparse_optimizer`` the factor vectors and ``dense_optimizer`` the MLPs (DeepFM only).
    """

    kind: Literal["deepfm", "logistic"] = "deepfm"
    embedding_dim: int = 8
    hidden: tuple[int, ...] = (64, 32)
    bottom: tuple[int, ...] = (32,)
    init_scale: float = 0.05
    seed: int = 0
    hot_rows: int | None = None
    sparse_optimizer: OptimizerConfig = field(
        default_factory=lambda: OptimizerConfig("adagrad", lr=0.05)
    )
    linear_optimizer: OptimizerConfig = field(
        default_factory=lambda: OptimizerConfig("ftrl", lr=1.0)
    )
    dense_optimizer: DenseOptimizerSpec = field(default_factory=DenseOptimizerSpec)


@dataclass(frozen=True)
class BatchLayout:
    """Shapes a featurizer produces: sparse tables with their field counts, dense width.

    >>> from pipeline.features.spec import CategoricalSpec, FeatureSpec
    >>> BatchLayout.from_spec(FeatureSpec(sparse=(CategoricalSpec("a", "t", "a"),))).tables
    (('t', 1),)
    """

    tables: tuple[tuple[str, int], ...]
    jagged: frozenset[str] = frozenset()
    dense_dim: int = 0

    @classmethod
    def from_spec(cls, spec: FeatureSpec) -> BatchLayout:
        """Describe the batches a ``Featurizer(spec)`` makes."""
        return cls(
            tables=tuple((t, len(spec.table_features(t))) for t in spec.tables),
            jagged=frozenset(t for t in spec.tables if spec.is_jagged(t)),
            dense_dim=len(spec.dense),
        )

    @property
    def num_fields(self) -> int:
        """Sparse fields (a jagged table is one pooled field)."""
        return sum(1 if t in self.jagged else n for t, n in self.tables)


@runtime_checkable
class SparseModel(Protocol):
    """What the trainer needs from a model: logits of a batch and the store ids it reads."""

    def __call__(self, batch: Batch) -> torch.Tensor:
        """Logits, shape ``(B,)``."""
        ...

    def store_ids(self, ids: Mapping[str, I64]) -> dict[str, I64]:
        """Store table -> unique ids read for these feature-table ids (for prefetch)."""
        ...


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class DeepFM(nn.Module):
    """DeepFM over store tables (see the module docstring); ``prefix`` names its tables."""

    def __init__(
        self, store: EmbeddingStore, layout: BatchLayout, spec: ModelSpec, prefix: str = ""
    ) -> None:
        super().__init__()
        self.layout = layout
        self.spec = spec
        self.prefix = prefix
        k = spec.embedding_dim
        self.first_order = LogisticRegression(store, layout, spec, prefix + "linear")
        self.bags = nn.ModuleDict(
            {t: StoreEmbeddingBag(store, prefix + t, mode="sum") for t, _ in layout.tables}
        )
        d = layout.dense_dim
        fields = layout.num_fields + (1 if d else 0)
        with torch.random.fork_rng():
            torch.manual_seed(spec.seed)
            self.dense_linear = nn.Linear(d, 1, bias=False) if d else None
            self.bottom = _mlp([d, *spec.bottom, k]) if d else None
            self.top = _mlp([fields * k + d, *spec.hidden, 1])

    @staticmethod
    def tables(layout: BatchLayout, spec: ModelSpec, prefix: str = "") -> tuple[TableConfig, ...]:
        """List the store tables: the linear one, then one of factors per sparse table."""
        factors = tuple(
            TableConfig(
                prefix + t,
                spec.embedding_dim,
                spec.sparse_optimizer,
                seed=spec.seed + 1 + i,
                init_scale=spec.init_scale,
                hot_rows=spec.hot_rows,
            )
            for i, (t, _) in enumerate(layout.tables)
        )
        return LogisticRegression.tables(layout, spec, prefix + "linear") + factors

    def store_ids(self, ids: Mapping[str, I64]) -> dict[str, I64]:
        """Map feature-table ids to store table -> unique ids."""
        out = self.first_order.store_ids(ids)
        out.update({self.prefix + t: np.unique(ids[t]) for t, _ in self.layout.tables})
        return out

    def forward(self, batch: Batch) -> torch.Tensor:
        """Return logits ``(B,)``."""
        parts: list[torch.Tensor] = []
        for t, _ in self.layout.tables:
            ids = batch.sparse[t]
            bag = self.bags[t]
            if isinstance(ids, JaggedIds):
                emb = bag(torch.from_numpy(ids.values), offsets=torch.from_numpy(ids.offsets))
                parts.append(emb.unsqueeze(1))
            else:
                parts.append(bag(torch.from_numpy(np.ascontiguousarray(ids))))
        v = torch.cat(parts, dim=1)
        logit = self.first_order(batch)
        deep_in = [v.flatten(1)]
        if self.dense_linear is not None and self.bottom is not None:
            x = torch.from_numpy(batch.dense)
            logit = logit + self.dense_linear(x).squeeze(1)
            v = torch.cat([v, self.bottom(x).unsqueeze(1)], dim=1)
            deep_in = [v.flatten(1), x]
        fm = 0.5 * (v.sum(dim=1).pow(2) - v.pow(2).sum(dim=1)).sum(dim=1)
        deep = self.top(torch.cat(deep_in, dim=1)).squeeze(1)
        out: torch.Tensor = logit + fm + deep
        return out


def _concat_bags(parts: list[tuple[I64, I64]], n: int) -> tuple[I64, I64]:
    """Per-event concatenation of several (values, lengths) jagged columns -> values, offsets."""
    total = np.zeros(n, dtype=np.int64)
    for _, lengths in parts:
        total += lengths
    starts = np.zeros(n, dtype=np.int64)
    np.cumsum(total[:-1], out=starts[1:])
    out = np.empty(int(total.sum()), dtype=np.int64)
    cursor = starts.copy()
    for values, lengths in parts:
        own = np.zeros(n, dtype=np.int64)
        np.cumsum(lengths[:-1], out=own[1:])
        pos = np.repeat(cursor - own, lengths) + np.arange(len(values), dtype=np.int64)
        out[pos] = values
        cursor += lengths
    return out, starts


class LogisticRegression(nn.Module):
    """Plain logistic regression on hashed one-hot ids: ``logit = bias + Σ w[id]``.

    Every id of every table (crosses included) is one input; weights live in one dim-1 store
    table (zero-initialised), trained by ``spec.linear_optimizer`` (FTRL, Adagrad, SGD, ...).
    """

    def __init__(
        self, store: EmbeddingStore, layout: BatchLayout, spec: ModelSpec, table: str = "lr"
    ) -> None:
        super().__init__()
        self.layout = layout
        self.spec = spec
        self.table = table
        self.bag = StoreEmbeddingBag(store, table, mode="sum")

    @staticmethod
    def tables(layout: BatchLayout, spec: ModelSpec, table: str = "lr") -> tuple[TableConfig, ...]:
        """List the one weight table."""
        return (
            TableConfig(
                table,
                1,
                spec.linear_optimizer,
                seed=spec.seed,
                init_scale=0.0,
                hot_rows=spec.hot_rows,
            ),
        )

    def _ids(self, ids: Mapping[str, I64 | JaggedIds], n: int) -> tuple[I64, I64 | None]:
        bias = np.full((n, 1), BIAS_ID, dtype=np.int64)
        grids = [v for v in ids.values() if not isinstance(v, JaggedIds)]
        if len(grids) == len(ids):
            return np.ascontiguousarray(np.concatenate([*grids, bias], axis=1)), None
        parts: list[tuple[I64, I64]] = []
        for v in ids.values():
            if isinstance(v, JaggedIds):
                parts.append((v.values, v.lengths))
            else:
                parts.append((v.reshape(-1), np.full(n, v.shape[1], dtype=np.int64)))
        parts.append((bias.reshape(-1), np.ones(n, dtype=np.int64)))
        return _concat_bags(parts, n)

    def store_ids(self, ids: Mapping[str, I64]) -> dict[str, I64]:
        """Store table -> unique ids (all feature ids plus the bias id)."""
        flat = [np.asarray(v).reshape(-1) for v in ids.values()]
        return {self.table: np.unique(np.concatenate([*flat, np.array([BIAS_ID], np.int64)]))}

    def forward(self, batch: Batch) -> torch.Tensor:
        """Logits ``(B,)``."""
        n = len(batch)
        values, offsets = self._ids(batch.sparse, n)
        if offsets is None:
            out: torch.Tensor = self.bag(torch.from_numpy(values)).sum(dim=1).squeeze(1)
            return out
        pooled = self.bag(torch.from_numpy(values), offsets=torch.from_numpy(offsets))
        out = pooled.squeeze(1)
        return out


def model_tables(spec: ModelSpec, layout: BatchLayout, prefix: str = "") -> tuple[TableConfig, ...]:
    """List the store tables a model of ``spec`` needs (for the ``StoreConfig``)."""
    if spec.kind == "logistic":
        return LogisticRegression.tables(layout, spec, prefix + "lr")
    return DeepFM.tables(layout, spec, prefix)


def build_model(
    spec: ModelSpec, layout: BatchLayout, store: EmbeddingStore, prefix: str = ""
) -> DeepFM | LogisticRegression:
    """Build the model of ``spec`` over ``store`` (whose config holds :func:`model_tables`)."""
    if spec.kind == "logistic":
        return LogisticRegression(store, layout, spec, prefix + "lr")
    return DeepFM(store, layout, spec, prefix)
