"""The online trainer: prequential order, inputs, prefetch ids, learning, throughput."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from configs.features import FeaturesConfig, load_feature_spec
from embedding_store import EmbeddingStore, OptimizerConfig, StoreConfig
from pipeline.events.generators import generate
from pipeline.events.kinds import decode
from pipeline.features.featurizer import Featurizer
from pipeline.features.spec import FeatureSpec
from pipeline.training.models import (
    BIAS_ID,
    BatchLayout,
    DenseOptimizerSpec,
    ModelSpec,
    build_model,
    model_tables,
)
from pipeline.training.prequential import auc
from pipeline.training.trainer import OnlineTrainer

REPO = Path(__file__).resolve().parents[4]
FRAUD = load_feature_spec(REPO / "configs" / "fraud.yaml")
CTR = load_feature_spec(REPO / "configs" / "ctr.yaml")


def make_trainer(
    tmp_path: Path, features: FeatureSpec, spec: ModelSpec, num_shards: int = 2, **kw: Any
) -> Iterator[OnlineTrainer]:
    layout = BatchLayout.from_spec(features)
    config = StoreConfig(str(tmp_path / "store"), model_tables(spec, layout), num_shards=num_shards)
    with EmbeddingStore(config) as store:
        model = build_model(spec, layout, store)
        yield OnlineTrainer(
            model,
            store,
            Featurizer(features),
            dense_optimizer=spec.dense_optimizer.build(model.parameters()),
            **kw,
        )


HUGE = {
    "logistic": ModelSpec(kind="logistic", linear_optimizer=OptimizerConfig("adagrad", lr=3.0)),
    "deepfm": ModelSpec(
        kind="deepfm",
        embedding_dim=4,
        hidden=(8,),
        bottom=(8,),
        sparse_optimizer=OptimizerConfig("sgd", lr=100.0),
        linear_optimizer=OptimizerConfig("sgd", lr=100.0),
        dense_optimizer=DenseOptimizerSpec("sgd", lr=10.0),
    ),
}


@pytest.mark.parametrize("kind", ["logistic", "deepfm"])
@pytest.mark.parametrize("separate", [False, True])
@pytest.mark.parametrize("num_shards", [1, 2])
def test_scores_come_from_parameters_before_the_batch(
    tmp_path: Path, kind: str, separate: bool, num_shards: int
) -> None:
    """With a huge learning rate, training moves scores a lot, yet a batch's recorded scores
    are exactly the scores of the model before it trained on that batch."""
    # the logistic model saturates on a 1% positive stream at this rate: give it clicks
    stream, features = ("ctr", CTR) if kind == "logistic" else ("transaction", FRAUD)
    events = list(generate(stream, 600, seed=5))
    for trainer in make_trainer(
        tmp_path, features, HUGE[kind], num_shards=num_shards, separate_scoring=separate
    ):
        warm = trainer.featurize(events[:300])
        trainer.train_batch(warm)
        batch = trainer.featurize(events[300:])
        before = trainer.score(batch)
        result = trainer.train_batch(batch)
        after = trainer.score(batch)
        np.testing.assert_allclose(result.scores, before, rtol=1e-6, atol=1e-7)
        assert np.abs(after - before).max() > 0.1
        recorded, _ = trainer.metrics.recent()
        np.testing.assert_allclose(recorded[-300:], before, rtol=1e-6, atol=1e-7)
        assert result.step == 2 and trainer.store.version == 2


def test_events_as_dicts_or_pydantic_models_train_identically(tmp_path: Path) -> None:
    import json

    events = list(generate("transaction", 400, seed=1))
    models = [decode("transaction", json.dumps(e).encode()) for e in events]
    spec = ModelSpec(kind="deepfm", embedding_dim=4, hidden=(8,), bottom=(8,))
    results: list[list[np.ndarray]] = []
    streams: list[list[Any]] = [events, models]
    for i, stream in enumerate(streams):
        for trainer in make_trainer(tmp_path / str(i), FRAUD, spec):
            results.append([trainer.train_batch(stream[k : k + 100]).scores for k in (0, 100, 200)])
    for a, b in zip(*results, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_sparse_ids_for_prefetch_leave_state_alone(tmp_path: Path) -> None:
    events = list(generate("transaction", 300, seed=2))
    spec = ModelSpec(kind="deepfm", embedding_dim=4, hidden=(8,), bottom=(8,))
    for trainer in make_trainer(tmp_path, FRAUD, spec):
        trainer.train_batch(events[:100])
        state = trainer.featurizer.state_dict()
        ahead = [trainer.sparse_ids(events[k : k + 100]) for k in (100, 200)]
        after = trainer.featurizer.state_dict()
        assert state.keys() == after.keys()
        assert all(np.array_equal(state[k], after[k]) for k in state)
        assert set(ahead[0]) == {"linear", "tx"}
        for ids in ahead[0].values():
            assert ids.dtype == np.int64 and (np.diff(ids) > 0).all()
        assert BIAS_ID in ahead[0]["linear"]
        batch = trainer.featurize(events[100:200])
        expected = np.unique(np.asarray(batch.sparse["tx"]))
        np.testing.assert_array_equal(ahead[0]["tx"], expected)
        ticket = trainer.store.prefetch(ahead)
        ticket.wait()
        trainer.train_batch(batch)
        ticket.release()
        assert trainer.events == 200


def test_logistic_baseline_learns_a_synthetic_stream(tmp_path: Path) -> None:
    events = list(generate("transaction", 40_000, seed=0))
    spec = ModelSpec(kind="logistic", linear_optimizer=OptimizerConfig("ftrl", lr=1.0))
    for trainer in make_trainer(tmp_path, FRAUD, spec):
        for k in range(0, len(events), 500):
            trainer.train_batch(events[k : k + 500])
        assert trainer.metrics.events == 40_000
        assert trainer.metrics.auc() > 0.8
        assert trainer.events_per_second > 0
        assert trainer.featurize_seconds < trainer.seconds


def test_deepfm_learns_synthetic_clicks(tmp_path: Path) -> None:
    events = list(generate("ctr", 12_000, seed=0))
    spec = ModelSpec(
        kind="deepfm",
        embedding_dim=4,
        hidden=(16,),
        bottom=(8,),
        sparse_optimizer=OptimizerConfig("adagrad", lr=0.02),
        linear_optimizer=OptimizerConfig("ftrl", lr=0.1),
        dense_optimizer=DenseOptimizerSpec("adam", lr=3e-3),
    )
    torch.manual_seed(0)
    for trainer in make_trainer(tmp_path, CTR, spec):
        scores, labels = [], []
        for k in range(0, len(events), 500):
            r = trainer.train_batch(events[k : k + 500])
            scores.append(r.scores)
            labels.append(r.labels)
        late = auc(np.concatenate(scores[-8:]), np.concatenate(labels[-8:]))
        early = auc(scores[0], labels[0])
        assert late > 0.65
        assert late > early + 0.05


def test_training_needs_labels(tmp_path: Path) -> None:
    events = list(generate("transaction", 10, seed=0))
    events[3] = {**events[3], "label": None}
    for trainer in make_trainer(tmp_path, FRAUD, ModelSpec(kind="logistic")):
        with pytest.raises(ValueError, match="label"):
            trainer.train_batch(events)


def test_sum_reduction_gives_each_event_its_full_gradient(tmp_path: Path) -> None:
    """With SGD, a mean loss moves a shared weight B times less than a summed one."""
    features = FeaturesConfig.model_validate(
        {"sparse": [{"type": "categorical", "name": "a", "table": "t", "field": "a"}]}
    ).to_spec()
    events = [{"a": "x", "label": 1}] * 8
    spec = ModelSpec(kind="logistic", linear_optimizer=OptimizerConfig("sgd", lr=0.1))
    moved = {}
    for reduction in ("sum", "mean"):
        for trainer in make_trainer(tmp_path / reduction, features, spec, reduction=reduction):
            trainer.train_batch(events)
            moved[reduction] = float(trainer.score(events[:1])[0]) - 0.5
    assert moved["sum"] == pytest.approx(1 / (1 + np.exp(-2 * 0.1 * 8 * 0.5)) - 0.5, rel=1e-5)
    assert moved["mean"] == pytest.approx(1 / (1 + np.exp(-2 * 0.1 * 0.5)) - 0.5, rel=1e-5)
