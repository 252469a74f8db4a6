"""The benchmark workload of DESIGN.md: Zipf ids in (batch, features) grids, pre-generated.

::

    rank r ~ Zipf(alpha) over [0, num_ids)      inverse CDF: searchsorted(cdf, uniform)
    id = perm[r]                                 fixed random permutation: popular ids are
                                                 spread over the id space (and so over shards)
    batch i: ids (batch, features) int64, labels (batch,) float32

All 26 features share one table and one id space: every position draws from the same Zipf
(no per-feature offset), so a table of ``num_ids`` rows holds every id the stream can show.
Batches are generated once, saved as ``.npy`` and memory-mapped by each system's process, so
every system trains on exactly the same stream and generation is never timed.

>>> w = Workload(num_ids=1000, batch=8, features=3, steps=2)
>>> b = generate(w)
>>> b.ids.shape, b.labels.shape, bool((b.ids >= 0).all() and (b.ids < 1000).all())
((2, 8, 3), (2, 8), True)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

IdGrid = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Workload:
    """What the systems train on: shape of a batch, the id space and the Zipf exponent."""

    num_ids: int = 10_000_000
    batch: int = 4096
    features: int = 26
    dim: int = 64
    alpha: float = 1.05
    steps: int = 70
    seed: int = 20240501

    @property
    def lookups_per_batch(self) -> int:
        """Ids in one batch (``batch * features``)."""
        return self.batch * self.features

    def to_json(self) -> dict[str, Any]:
        """A plain dict for the result JSON."""
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Workload:
        """Inverse of :meth:`to_json`."""
        return cls(**raw)


class ZipfSampler:
    """Zipf(alpha) over ``num_ids`` ids by inverse-CDF sampling, ranks permuted to ids.

    ``P(rank k) = k**-alpha / H(num_ids, alpha)`` for ``k = 1..num_ids``.
    """

    def __init__(self, num_ids: int, alpha: float, seed: int) -> None:
        if num_ids < 1:
            raise ValueError(f"num_ids must be >= 1, got {num_ids}")
        if alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        self.num_ids = num_ids
        self.alpha = alpha
        weights = np.arange(1, num_ids + 1, dtype=np.float64) ** -alpha
        cdf = np.cumsum(weights)
        self.normaliser = float(cdf[-1])
        cdf /= cdf[-1]
        self._cdf = cdf
        self._perm = np.random.default_rng(seed ^ 0x5A5A).permutation(num_ids).astype(np.int64)

    def probability(self, rank: int) -> float:
        """Probability of the id of ``rank`` (0 is the most popular)."""
        return float((rank + 1) ** -self.alpha / self.normaliser)

    def mass_of_top(self, k: int) -> float:
        """Probability that a draw is one of the ``k`` most popular ids."""
        return float(self._cdf[min(k, self.num_ids) - 1]) if k > 0 else 0.0

    def ids_by_rank(self, k: int | None = None) -> IdGrid:
        """The ``k`` most popular ids, most popular first (all ids if ``k`` is None)."""
        return self._perm[: self.num_ids if k is None else min(k, self.num_ids)]

    def sample(self, rng: np.random.Generator, n: int) -> IdGrid:
        """``n`` ids drawn i.i.d."""
        ranks = np.searchsorted(self._cdf, rng.random(n), side="right")
        np.minimum(ranks, self.num_ids - 1, out=ranks)  # guards float rounding at the top
        return self._perm[ranks]


@dataclass(frozen=True)
class Batches:
    """Pre-generated batches: ``ids`` (steps, batch, features) and ``labels`` (steps, batch)."""

    ids: IdGrid
    labels: npt.NDArray[np.float32]

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def grid(self, i: int) -> IdGrid:
        """The ids of batch ``i``: a writable (batch, features) copy (torch needs writable)."""
        return np.array(self.ids[i], dtype=np.int64, copy=True)

    def label(self, i: int) -> npt.NDArray[np.float32]:
        """The labels of batch ``i``: a writable copy."""
        return np.array(self.labels[i], dtype=np.float32, copy=True)

    def save(self, directory: Path) -> dict[str, str]:
        """Write ``ids.npy`` and ``labels.npy``; returns their paths."""
        directory.mkdir(parents=True, exist_ok=True)
        paths = {"ids": str(directory / "ids.npy"), "labels": str(directory / "labels.npy")}
        np.save(paths["ids"], self.ids)
        np.save(paths["labels"], self.labels)
        return paths

    @classmethod
    def load(cls, paths: dict[str, str]) -> Batches:
        """Memory-map batches written by :meth:`save`."""
        return cls(np.load(paths["ids"], mmap_mode="r"), np.load(paths["labels"], mmap_mode="r"))


def generate(workload: Workload, sampler: ZipfSampler | None = None) -> Batches:
    """Every batch of ``workload`` (vectorised; one draw for the whole stream).

    Labels are a fixed function of the first feature's id (a learnable click), so the loss
    can fall; their values do not affect throughput.
    """
    w = workload
    sampler = sampler or ZipfSampler(w.num_ids, w.alpha, w.seed)
    rng = np.random.default_rng(w.seed)
    ids = sampler.sample(rng, w.steps * w.batch * w.features).reshape(w.steps, w.batch, w.features)
    labels = ((ids[:, :, 0] * 2654435761) % 7 < 2).astype(np.float32)
    return Batches(ids, labels)


def unique_per_batch(batches: Batches, limit: int = 8) -> float:
    """Mean number of distinct ids in a batch (over the first ``limit`` batches)."""
    n = min(limit, len(batches))
    return float(np.mean([len(np.unique(batches.ids[i])) for i in range(n)])) if n else 0.0
