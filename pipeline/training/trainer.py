"""Online training with prequential (test-then-train) evaluation.

Each batch is first scored with the parameters as they are, those scores are recorded, and
only then is the model trained on the batch:

::

    events ──featurizer.transform──► Batch
      │ forward (train mode) ──► logits ──► scores (recorded: parameters before this batch)
      │ loss.backward()
      │ dense_optimizer.step()      dense parameters
      └ store.step()                sparse rows, fused optimizer; bumps the store version

One forward serves both the scores and the gradients unless the model has dropout or batch
norm (then scores come from a separate ``eval()``/``no_grad`` forward first).

With N ranks (:mod:`pipeline.training.world`) the same trainer runs on every rank over a
:class:`~embedding_store.distributed.DistributedStore`: its forward and ``store.step()`` are
collectives, and ``dense_sync`` sums the dense gradients over the ranks before the dense
optimizer steps, so N ranks take the step one trainer would take on the union of their
batches. A rank without events trains an empty batch: it still takes part in every
collective::

    loss.backward() ─► dense_sync(params)  (all_reduce SUM; None with one rank)
                    ─► dense_optimizer.step() ─► store.step()  (row grads to their owners)

For look-ahead prefetch, ``sparse_ids(events)`` gives the store ids of a future batch
without touching any streaming state; hand them to ``store.prefetch([...])``.

>>> import tempfile
>>> from embedding_store import EmbeddingStore, StoreConfig
>>> from pipeline.features.spec import CategoricalSpec, FeatureSpec
>>> from pipeline.features.featurizer import Featurizer
>>> from pipeline.training.models import BatchLayout, ModelSpec, build_model, model_tables
>>> fspec = FeatureSpec(sparse=(CategoricalSpec("ad", "ads", "ad"),))
>>> mspec = ModelSpec(kind="logistic")
>>> layout = BatchLayout.from_spec(fspec)
>>> events = [{"ad": "x", "label": 1}, {"ad": "y", "label": 0}]
>>> with tempfile.TemporaryDirectory() as d:
...     with EmbeddingStore(StoreConfig(d, model_tables(mspec, layout), num_shards=1)) as store:
...         trainer = OnlineTrainer(build_model(mspec, layout, store), store, Featurizer(fspec))
...         first = trainer.train_batch(events)
...         second = trainer.train_batch(events)
>>> first.scores.tolist(), bool(second.scores[0] > 0.5 > second.scores[1])
([0.5, 0.5], True)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import nn

from embedding_store import EmbeddingStore
from pipeline.errors import PipelineError
from pipeline.features.featurizer import Batch, Featurizer
from pipeline.training.models import SparseModel
from pipeline.training.prequential import PrequentialMetrics

I64 = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]
DenseSync = Callable[[Sequence[torch.Tensor]], None]


class RankTrainingError(PipelineError, ValueError):
    """A rank could not train a batch (it names the rank; other ranks would stall)."""

    def __init__(self, rank: int, detail: str) -> None:
        self.rank = rank
        super().__init__(f"rank {rank}: {detail}")


@dataclass(frozen=True)
class BatchResult:
    """What one ``train_batch`` did: pre-update scores, the loss on them, timings."""

    scores: F32
    labels: F32
    loss: float
    size: int
    step: int
    seconds: float
    featurize_seconds: float

    @property
    def events_per_second(self) -> float:
        """Throughput of this batch, featurisation included."""
        return self.size / self.seconds if self.seconds > 0 else float("inf")


def _stochastic(model: object) -> bool:
    if not isinstance(model, nn.Module):
        return False
    kinds = (nn.Dropout, nn.modules.batchnorm._BatchNorm, nn.AlphaDropout)
    return any(isinstance(m, kinds) for m in model.modules())


class OnlineTrainer:
    """Trains ``model`` on a stream, batch by batch, recording prequential metrics.

    ``model`` maps a :class:`Batch` to logits and reads its sparse rows from ``store``;
    ``dense_optimizer`` updates its dense parameters (``None`` when it has none).
    ``reduction="sum"`` (the default) gives every event its full gradient, as per-example
    online learning does; ``"mean"`` divides by the batch size (SGD and FTRL then learn
    ``B`` times slower; Adagrad and Adam hardly care). ``dense_sync`` (N ranks) sums the
    dense gradients over the ranks; ``rank`` names this rank in errors.
    """

    def __init__(
        self,
        model: SparseModel,
        store: EmbeddingStore,
        featurizer: Featurizer,
        *,
        dense_optimizer: torch.optim.Optimizer | None = None,
        metrics: PrequentialMetrics | None = None,
        separate_scoring: bool | None = None,
        reduction: Literal["sum", "mean"] = "sum",
        dense_sync: DenseSync | None = None,
        rank: int = 0,
    ) -> None:
        self.model = model
        self.store = store
        self.featurizer = featurizer
        self.dense_optimizer = dense_optimizer
        self.metrics = metrics if metrics is not None else PrequentialMetrics()
        self.separate_scoring = _stochastic(model) if separate_scoring is None else separate_scoring
        self.reduction = reduction
        self.dense_sync = dense_sync
        self.rank = rank
        self.events = 0
        self.batches = 0
        self.seconds = 0.0
        self.featurize_seconds = 0.0
        self._mode: bool | None = None  # what _set_mode last set

    # -- inputs --------------------------------------------------------------
    def featurize(self, batch: Batch | Sequence[Any]) -> Batch:
        """``batch`` itself, or the featurised events (advancing the featurizer's state)."""
        if isinstance(batch, Batch):
            return batch
        return self.featurizer.transform(batch)

    def sparse_ids(self, batch: Batch | Sequence[Any]) -> dict[str, I64]:
        """Store table -> unique int64 ids this batch will read; touches no state.

        Give it the events of a batch ahead of training it, then
        ``store.prefetch([trainer.sparse_ids(b) for b in upcoming])``.
        """
        ids: Mapping[str, I64]
        ids = batch.unique_ids() if isinstance(batch, Batch) else self.featurizer.sparse_ids(batch)
        return self.model.store_ids(ids)

    # -- scoring and training ------------------------------------------------
    def _set_mode(self, training: bool) -> None:
        # nn.Module.train walks every submodule: only when the mode changes (or someone else
        # changed the model's own flag)
        if isinstance(self.model, nn.Module) and (
            self._mode is not training or self.model.training is not training
        ):
            self.model.train(training)
            self._mode = training

    def score(self, batch: Batch | Sequence[Any]) -> F32:
        """Probabilities for a batch without training (events are featurised without update).

        The rows read stay pinned until the next training step ends.
        """
        b = batch if isinstance(batch, Batch) else self.featurizer.transform(batch, update=False)
        self._set_mode(False)
        with torch.no_grad():
            logits = self.model(b)
        self._set_mode(True)
        out: F32 = torch.sigmoid(logits).numpy().astype(np.float32)
        return out

    def _parameters(self) -> list[torch.Tensor]:
        if isinstance(self.model, nn.Module):
            return [p for p in self.model.parameters() if p.requires_grad]
        return []

    def train_batch(self, batch: Batch | Sequence[Any]) -> BatchResult:
        """Score ``batch`` with the current parameters, record the metrics, then train on it.

        With ``dense_sync`` (N ranks) the batch may be empty: the rank still steps.
        """
        t0 = time.perf_counter()
        b = self.featurize(batch)
        t1 = time.perf_counter()
        labels = torch.from_numpy(b.labels)
        if np.isnan(b.labels).any():
            raise RankTrainingError(self.rank, "every event of a training batch needs a label")
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
        scores_np = scores.numpy().astype(np.float32, copy=False)  # a fresh tensor
        n = len(b)
        if n:
            self.metrics.update(scores_np, b.labels)
        if self.dense_optimizer is not None:
            self.dense_optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        if self.dense_sync is not None:
            params = self._parameters()
            if params:
                self.dense_sync(params)
        if self.dense_optimizer is not None:
            self.dense_optimizer.step()
        self.store.step()
        seconds = time.perf_counter() - t0
        self.events += n
        self.batches += 1
        self.seconds += seconds
        self.featurize_seconds += t1 - t0
        return BatchResult(
            scores=scores_np,
            labels=b.labels,
            loss=float(loss.detach()) / (n if self.reduction == "sum" and n else 1),
            size=n,
            step=self.store.version,
            seconds=seconds,
            featurize_seconds=t1 - t0,
        )

    @property
    def events_per_second(self) -> float:
        """Throughput over every batch trained so far (featurisation included)."""
        return self.events / self.seconds if self.seconds > 0 else 0.0
