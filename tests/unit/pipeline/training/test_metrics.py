"""Exact AUC, log loss and the prequential tracker."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.training.prequential import PrequentialMetrics, auc, average_ranks, log_loss


def pairwise_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    pos = scores[labels == 1]
    neg = scores[labels == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (len(pos) * len(neg)))


@pytest.mark.parametrize("seed", range(5))
def test_auc_equals_pairwise_count_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 500
    labels = (rng.random(n) < 0.3).astype(int)
    scores = np.round(rng.random(n) + 0.3 * labels, 1)  # one decimal: many ties
    assert len(np.unique(scores)) < 20
    assert auc(scores, labels) == pytest.approx(pairwise_auc(scores, labels), abs=1e-12)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 5), st.booleans()), min_size=2, max_size=60).filter(
        lambda xs: 0 < sum(y for _, y in xs) < len(xs)
    )
)
def test_auc_property(pairs: list[tuple[int, bool]]) -> None:
    scores = np.array([s for s, _ in pairs], dtype=np.float64)
    labels = np.array([y for _, y in pairs], dtype=int)
    assert auc(scores, labels) == pytest.approx(pairwise_auc(scores, labels), abs=1e-12)


def test_auc_edge_values() -> None:
    assert auc(np.array([0.1, 0.2, 0.3]), np.array([0, 0, 1])) == 1.0
    assert auc(np.array([0.3, 0.2, 0.1]), np.array([0, 0, 1])) == 0.0
    assert auc(np.array([0.5, 0.5]), np.array([0, 1])) == 0.5
    assert math.isnan(auc(np.array([0.1, 0.2]), np.array([1, 1])))


def test_average_ranks() -> None:
    assert average_ranks(np.array([2.0, 2.0, 1.0, 5.0, 2.0])).tolist() == [3, 3, 1, 5, 3]
    assert average_ranks(np.array([])).tolist() == []


def test_log_loss_values() -> None:
    expected = -(math.log(0.9) + math.log(0.8) + math.log(0.5)) / 3
    assert log_loss(np.array([0.9, 0.2, 0.5]), np.array([1, 0, 1])) == pytest.approx(expected)
    # clipped, not infinite
    assert log_loss(np.array([0.0]), np.array([1])) == pytest.approx(-math.log(1e-7))
    assert math.isnan(log_loss(np.array([]), np.array([])))


def test_prequential_tracker_cumulative_window_and_curve() -> None:
    rng = np.random.default_rng(1)
    m = PrequentialMetrics(window=300, record_every=250)
    all_s, all_y = [], []
    for _ in range(10):
        y = (rng.random(100) < 0.4).astype(int)
        s = np.clip(rng.random(100) * 0.5 + 0.3 * y, 0.01, 0.99)
        m.update(s, y)
        all_s.append(s)
        all_y.append(y)
    s_all, y_all = np.concatenate(all_s), np.concatenate(all_y)
    assert m.events == 1000
    assert m.auc() == pytest.approx(pairwise_auc(s_all, y_all))
    assert m.window_auc() == pytest.approx(pairwise_auc(s_all[-300:], y_all[-300:]))
    assert m.log_loss() == pytest.approx(log_loss(s_all, y_all))
    assert m.window_log_loss() == pytest.approx(log_loss(s_all[-300:], y_all[-300:]))
    assert m.positive_rate() == pytest.approx(y_all.mean())
    assert [p.events for p in m.curve] == [300, 500, 800, 1000]
    assert m.curve[0].auc == pytest.approx(pairwise_auc(s_all[:300], y_all[:300]))
    with pytest.raises(ValueError, match="labels"):
        m.update(np.zeros(2), np.zeros(3))


def test_memory_is_bounded_and_the_histogram_auc_stays_close_to_exact() -> None:
    """Past ``exact_limit`` the history is dropped; the histogram AUC matches to 1e-4."""
    rng = np.random.default_rng(7)
    m = PrequentialMetrics(window=500, exact_limit=2_000)
    all_s, all_y = [], []
    for _ in range(40):
        y = (rng.random(256) < 0.05).astype(int)
        s = 1.0 / (1.0 + np.exp(-(rng.normal(size=256) * 2 + 2.5 * y - 3)))
        m.update(s, y)
        all_s.append(s)
        all_y.append(y)
    s_all, y_all = np.concatenate(all_s), np.concatenate(all_y)
    assert not m.auc_is_exact
    assert m._scores is None  # nothing kept per event beyond the window
    assert m.auc() == pytest.approx(auc(s_all, y_all), abs=1e-4)
    assert m.window_auc() == pytest.approx(auc(s_all[-500:], y_all[-500:]), abs=1e-12)
    assert m.window_log_loss() == pytest.approx(log_loss(s_all[-500:], y_all[-500:]))
    assert m.positive_rate() == pytest.approx(y_all.mean())


def test_window_ring_handles_batches_larger_than_the_window() -> None:
    m = PrequentialMetrics(window=3)
    m.update(np.array([0.1, 0.2, 0.3, 0.4, 0.9]), np.array([0, 0, 1, 0, 1]))
    s, y = m.recent()
    assert sorted(s.tolist()) == [0.3, 0.4, 0.9]
    assert sorted(y.tolist()) == [False, True, True]
    m.update(np.array([0.5]), np.array([0]))
    s, _ = m.recent()
    assert sorted(s.tolist()) == [0.4, 0.5, 0.9]
    assert m.recent()[0].tolist() == [0.4, 0.9, 0.5]  # oldest first


@pytest.mark.parametrize("exact_limit", [0, 1_000, 5_000])
def test_histogram_counts_every_event_whatever_the_batch_sizes(exact_limit: int) -> None:
    """Past ``exact_limit``, the histogram holds the bins of all events, earlier ones too.

    Small batches add their events one by one and large ones a whole bincount; the history
    kept before the switch is binned when it ends: the counts are those of one bincount of
    every event, and the AUC is the histogram AUC of those counts.
    """
    from pipeline.training.prequential import _BINS, _score_bins, histogram_auc

    rng = np.random.default_rng(3)
    m = PrequentialMetrics(window=100, exact_limit=exact_limit)
    all_s, all_y = [], []
    for size in [16, 64, 3000, 1, 700, 16, 5000, 64]:
        y = rng.random(size) < 0.2
        s = rng.random(size)
        m.update(s, y)
        all_s.append(s)
        all_y.append(y)
    s_all, y_all = np.concatenate(all_s), np.concatenate(all_y)
    bins = _score_bins(s_all)
    pos = np.bincount(bins[y_all], minlength=_BINS)
    neg = np.bincount(bins[~y_all], minlength=_BINS)
    if exact_limit >= len(s_all):
        assert m.auc_is_exact and m.auc() == auc(s_all, y_all)
    else:
        assert not m.auc_is_exact
        assert m._hist_pos is not None and m._hist_neg is not None
        assert (m._hist_pos == pos).all() and (m._hist_neg == neg).all()
        assert m.auc() == histogram_auc(pos, neg)


def test_exact_history_grows_by_doubling_up_to_the_limit() -> None:
    m = PrequentialMetrics(exact_limit=3_000)
    s = np.linspace(0.0, 1.0, 16)
    y = np.arange(16) % 2 == 0
    for _ in range(180):  # 2,880 events
        m.update(s, y)
    assert m.auc_is_exact and m.events == 2_880
    assert m._scores is not None and len(m._scores) == 3_000  # capped at the limit, not 4,096
    assert m.auc() == auc(np.tile(s, 180), np.tile(y, 180))
