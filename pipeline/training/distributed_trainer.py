"""One rank's online trainer: prequential scoring, then a step in lock-step with every rank.

Like :class:`~pipeline.training.trainer.OnlineTrainer`, but the model reads a
:class:`~embedding_store.distributed.DistributedStore`, so its forward and ``store.step()``
are collectives, and the dense gradients are summed over the ranks before the dense
optimizer steps::

    rank r: events ─► featurize ─► forward (ids ⇄ rows by all-to-all) ─► scores (recorded)
            loss (sum over samples) ─► backward
            dense .grad ──all_reduce(SUM)──► dense_optimizer.step()    same on every rank
            store.step(): row .grad ──all_to_all──► owners apply the fused optimizer

A rank without events trains an empty batch: it still takes part in every collective. With
the summed loss, the ranks' summed gradients are the gradients of the union of their
batches, so N ranks take the step one trainer would take on that union.

>>> import tempfile
>>> from embedding_store import EmbeddingStore, StoreConfig
>>> from embedding_store.collectives import single_process_group
>>> from embedding_store.distributed import distribute_bags
>>> from pipeline.features.spec import CategoricalSpec, FeatureSpec
>>> from pipeline.training.models import BatchLayout, ModelSpec, build_model, model_tables
>>> fspec = FeatureSpec(sparse=(CategoricalSpec("ad", "ads", "ad"),))
>>> mspec, layout = ModelSpec(kind="logistic"), BatchLayout.from_spec(fspec)
>>> events = [{"ad": "x", "label": 1}, {"ad": "y", "label": 0}]
>>> with tempfile.TemporaryDirectory() as d, single_process_group():
...     with DistributedStore(StoreConfig(d, model_tables(mspec, layout))) as store:
...         model = build_model(mspec, layout, store)  # type: ignore[arg-type]
...         swapped = distribute_bags(model, store)
...         trainer = DistributedTrainer(model, store, Featurizer(fspec))
...         first = trainer.train_batch(events)
...         idle = trainer.train_batch([])  # a rank without events still steps
...         second = trainer.train_batch(events)
>>> first.scores.tolist(), idle.size, bool(second.scores[0] > 0.5 > second.scores[1])
([0.5, 0.5], 0, True)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import nn

from embedding_store.distributed import DistributedStore
from pipeline.errors import PipelineError
from pipeline.features.featurizer import Batch, Featurizer
from pipeline.training.models import SparseModel
from pipeline.training.prequential import PrequentialMetrics
from pipeline.training.trainer import BatchResult

I64 = npt.NDArray[np.int64]


class RankTrainingError(PipelineError, RuntimeError):
    """A rank could not train a batch (it names the rank; the other ranks will stall)."""

    def __init__(self, rank: int, detail: str) -> None:
        self.rank = rank
        super().__init__(f"rank {rank}: {detail}")


def _stochastic(model: object) -> bool:
    if not isinstance(model, nn.Module):
        return False
    kinds = (nn.Dropout, nn.modules.batchnorm._BatchNorm, nn.AlphaDropout)
    return any(isinstance(m, kinds) for m in model.modules())


class DistributedTrainer:
    """Trains one rank's share of the stream, in lock-step with the other ranks.

    ``model`` reads its rows from ``store`` (its bags swapped for distributed ones);
    ``dense_optimizer`` steps on the all-reduced gradients. Every rank calls
    :meth:`train_batch` once per step, with its events or with none.
    """

    def __init__(
        self,
        model: SparseModel,
        store: DistributedStore,
        featurizer: Featurizer,
        *,
        dense_optimizer: torch.optim.Optimizer | None = None,
        metrics: PrequentialMetrics | None = None,
        reduction: Literal["sum", "mean"] = "sum",
    ) -> None:
        self.model = model
        self.store = store
        self.featurizer = featurizer
        self.dense_optimizer = dense_optimizer
        self.metrics = metrics if metrics is not None else PrequentialMetrics()
        self.separate_scoring = _stochastic(model)
        self.reduction = reduction
        self.events = 0
        self.batches = 0
        self.seconds = 0.0

    def _parameters(self) -> list[nn.Parameter]:
        if isinstance(self.model, nn.Module):
            return [p for p in self.model.parameters() if p.requires_grad]
        return []

    def _set_mode(self, training: bool) -> None:
        if isinstance(self.model, nn.Module):
            self.model.train(training)

    def sparse_ids(self, events: Sequence[Any]) -> dict[str, I64]:
        """Store table -> unique ids a future batch of events will read (for prefetch)."""
        return self.model.store_ids(self.featurizer.sparse_ids(events))

    def train_batch(self, events: Batch | Sequence[Any]) -> BatchResult:
        """Score the batch with the current parameters, record the metrics, train (collective).

        ``events`` may be empty: the rank then contributes nothing but still steps.
        """
        rank = self.store.rank
        t0 = time.perf_counter()
        b = events if isinstance(events, Batch) else self.featurizer.transform(events)
        t1 = time.perf_counter()
        if np.isnan(b.labels).any():
            raise RankTrainingError(rank, "every event of a training batch needs a label")
        labels = torch.from_numpy(b.labels)
        scores: torch.Tensor | None = None
        if self.separate_scoring:
            self._set_mode(False)
            with torch.no_grad():
                scores = torch.sigmoid(self.model(b))
        self._set_mode(True)
        logits = self.model(b)
        if scores is None:
            scores = torch.sigmoid(logits.detach())
        loss = F.binary_cross_entropy_with_logits(logits, labels, reduction=self.reduction)
        scores_np = scores.numpy().astype(np.float32)
        if len(b):
            self.metrics.update(scores_np, b.labels)
        if self.dense_optimizer is not None:
            self.dense_optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        params = self._parameters()
        if params:
            self.store.sync_dense_gradients(params)
        if self.dense_optimizer is not None:
            self.dense_optimizer.step()
        self.store.step()
        seconds = time.perf_counter() - t0
        self.events += len(b)
        self.batches += 1
        self.seconds += seconds
        n = len(b)
        return BatchResult(
            scores=scores_np,
            labels=b.labels,
            loss=float(loss.detach()) / (n if self.reduction == "sum" and n else 1),
            size=n,
            step=self.store.version,
            seconds=seconds,
            featurize_seconds=t1 - t0,
        )
