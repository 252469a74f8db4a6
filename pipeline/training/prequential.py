"""Prequential (test-then-train) metrics: exact ROC AUC and log loss, cumulative and windowed.

AUC is the Mann-Whitney statistic from average ranks (ties count one half):

::

    AUC = (Σ ranks of positives - P(P+1)/2) / (P · N)

Memory stays bounded on an endless stream: the window lives in a ring buffer; the cumulative
AUC is exact (every score kept, 8 + 1 bytes an event) for the first ``exact_limit`` events,
then comes from a histogram of 2**17 bins over the score's logit in [-20, 20] (ties within a
bin count one half; the bin is 3e-4 wide in logit, so the error is far below the AUC's own
sampling noise). ``auc_is_exact`` says which one ``auc()`` returns.

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


_BINS = 1 << 17
_LOGIT_MAX = 20.0


def _score_bins(s: F64) -> npt.NDArray[np.intp]:
    """Histogram bin of each probability (by logit, clipped to [-20, 20])."""
    p = np.clip(s, 1e-12, 1.0 - 1e-12)
    z = np.log(p) - np.log1p(-p)
    idx = (z + _LOGIT_MAX) * (_BINS / (2.0 * _LOGIT_MAX))
    return np.clip(idx, 0, _BINS - 1).astype(np.intp)


def histogram_auc(pos: npt.NDArray[np.int64], neg: npt.NDArray[np.int64]) -> float:
    """AUC from per-bin positive and negative counts (ties within a bin count one half).

    >>> histogram_auc(np.array([0, 1, 1]), np.array([1, 1, 0]))
    0.875
    """
    p, n = int(pos.sum()), int(neg.sum())
    if p == 0 or n == 0:
        return math.nan
    neg_below = np.cumsum(neg) - neg
    wins = float(np.dot(pos.astype(np.float64), neg_below + 0.5 * neg))
    return wins / (float(p) * float(n))


class PrequentialMetrics:
    """Scores and labels of a stream: metrics over all of it or over the last ``window``.

    ``record_every`` appends a :class:`CurvePoint` to ``curve`` each time that many more
    events have been seen (0: never). Memory is bounded (see the module docstring):
    ``exact_limit`` events of exact history at most, then a fixed histogram.
    """

    def __init__(
        self, window: int = 10_000, record_every: int = 0, exact_limit: int = 1_000_000
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if exact_limit < 0:
            raise ValueError(f"exact_limit must be >= 0, got {exact_limit}")
        self.window = window
        self.record_every = record_every
        self.exact_limit = exact_limit
        # exact history: the first `_kept` entries of growing buffers (doubled when full, so
        # an append costs its own events); None once past exact_limit
        self._scores: F64 | None = np.empty(1024, dtype=np.float64)
        self._labels: npt.NDArray[np.bool_] | None = np.empty(1024, dtype=np.bool_)
        self._kept = 0
        self._ring_s = np.zeros(window, dtype=np.float64)
        self._ring_y = np.zeros(window, dtype=np.bool_)
        self._ring_at = 0
        # built from the exact history when it ends (2 x 2**17 counts: too big to touch on
        # every small batch while nothing reads them)
        self._hist_pos: npt.NDArray[np.int64] | None = None
        self._hist_neg: npt.NDArray[np.int64] | None = None
        self._loss_sum = 0.0
        self._positives = 0
        self.events = 0
        self.curve: list[CurvePoint] = []
        self._next_record = record_every

    def update(self, scores: ArrayLike, labels: ArrayLike) -> None:
        """Append a batch of predicted probabilities and their labels."""
        s = np.asarray(scores, dtype=np.float64).reshape(-1)
        y = np.asarray(labels).reshape(-1).astype(bool)
        if len(s) != len(y):
            raise ValueError(f"{len(s)} scores but {len(y)} labels")
        self._push_window(s, y)
        self._loss_sum += log_loss(s, y) * len(y) if len(y) else 0.0
        self._positives += int(y.sum())
        self.events += len(y)
        if self._scores is not None and self.events <= self.exact_limit:
            self._keep(s, y)
        else:
            if self._scores is not None:  # from now on: the histogram
                self._start_histogram()
            self._count(s, y)
        if self.record_every and self.events >= self._next_record:
            self.curve.append(self.point())
            while self._next_record <= self.events:
                self._next_record += self.record_every

    def _push_window(self, s: F64, y: npt.NDArray[np.bool_]) -> None:
        w = self.window
        if len(s) >= w:
            s, y = s[-w:], y[-w:]
        at = self._ring_at % w
        first = min(len(s), w - at)
        self._ring_s[at : at + first] = s[:first]
        self._ring_y[at : at + first] = y[:first]
        self._ring_s[: len(s) - first] = s[first:]
        self._ring_y[: len(s) - first] = y[first:]
        self._ring_at += len(s)

    def _keep(self, s: F64, y: npt.NDArray[np.bool_]) -> None:
        assert self._scores is not None and self._labels is not None
        end = self._kept + len(s)
        if end > len(self._scores):
            size = max(end, min(2 * len(self._scores), self.exact_limit))
            self._scores = np.resize(self._scores, size)
            self._labels = np.resize(self._labels, size)
        self._scores[self._kept : end] = s
        self._labels[self._kept : end] = y
        self._kept = end

    def _start_histogram(self) -> None:
        self._hist_pos = np.zeros(_BINS, dtype=np.int64)
        self._hist_neg = np.zeros(_BINS, dtype=np.int64)
        s, y = self._exact()
        self._count(s, y)
        self._scores = self._labels = None

    def _count(self, s: F64, y: npt.NDArray[np.bool_]) -> None:
        assert self._hist_pos is not None and self._hist_neg is not None
        bins = _score_bins(s)
        if len(bins) * 64 < _BINS:  # a small batch: add its events, not 2**17 counts
            np.add.at(self._hist_pos, bins[y], 1)
            np.add.at(self._hist_neg, bins[~y], 1)
        else:
            self._hist_pos += np.bincount(bins[y], minlength=_BINS)
            self._hist_neg += np.bincount(bins[~y], minlength=_BINS)

    def _exact(self) -> tuple[F64, npt.NDArray[np.bool_]]:
        assert self._scores is not None and self._labels is not None
        return self._scores[: self._kept], self._labels[: self._kept]

    @property
    def auc_is_exact(self) -> bool:
        """Whether :meth:`auc` is exact (``False`` once past ``exact_limit`` events)."""
        return self._scores is not None

    def recent(self) -> tuple[F64, npt.NDArray[np.bool_]]:
        """Scores and labels of the last ``window`` events, oldest first (copies)."""
        n = min(self._ring_at, self.window)
        start = self._ring_at % self.window if self._ring_at > self.window else 0
        order = (start + np.arange(n)) % self.window
        return self._ring_s[order], self._ring_y[order]

    def auc(self) -> float:
        """Cumulative AUC over every event so far."""
        if self._scores is None:
            assert self._hist_pos is not None and self._hist_neg is not None
            return histogram_auc(self._hist_pos, self._hist_neg)
        if not self._kept:
            return math.nan
        return auc(*self._exact())

    def window_auc(self) -> float:
        """AUC over the last ``window`` events."""
        return auc(*self.recent())

    def log_loss(self) -> float:
        """Cumulative mean log loss."""
        return self._loss_sum / self.events if self.events else math.nan

    def window_log_loss(self) -> float:
        """Mean log loss over the last ``window`` events."""
        return log_loss(*self.recent())

    def positive_rate(self) -> float:
        """Fraction of positive labels so far."""
        return self._positives / self.events if self.events else math.nan

    def point(self) -> CurvePoint:
        """Return the metrics now."""
        return CurvePoint(
            self.events, self.auc(), self.window_auc(), self.log_loss(), self.window_log_loss()
        )
