"""A small CTR job that yields its published deltas, for embedding-service tests and benches.

Versions 1, 2, ... each follow ``batches_per_version`` training batches; every delta carries
the rows written since the previous one (version 1: every row) and the full dense and
featurizer state, as the publisher's deltas do.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from embedding_store import EmbeddingStore, StoreConfig, TableConfig
from pipeline.features.featurizer import Featurizer
from pipeline.features.spec import CategoricalSpec, FeatureSpec
from pipeline.publishing.delta import ModelDelta, TableDelta, state_arrays
from pipeline.training.models import BatchLayout, ModelSpec, build_model, model_tables
from pipeline.training.trainer import OnlineTrainer

CTR_FEATURES = FeatureSpec(
    sparse=(CategoricalSpec("user", "users", "user"), CategoricalSpec("ad", "ads", "ad"))
)
CTR_MODEL = ModelSpec(kind="deepfm", embedding_dim=4, hidden=(8,), bottom=(4,), seed=3)


def ctr_events(rng: np.random.Generator, n: int, users: int, ads: int = 50) -> list[dict[str, Any]]:
    """``n`` CTR-like events over ``users`` users and ``ads`` ads."""
    u, a = rng.integers(0, users, n), rng.integers(0, ads, n)
    y = rng.random(n) < 0.3
    return [{"user": f"u{u[i]}", "ad": f"a{a[i]}", "label": int(y[i])} for i in range(n)]


def ctr_tables() -> tuple[TableConfig, ...]:
    """The CTR job's store tables."""
    return model_tables(CTR_MODEL, BatchLayout.from_spec(CTR_FEATURES))


def ctr_deltas(
    path: str | Path, versions: int, batches_per_version: int = 2, users: int = 500, seed: int = 0
) -> Iterator[ModelDelta]:
    """Train the CTR job and yield its deltas, versions 1..``versions``."""
    rng = np.random.default_rng(seed)
    store = EmbeddingStore(StoreConfig(str(path), ctr_tables(), num_shards=2)).open()
    try:
        model = build_model(CTR_MODEL, BatchLayout.from_spec(CTR_FEATURES), store)
        featurizer = Featurizer(CTR_FEATURES)
        opt = CTR_MODEL.dense_optimizer.build(model.parameters())
        trainer = OnlineTrainer(model, store, featurizer, dense_optimizer=opt)
        since = 0
        for version in range(1, versions + 1):
            for _ in range(batches_per_version):
                trainer.train_batch(ctr_events(rng, 128, users))
            tables = []
            for t in store.tables:
                ids, block = store.written_since(t.name, since)
                tombs = store.tombstones_since(t.name, since)
                tables.append(TableDelta(t.name, ids, np.ascontiguousarray(block["emb"]), tombs))
            now = datetime.now(tz=UTC)
            state = state_arrays(model.state_dict(), featurizer.state_dict())
            yield ModelDelta(version, version - 1, now, now, store.version, tuple(tables), state)
            since = store.version
    finally:
        store.close()
