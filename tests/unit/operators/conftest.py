"""Helpers shared by the operator tests: small stores, training steps, row snapshots."""

from __future__ import annotations

import numpy as np

from embedding_store import EmbeddingStore


def train_step(store: EmbeddingStore, table: str, ids: np.ndarray, scale: float = 0.5) -> None:
    """One step on ``table``: look ids up, apply a gradient depending on the embeddings."""
    emb = store.lookup(table, ids)
    grads = (emb * scale + 0.01).numpy().astype(np.float32)
    store.apply_gradients(table, ids, grads)


def table_rows(store: EmbeddingStore, table: str) -> tuple[np.ndarray, np.ndarray]:
    """Every row of ``table`` sorted by id."""
    blocks = list(store.export_rows(table))
    if not blocks:
        layout_dtype = store.read_rows(table, np.empty(0, np.int64))[1].dtype
        return np.empty(0, np.int64), np.empty(0, dtype=layout_dtype)
    ids = np.concatenate([b[0] for b in blocks])
    rows = np.concatenate([b[1] for b in blocks])
    order = np.argsort(ids)
    return ids[order], rows[order]


def store_contents(store: EmbeddingStore) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every table's rows, sorted by id."""
    return {t.name: table_rows(store, t.name) for t in store.tables}


def assert_same_contents(
    got: dict[str, tuple[np.ndarray, np.ndarray]], want: dict[str, tuple[np.ndarray, np.ndarray]]
) -> None:
    """Same ids and bit-identical rows (every field: emb, state, version, LFU, last seen)."""
    assert got.keys() == want.keys()
    for name in want:
        g_ids, g_rows = got[name]
        w_ids, w_rows = want[name]
        assert np.array_equal(g_ids, w_ids), name
        assert g_rows.dtype == w_rows.dtype, name
        for field in w_rows.dtype.names or ():
            assert np.array_equal(g_rows[field], w_rows[field]), (name, field)
