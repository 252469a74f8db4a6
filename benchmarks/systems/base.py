"""What a benchmarked system is: prepared once, then trained one pre-generated batch at a time.

::

    worker process (one per system)
      system = SYSTEMS[name](context, **options)
      system.prepare()            untimed: tables, pre-warm
      system.train_step(i) * warm-up, then timed windows, each ended by system.quiesce()
      system.counters()           cumulative counters, read around every window
      system.finish()             untimed: release what is still held

>>> ctx = SystemContext.__dataclass_fields__.keys()
>>> sorted(ctx)
['batches', 'ranked_ids', 'workdir', 'workload']
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import torch

from benchmarks.model import DenseTower, bce, dense_optimizer
from benchmarks.workload import Batches, Workload

INIT_SCALE = 0.05
SPARSE_LR = 0.05
EPS = 1e-8


@dataclass(frozen=True)
class SystemContext:
    """What every system gets: the workload, its batches, ids by popularity, a scratch dir."""

    workload: Workload
    batches: Batches
    ranked_ids: npt.NDArray[np.int64]
    workdir: Path


class BenchSystem(Protocol):
    """One system under test."""

    notes: list[str]

    def prepare(self) -> None:
        """Build tables and pre-warm them (not timed)."""
        ...

    def train_step(self, i: int) -> float:
        """Train batch ``i`` (forward, backward, dense and sparse updates); returns the loss."""
        ...

    def counters(self) -> dict[str, float]:
        """Cumulative counters (hits, misses, stall seconds, ...); deltas are reported."""
        ...

    def quiesce(self) -> None:
        """Wait until no work is in flight (prefetches landed), so a window owns its work."""
        ...

    def finish(self) -> dict[str, Any]:
        """Release what is still held; returns facts worth recording (table sizes, ...)."""
        ...


class DenseHead:
    """The dense MLP, its optimizer and the loss, shared by every system."""

    def __init__(self, workload: Workload) -> None:
        self.tower = DenseTower(workload.features, workload.dim)
        self.optimizer = dense_optimizer(self.tower)

    def backward(self, emb: torch.Tensor, labels: npt.NDArray[np.float32]) -> float:
        """Forward the tower on ``emb`` (B, F, dim), backward the loss, step the dense optimizer."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = bce(self.tower(emb), torch.from_numpy(labels))
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())


def random_rows(rng: np.random.Generator, n: int, dim: int) -> npt.NDArray[np.float32]:
    """``n`` pre-warm embeddings, uniform in ``[-INIT_SCALE, INIT_SCALE]``."""
    out = rng.random((n, dim), dtype=np.float32)
    out *= np.float32(2 * INIT_SCALE)
    out -= np.float32(INIT_SCALE)
    return out


def id_chunks(num_ids: int, chunk: int) -> list[npt.NDArray[np.int64]]:
    """``[0, num_ids)`` in ascending chunks (sorted keys write fastest to RocksDB)."""
    return [np.arange(s, min(num_ids, s + chunk), dtype=np.int64) for s in range(0, num_ids, chunk)]
