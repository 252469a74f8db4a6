"""A published version carries the featurizer entities changed, not the whole state (issue 21).

A trainer learns many customers and publishes a snapshot; a replica loads it. Each later
version brings K new customers (and a few known ones): its delta's featurizer bytes are K (plus
the known ones) times one customer's rows and a constant, whatever the state holds, and the
replica, applying it, holds exactly the trainer's featurizer state and scores alike.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.publishing.array_patch import ArrayPatch
from pipeline.publishing.chunks import ChunkAssembler
from pipeline.publishing.delta import FEATURIZER_PREFIX, ModelDelta
from pipeline.publishing.publisher import Publisher, PublisherSettings
from pipeline.publishing.snapshot import SnapshotStore
from pipeline.serving.model import Blueprint, ServingModel
from pipeline.testing.replicas import MemoryTopic, TrainingHarness, events_of, transaction_specs

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def events(customers: np.ndarray, day: int, seed: int) -> list[Any]:
    rng = np.random.default_rng(seed)
    when = T0 + timedelta(days=day)
    return events_of(
        "transaction",
        [
            {
                "transaction_id": seed * 1_000_000 + i,
                "customer_id": int(c),
                "terminal_id": int(rng.integers(0, 50)),
                "amount": float(rng.uniform(1, 100)),
                "label": int(rng.random() < 0.05),
                "timestamp": (when + timedelta(seconds=i)).isoformat(),
            }
            for i, c in enumerate(customers)
        ],
    )


def deltas(topic: MemoryTopic) -> list[ModelDelta]:
    assembler = ChunkAssembler()
    out = []
    for message in topic.messages:
        done = assembler.add(message)
        if done is not None:
            out.append(ModelDelta.from_bytes(done.payload))
    return out


def featurizer_bytes(delta: ModelDelta) -> int:
    total = 0
    for name, update in delta.state.items():
        if name.startswith(FEATURIZER_PREFIX):
            total += update.nbytes if isinstance(update, ArrayPatch) else int(update.nbytes)
    return total


def test_versions_carry_the_changed_entities_and_the_replica_holds_the_trainers_state(
    tmp_path: Path,
) -> None:
    fspec, mspec = transaction_specs()
    harness = TrainingHarness(fspec, mspec, tmp_path / "t", num_shards=1).open()
    topic = MemoryTopic()
    settings = PublisherSettings(topic="d", snapshot_every=1000, snapshot_interval_s=None)
    publisher = Publisher("unused:9092", "d", tmp_path / "snaps", settings=settings, sink=topic)
    publisher.start()
    model = ServingModel(Blueprint(fspec, mspec, 1, None), tmp_path / "replica").open()
    try:
        known = 20_000
        for start in range(0, known, 2000):
            harness.train(events(np.arange(start, start + 2000), day=0, seed=start + 1))
        harness.publish(publisher, snapshot=True)
        snaps = SnapshotStore(tmp_path / "snaps")
        info = snaps.newest()
        assert info is not None
        model.load_snapshot(snaps, info)
        full = sum(v.nbytes for v in harness.featurizer.state_dict().values())
        sizes: dict[int, int] = {}
        next_id = known
        for day, k in enumerate((10, 100, 1000), start=1):
            # k new customers and the same 10 known ones, a day later
            ids = np.concatenate([np.arange(next_id, next_id + k), np.arange(10)])
            next_id += k
            probe = events(np.arange(0, next_id, 97), day=day, seed=7)
            harness.train(events(ids, day=day, seed=100 + day))
            report = harness.publish(publisher, probe)
            assert report is not None and not report.snapshot
            delta = deltas(topic)[-1]
            assert delta.version == report.version and delta.base == report.version - 1
            sizes[k] = featurizer_bytes(delta)
            model.commit(model.prepare(delta))
            trainer_state = harness.featurizer.state_dict()
            replica_state = {
                k.removeprefix(FEATURIZER_PREFIX): v
                for k, v in model.arrays.items()
                if k.startswith(FEATURIZER_PREFIX)
            }
            assert replica_state.keys() == trainer_state.keys()
            for name, value in trainer_state.items():
                assert np.array_equal(replica_state[name], value), name
            assert np.array_equal(model.predict(probe), harness.recorded[report.version])
        # one customer's 7-day row: key, 7 buckets, 7 x (count, sum, squares), and its row
        # number in each of the three arrays' patches
        per_customer = 8 + 7 * 8 + 7 * 24 + 3 * 8
        rest = {k: size - k * per_customer for k, size in sizes.items()}
        assert max(rest.values()) - min(rest.values()) <= 64, rest  # the same constant each time
        assert max(rest.values()) <= 10 * per_customer + 4096, rest  # the known ones + moments
        assert sizes[10] * 100 < full
    finally:
        model.close()
        publisher.close()
        harness.close()
