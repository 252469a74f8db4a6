"""Acceptance 1: a fraud job reads the ``users`` table a CTR job trains, through the service.

Two real shard processes on loopback. The CTR job trains ``users`` (and its own tables) and
publishes it at versions 1 and 2; the fraud job trains its own tables with ``users`` read
frozen from the service, pinned at a version. Its prequential scores equal, to 1e-6, those of
the same job given a local copy of ``users`` at that version (read the same way: stored rows,
else the initial value), and differ between the two versions (so the pin matters).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

from embedding_store import EmbeddingStore, OptimizerConfig, StoreConfig, TableConfig
from pipeline.embedservice.client import ServiceClient
from pipeline.embedservice.shard import TableSchema
from pipeline.embedservice.tables import LocalTable, RoutedStore, ServiceTable, store_update
from pipeline.features.featurizer import Featurizer
from pipeline.features.spec import CategoricalSpec, FeatureSpec
from pipeline.testing.embed_shards import ShardProcess, start_shards
from pipeline.training.models import BatchLayout, ModelSpec, build_model, model_tables
from pipeline.training.trainer import OnlineTrainer

pytestmark = pytest.mark.integration

CTR = FeatureSpec(
    sparse=(CategoricalSpec("user", "users", "user"), CategoricalSpec("ad", "ads", "ad"))
)
FRAUD = FeatureSpec(
    sparse=(
        CategoricalSpec("user", "users", "user"),
        CategoricalSpec("merchant", "merchants", "merchant"),
    )
)
MODEL = ModelSpec(kind="deepfm", embedding_dim=4, hidden=(8,), bottom=(4,), seed=3)


def _events(rng: np.random.Generator, n: int, fields: dict[str, int]) -> list[dict[str, Any]]:
    cols = {f: rng.integers(0, card, n) for f, card in fields.items()}
    labels = rng.random(n) < 0.3
    return [
        {**{f: f"{f}{int(cols[f][i])}" for f in fields}, "label": int(labels[i])} for i in range(n)
    ]


@pytest.fixture
def service(tmp_path: Path) -> Iterator[list[ShardProcess]]:
    shards = start_shards(tmp_path / "svc", 2)
    yield shards
    for s in shards:
        s.stop()


def _job(
    path: Path, spec: FeatureSpec, sources: dict[str, Any]
) -> tuple[OnlineTrainer, EmbeddingStore]:
    layout = BatchLayout.from_spec(spec)
    tables = tuple(t for t in model_tables(MODEL, layout) if t.name not in sources)
    store = EmbeddingStore(StoreConfig(str(path), tables, num_shards=2)).open()
    view = cast(EmbeddingStore, RoutedStore(store, sources) if sources else store)
    model = build_model(MODEL, layout, view)
    opt = MODEL.dense_optimizer.build(model.parameters())
    return OnlineTrainer(model, view, Featurizer(spec), dense_optimizer=opt), store


def test_fraud_job_reads_users_remotely_like_a_local_copy(
    tmp_path: Path, service: list[ShardProcess]
) -> None:
    rng = np.random.default_rng(11)
    client = ServiceClient([s.endpoint for s in service])
    # -- the CTR job owns and trains `users`, publishing versions 1 and 2
    ctr, ctr_store = _job(tmp_path / "ctr", CTR, {})
    users_cfg = ctr_store.config.table("users")
    schema = TableSchema.from_table(users_cfg, owner="ctr")
    client.register(schema)
    copies: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    since = 0
    for version in (1, 2):
        for _ in range(4):
            ctr.train_batch(_events(rng, 256, {"user": 400, "ad": 50}))
        client.publish(store_update(ctr_store, "users", "ctr", version, since))
        since = ctr_store.version
        ids, block = ctr_store.written_since("users", 0)
        copies[version] = (ids, np.ascontiguousarray(block["emb"]))
    assert client.rows("users") == len(copies[2][0])

    # -- the fraud job: its own tables trained, `users` frozen (users 0..599: some unseen)
    fraud_events = [
        _events(np.random.default_rng(5 + i), 128, {"user": 600, "merchant": 80}) for i in range(6)
    ]

    def fraud_scores(path: Path, users: Any) -> np.ndarray:
        trainer, store = _job(path, FRAUD, {"users": users})
        scores = np.concatenate([trainer.train_batch(b).scores for b in fraud_events])
        store.close()
        return scores

    results: dict[str, np.ndarray] = {}
    for version in (1, 2):
        remote = ServiceTable(client, "users", version=version)
        results[f"remote{version}"] = fraud_scores(tmp_path / f"fraud-remote-{version}", remote)
        assert remote.last_version == version
        copy_cfg = TableConfig(
            "users",
            users_cfg.dim,
            OptimizerConfig("sgd", lr=1.0),
            seed=users_cfg.seed,
            init_scale=users_cfg.init_scale,
        )
        copy = EmbeddingStore(StoreConfig(str(tmp_path / f"copy-{version}"), (copy_cfg,), 1)).open()
        ids, emb = copies[version]
        block = np.zeros(len(ids), copy._shard_tables("users")[0].layout.dtype)
        block["emb"] = emb
        copy.import_rows("users", ids, block)
        results[f"local{version}"] = fraud_scores(
            tmp_path / f"fraud-local-{version}", LocalTable(copy, schema)
        )
        copy.close()

    for version in (1, 2):
        diff = np.abs(results[f"remote{version}"] - results[f"local{version}"]).max()
        assert diff <= 1e-6, f"version {version}: remote and local-copy scores differ by {diff}"
    assert np.abs(results["remote1"] - results["remote2"]).max() > 1e-4  # the version matters
    # reading never stored a row for the fraud job's unseen users
    assert client.rows("users") == len(copies[2][0])
    client.close()
    ctr_store.close()
