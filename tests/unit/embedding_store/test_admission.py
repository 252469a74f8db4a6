"""Admission: an id gets a row after ``admit_after`` training steps, counted once per step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embedding_store import EmbeddingStore, OptimizerConfig, StoreConfig, TableConfig
from embedding_store.config import Unadmitted
from embedding_store.initializers import initial_values

LR = 0.5


def _store(path: Path, admit_after: int, **table: object) -> EmbeddingStore:
    t = TableConfig("t", 3, OptimizerConfig("sgd", lr=LR), seed=7, admit_after=admit_after, **table)  # type: ignore[arg-type]
    return EmbeddingStore(StoreConfig(str(path), (t,), num_shards=2), clock=lambda: 0.0)


def _train(store: EmbeddingStore, ids: np.ndarray) -> np.ndarray:
    emb = store.lookup("t", ids).numpy()
    store.apply_gradients("t", ids, np.ones_like(emb))
    store.end_step()
    return emb


@pytest.mark.parametrize("k", [2, 3, 5])
def test_an_id_is_admitted_on_its_kth_training_step(tmp_path: Path, k: int) -> None:
    ids = np.array([11, 12, 11], dtype=np.int64)  # duplicates within a step count once
    init = initial_values(np.array([11, 12], np.int64), 3, 7, 0.05)
    with _store(tmp_path, k) as store:
        for step in range(1, k):
            emb = _train(store, ids)
            found, _ = store.read_rows("t", np.array([11, 12], np.int64))
            assert found.tolist() == [False, False], f"stored after {step} of {k} steps"
            np.testing.assert_array_equal(emb[:2], init)  # unadmitted: the initial value
        assert store.stats("t").created == 0
        _train(store, ids)  # the k-th step admits and trains
        found, rows = store.read_rows("t", np.array([11, 12], np.int64))
        assert found.tolist() == [True, True]
        assert rows["version"].tolist() == [k, k]
        # id 11 appears twice: its gradients sum to 2, id 12's to 1
        np.testing.assert_allclose(rows["emb"][0], init[0] - 2 * LR, rtol=1e-6)
        np.testing.assert_allclose(rows["emb"][1], init[1] - LR, rtol=1e-6)
        assert store.stats("t").created == 2


def test_lookups_without_gradients_and_gradients_without_lookups_count_once(
    tmp_path: Path,
) -> None:
    one = np.array([5], dtype=np.int64)
    with _store(tmp_path, 3) as store:
        store.lookup("t", one, pin=False)  # an evaluation forward
        store.lookup("t", one)  # and the training forward of the same step
        store.end_step()
        store.apply_gradients("t", one, np.ones((1, 3), np.float32))  # gradient alone
        store.end_step()
        assert not store.read_rows("t", one)[0][0]
        store.lookup("t", one)
        store.end_step()
        assert store.read_rows("t", one)[0][0]


def test_unadmitted_zeros_and_dropped_gradients(tmp_path: Path) -> None:
    one = np.array([5], dtype=np.int64)
    with _store(tmp_path, 2, unadmitted=Unadmitted.ZEROS) as store:
        emb = store.lookup("t", one).numpy()
        assert store.apply_gradients("t", one, np.ones((1, 3), np.float32)) == 0
        store.end_step()
        np.testing.assert_array_equal(emb, np.zeros((1, 3), np.float32))
        assert len(store.sightings("t")) == 1
        assert store.sightings("t")["count"].tolist() == [1]
