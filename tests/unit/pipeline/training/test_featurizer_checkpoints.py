"""Featurizer state in a job's checkpoints: increments carry the entities changed, not all.

A 1-rank :class:`TrainJob` (fraud config, real store and checkpoints on disk, no broker: the
batches go straight to its trainer) learns a large set of customers, writes a full
checkpoint, then per interval sees K new customers on a fixed set of terminals and writes an
increment. Each increment's featurizer bytes are a constant (the terminals, the moments) plus
K times one customer's rows; a restart restores the chain to the exact featurizer state, and
trains on exactly as the uninterrupted job.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from configs.features import FeatureStateConfig
from configs.job import JobConfig
from operators.checkpoint.distributed import WORLD_FILE
from operators.checkpoint.manager import CheckpointManager
from operators.checkpoint.patches import PATCH_PREFIX, chain_layers
from operators.checkpoint.reader import CheckpointReader
from pipeline.events.kinds import TransactionEvent
from pipeline.features.featurizer import Featurizer
from pipeline.training.featurizer_patches import FeaturizerPatches
from pipeline.training.job import TrainJob
from pipeline.training.spec import JobSpec

REPO = Path(__file__).resolve().parents[4]
TERMINALS = 20
T0 = 1_525_132_800  # 2018-05-01


def spec_for(tmp_path: Path, budget_mb: float | None = None) -> JobSpec:
    base = JobConfig.from_yaml(REPO / "configs" / "fraud.yaml")
    features = base.features
    if budget_mb is not None:
        features = features.model_copy(update={"state": FeatureStateConfig(budget_mb=budget_mb)})
    config = base.model_copy(
        update={
            "store": base.store.model_copy(update={"path": str(tmp_path / "store")}),
            "features": features,
        }
    )
    return config.to_spec().with_checkpoints(str(tmp_path / "ckpt"))


def events(customers: np.ndarray, day: int, seed: int) -> list[TransactionEvent]:
    rng = np.random.default_rng(seed)
    terminals = np.arange(len(customers)) % TERMINALS  # every terminal, every interval
    stamp = np.datetime64(T0 + day * 86400, "s")
    return [
        TransactionEvent.from_record(
            {
                "transaction_id": seed * 1_000_000 + i,
                "customer_id": int(c),
                "terminal_id": int(t),
                "amount": float(rng.uniform(1, 100)),
                "label": int(rng.random() < 0.05),
                "timestamp": f"{stamp}Z",
            }
        )
        for i, (c, t) in enumerate(zip(customers, terminals, strict=True))
    ]


def train(job: TrainJob, batch: list[TransactionEvent], size: int = 256) -> None:
    assert job.trainer is not None
    for start in range(0, len(batch), size):
        job.trainer.train_batch(batch[start : start + size])


def link_patch(job: TrainJob, checkpoint_id: str) -> dict[str, np.ndarray]:
    """The featurizer patch arrays a checkpoint on disk holds."""
    manager = job.checkpoint_manager
    assert manager is not None
    info = next(c for c in manager.list() if c.id == checkpoint_id)
    dense = CheckpointReader(manager.root, info).dense()
    return {k: v.array for k, v in dense.items() if k.startswith(PATCH_PREFIX)}


def nbytes(arrays: dict[str, np.ndarray]) -> int:
    return sum(v.nbytes for v in arrays.values())


def restored_layers(manager: CheckpointManager) -> list[dict[str, np.ndarray]]:
    """The patch layers of the newest chain, base first, as a restore reads them."""
    tip = manager.latest_complete()
    assert tip is not None
    infos = [c for c in manager.list() if c.chain == tip.chain and c.index <= tip.index]
    denses = (CheckpointReader(manager.root, c).dense() for c in infos)
    return [{k: v.array for k, v in layer.items()} for layer in chain_layers(denses)]


def customer_bytes(featurizer: Featurizer, patch: dict[str, np.ndarray]) -> tuple[int, int]:
    """``(rows, bytes)`` of the customer aggregates in a patch: place, key, newest, changed and
    a ring of (bucket, count, sum, sum of squares) per row; rows of the 30-day aggregate."""
    total = 0
    for agg in featurizer.spec.aggregates:
        if agg.key == ("customer_id",):
            rows = len(next(v for k, v in patch.items() if k.endswith(f"agg.{agg.name}.rows")))
            total += rows * (8 * 4 + 32 * (agg.window + agg.delay))
    rows = len(next(v for k, v in patch.items() if k.endswith("agg.cust_30d.rows")))
    return rows, total


def state_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("budget_mb", [None, 24.0])  # 24 MiB: ~4,600 of 6,000 customers
def test_increments_grow_with_entities_changed_and_restore_exactly(
    tmp_path: Path, budget_mb: float | None
) -> None:
    spec = spec_for(tmp_path, budget_mb)
    existing = 6000
    new_per_interval = (50, 400, 100, 200)
    job = TrainJob(spec).open()
    try:
        assert job.featurizer is not None and job.checkpoint_manager is not None
        train(job, events(np.arange(existing), day=0, seed=1))
        job.checkpoint(full=True)
        full = nbytes(link_patch(job, job.checkpoint_manager.list()[-1].id))
        sizes: dict[int, int] = {}
        rest: set[int] = set()
        next_id = existing
        for day, k in enumerate(new_per_interval, start=1):
            train(job, events(np.arange(next_id, next_id + k), day=day, seed=10 + day))
            next_id += k
            job.checkpoint()
            link = job.checkpoint_manager.list()[-1]
            assert link.kind.value == "incremental"
            patch = link_patch(job, link.id)
            rows, customers = customer_bytes(job.featurizer, patch)
            sizes[k] = nbytes(patch)
            rest.add(sizes[k] - customers)  # terminals, moments, clocks: the same every time
            if budget_mb is None:
                assert rows == k
            else:  # at the budget each new customer takes the place of one it evicts
                assert rows == k
        assert len(rest) == 1, rest
        kept = len(job.featurizer.state_dict()["agg.cust_30d.keys"])
        cap = job.featurizer.budget.entity_caps(job.featurizer.spec.aggregates)["cust_30d"]
        assert kept == (next_id if budget_mb is None else cap)
        assert sizes[50] * 10 < full  # 50 customers changed of those kept: a small fraction
        at_tip = job.featurizer.state_dict()
        more = events(np.arange(next_id, next_id + 300), day=9, seed=99)
        train(job, more)
        uninterrupted = job.featurizer.state_dict()
    finally:
        job.close(clean=False)  # a crash: no final checkpoint

    again = TrainJob(spec).open()
    try:
        assert again.featurizer is not None and again.resumed is not None
        assert state_equal(again.featurizer.state_dict(), at_tip)
        train(again, more)
        assert state_equal(again.featurizer.state_dict(), uninterrupted)
        # the assertions have teeth: leave out one increment's layer and the state differs
        manager = again.checkpoint_manager
        assert manager is not None
        layers = restored_layers(manager)
        assert len(layers) == 1 + len(new_per_interval)
        twin = Featurizer(again.spec.features, again.spec.feature_state)
        FeaturizerPatches(twin).restore(0, layers[:2] + layers[3:])
        assert not state_equal(twin.state_dict(), at_tip)
        FeaturizerPatches(twin).restore(0, layers)
        assert state_equal(twin.state_dict(), at_tip)
    finally:
        again.close(clean=False)


def test_after_a_checkpoint_without_layers_the_next_increment_is_whole(tmp_path: Path) -> None:
    spec = spec_for(tmp_path)
    feat = Featurizer(spec.features, spec.feature_state)
    patches = FeaturizerPatches(feat)
    patches.restore(5, [])  # an older checkpoint (state in its dense tree) or a re-shard
    feat.transform(events(np.arange(30), day=0, seed=3))
    layer = patches.capture(6, 5)
    assert int(layer["patch.kind"][0]) == 0 and len(layer["agg.cust_30d.keys"]) == 30
    feat.transform(events(np.arange(30, 35), day=1, seed=4))
    layer = patches.capture(7, 6)  # from here on, deltas
    assert int(layer["patch.kind"][0]) == 1 and len(layer["agg.cust_30d.keys"]) == 5


def test_world_checkpoints_keep_the_ranks_featurizer_state(tmp_path: Path) -> None:
    """A world-layout job (as N ranks write; here one rank) restores its featurizer state."""
    spec = spec_for(tmp_path)
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / WORLD_FILE).write_text(json.dumps({"checkpoints": []}))
    job = TrainJob(spec).open()
    try:
        assert job.checkpoints is not None and job.checkpoints.layout == "world"
        assert job.featurizer is not None
        train(job, events(np.arange(500), day=0, seed=1))
        job.checkpoint(full=True)
        train(job, events(np.arange(500, 520), day=1, seed=2))
        job.checkpoint()
        want = job.featurizer.state_dict()
    finally:
        job.close(clean=False)
    part = tmp_path / "ckpt" / "rank-0000"
    tip = CheckpointManager(str(part)).latest_complete()
    assert tip is not None and tip.index == 1  # an increment: the 20 new customers only
    patch = CheckpointReader(str(part), tip).dense()
    assert len(patch[f"{PATCH_PREFIX}0000/agg.cust_30d.keys"].array) == 20
    again = TrainJob(spec).open()
    try:
        assert again.featurizer is not None and again.resumed is not None
        assert state_equal(again.featurizer.state_dict(), want)
    finally:
        again.close(clean=False)
