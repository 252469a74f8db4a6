"""Prequential (test-then-train) metrics: exact ROC AUC and log loss, cumulative and windowed.

AUC is the Mann-Whitney statistic from average ranks (ties count one half):

::

    AUC = (Σ ranks of positives - P(P+1)/2) / (P · N)

The tracker keeps every score and label (8 + 1 bytes an event) and sorts on demand, so the
cumulative AUC is exact, not binned.

>>> auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
0.75
>>> round(log_loss(np.array([0.9, 0.2]), np.array([1, 0])), 4)
0.1643
>>> m = PrequentialMetrics(window=2)
>>> m.update(np.array([0.1, 0.9]), np.array([0, 1]))
>>> m.update(np.array([0.2, 0.3]), np.array([1, 0]))
>>> m.auc(), m.window_auc(), m.events
(0.75, 0.0, 4)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
ArrayLike = npt.ArrayLike


def average_ranks(x: npt.NDArray[np.floating]) -> F64:
    """1-based ranks, ties sharing their average rank.

    >>> average_ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist()
    [3.5, 1.0, 3.5, 2.0]
    """
    n = len(x)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    new_run = np.empty(n, dtype=np.bool_)
    if n:
        new_run[0] = True
        new_run[1:] = xs[1:] != xs[:-1]
    run_id = np.cumsum(new_run) - 1
    starts = np.flatnonzero(new_run)
    ends = np.append(starts[1:], n)
    avg = (starts + ends + 1) / 2.0  # mean of 1-based ranks start+1 .. end
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = avg[run_id]
    return ranks


def auc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Exact ROC AUC (NaN when only one class is present)."""
    y = np.asarray(labels).astype(bool)
    pos = int(y.sum())
    neg = len(y) - pos
    if pos == 0 or neg == 0:
        return math.nan
    ranks = average_ranks(np.asarray(scores, dtype=np.float64))
    return float((ranks[y].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def log_loss(scores: ArrayLike, labels: ArrayLike, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of probabilities ``scores`` (clipped to ``[eps, 1 - eps]``)."""
    p = np.clip(np.asarray(scores, dtype=np.float64), eps, 1.0 - eps)
    y = np.asarray(labels, dtype=np.float64)
    if len(y) == 0:
        return math.nan
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


@dataclass(frozen=True)
class CurvePoint:
    """Metrics after ``events`` events: cumulative and over the last window."""

    events: int
    auc: float
    window_auc: float
    log_loss: float
    window_log_loss: float


class PrequentialMetrics:
    """Scores and labels of a stream, in order; exact metrics over all or the last ``window``.

    ``record_every`` appends a :class:`CurvePoint` to ``curve`` each time that many more
    events have been seen (0: never).
    """

    def __init__(self, window: int = 10_000, record_every: int = 0) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window = window
        self.record_every = record_every
        self._scores: list[F64] = []
        self._labels: list[npt.NDArray[np.bool_]] = []
        self._loss_sum = 0.0
        self.events = 0
        self.curve: list[CurvePoint] = []
        self._next_record = record_every

    def update(self, scores: ArrayLike, labels: ArrayLike) -> None:
        """Append a batch of predicted probabilities and their labels."""
        s = np.asarray(scores, dtype=np.float64).reshape(-1)
        y = np.asarray(labels).reshape(-1)
        if len(s) != len(y):
            raise ValueError(f"{len(s)} scores but {len(y)} labels")
        self._scores.append(s)
        self._labels.append(y.astype(bool))
        self._loss_sum += log_loss(s, y) * len(y) if len(y) else 0.0
        self.events += len(y)
        if len(self._scores) > 64:
            self._compact()
        if self.record_every and self.events >= self._next_record:
            self.curve.append(self.point())
            while self._next_record <= self.events:
                self._next_record += self.record_every

    def _compact(self) -> None:
        self._scores = [np.concatenate(self._scores)]
        self._labels = [np.concatenate(self._labels)]

    def _all(self) -> tuple[F64, npt.NDArray[np.bool_]]:
        if not self._scores:
            return np.empty(0), np.empty(0, dtype=bool)
        self._compact()
        return self._scores[0], self._labels[0]

    def _tail(self) -> tuple[F64, npt.NDArray[np.bool_]]:
        s, y = self._all()
        return s[-self.window :], y[-self.window :]

    def auc(self) -> float:
        """Cumulative AUC over every event so far."""
        return auc(*self._all())

    def window_auc(self) -> float:
        """AUC over the last ``window`` events."""
        return auc(*self._tail())

    def log_loss(self) -> float:
        """Cumulative mean log loss."""
        return self._loss_sum / self.events if self.events else math.nan

    def window_log_loss(self) -> float:
        """Mean log loss over the last ``window`` events."""
        return log_loss(*self._tail())

    def positive_rate(self) -> float:
        """Fraction of positive labels so far."""
        _, y = self._all()
        return float(y.mean()) if len(y) else math.nan

    def point(self) -> CurvePoint:
        """Return the metrics now."""
        return CurvePoint(
            self.events, self.auc(), self.window_auc(), self.log_loss(), self.window_log_loss()
        )
