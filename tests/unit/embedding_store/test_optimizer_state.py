"""The optimizer state of new rows, value by value (mutation testing, issue 17: the store-level
reference test did not notice SGD rows given a state, or a wrong width)."""

from __future__ import annotations

import numpy as np
import pytest

from embedding_store.config import OptimizerConfig
from embedding_store.optimizers import initial_state, update

EMB = np.array([[0.5, -1.0, 2.0], [0.0, 0.25, -0.75]], dtype=np.float32)
ACC0 = 0.3


@pytest.mark.parametrize("kind", ["sgd", "adagrad", "rowwise_adagrad", "adam", "ftrl"])
def test_initial_state_width_is_the_layouts(kind: str) -> None:
    cfg = OptimizerConfig(kind, lr=0.5, initial_accumulator=ACC0)  # type: ignore[arg-type]
    state = initial_state(EMB, cfg)
    assert state.dtype == np.float32
    assert state.shape == (2, cfg.state_dim(3))


def test_initial_state_values() -> None:
    sgd = initial_state(EMB, OptimizerConfig("sgd", lr=0.5))
    assert sgd.shape == (2, 0)
    ada = initial_state(EMB, OptimizerConfig("adagrad", lr=0.5, initial_accumulator=ACC0))
    np.testing.assert_array_equal(ada, np.full((2, 3), ACC0, np.float32))
    row = initial_state(EMB, OptimizerConfig("rowwise_adagrad", lr=0.5, initial_accumulator=ACC0))
    np.testing.assert_array_equal(row, np.full((2, 1), ACC0, np.float32))
    adam = initial_state(EMB, OptimizerConfig("adam", lr=0.5, initial_accumulator=ACC0))
    np.testing.assert_array_equal(adam, np.zeros((2, 7), np.float32))
    cfg = OptimizerConfig("ftrl", lr=0.5, beta=0.7, initial_accumulator=ACC0)
    ftrl = initial_state(EMB, cfg)
    z = -EMB.astype(np.float64) * (0.7 + np.sqrt(ACC0)) / 0.5
    np.testing.assert_allclose(ftrl[:, :3], z, rtol=1e-6)
    np.testing.assert_allclose(ftrl[:, 3:], np.full((2, 3), ACC0), rtol=1e-6)


def test_sgd_update_leaves_the_state_and_steps_by_lr() -> None:
    state = np.zeros((2, 0), np.float32)
    grad = np.array([[1.0, 2.0, -1.0], [0.5, 0.0, 4.0]], dtype=np.float64)
    new, new_state = update(EMB, state, grad, OptimizerConfig("sgd", lr=0.25))
    np.testing.assert_allclose(new, EMB - 0.25 * grad, rtol=1e-6)
    assert new.dtype == np.float32
    assert new_state is state
