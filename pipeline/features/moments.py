"""Running mean and variance of dense columns, merged batch by batch (Chan et al.).

::

    state: count n, mean[D], m2[D]   (population variance = m2 / n)
    merge batch (k rows, mean_b, m2_b):
        delta = mean_b - mean;  n' = n + k
        mean += delta * k / n';  m2 += m2_b + delta**2 * n * k / n'

>>> m = RunningMoments(1)
>>> m.update(np.array([[1.0], [2.0], [3.0]]))
>>> m.update(np.array([[4.0], [5.0]]))
>>> m.count, m.mean.tolist(), m.variance.tolist()
(5.0, [3.0], [2.0])
>>> m.standardize(np.array([[3.0], [5.0]])).round(4).tolist()
[[0.0], [1.4142]]
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]


class RunningMoments:
    """Online mean and (population) variance of ``dim`` columns."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.count = 0.0
        self.mean: F64 = np.zeros(dim, dtype=np.float64)
        self.m2: F64 = np.zeros(dim, dtype=np.float64)

    @property
    def variance(self) -> F64:
        """Population variance of everything merged so far (zeros before any data)."""
        if self.count == 0:
            return np.zeros(self.dim, dtype=np.float64)
        out: F64 = self.m2 / self.count
        return out

    def update(self, x: npt.NDArray[np.floating]) -> None:
        """Merge the rows of ``x`` (shape ``(k, dim)``) into the running moments."""
        if x.shape[0] == 0:
            return
        xb = x.astype(np.float64, copy=False)
        k = float(xb.shape[0])
        mean_b = xb.mean(axis=0)
        m2_b = ((xb - mean_b) ** 2).sum(axis=0)
        total = self.count + k
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (k / total)
        self.m2 = self.m2 + m2_b + delta**2 * (self.count * k / total)
        self.count = total

    def standardize(self, x: npt.NDArray[np.floating]) -> F64:
        """``(x - mean) / std`` per column (a column with zero variance is only centred)."""
        std = np.sqrt(self.variance)
        safe = np.where(std > 0, std, 1.0)
        out: F64 = (x.astype(np.float64, copy=False) - self.mean) / safe
        return out

    def state_dict(self) -> dict[str, F64]:
        """Plain arrays for a checkpoint."""
        return {"count": np.array([self.count]), "mean": self.mean.copy(), "m2": self.m2.copy()}

    def load_state_dict(self, state: dict[str, F64]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.count = float(state["count"][0])
        self.mean = np.asarray(state["mean"], dtype=np.float64).copy()
        self.m2 = np.asarray(state["m2"], dtype=np.float64).copy()
