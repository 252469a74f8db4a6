"""A replica's model generation: all-or-nothing deltas, a DRAM budget, the readers-writer lock."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from pipeline.events.generators import generate
from pipeline.publishing.array_patch import ArrayPatch
from pipeline.publishing.delta import ModelDelta, TableDelta
from pipeline.publishing.errors import DeltaMismatchError
from pipeline.publishing.publisher import Publisher, PublisherSettings
from pipeline.publishing.snapshot import SnapshotStore
from pipeline.serving.model import Blueprint, ServingModel
from pipeline.serving.rwlock import ReadWriteLock
from pipeline.testing.replicas import MemoryTopic, TrainingHarness, events_of, transaction_specs

T0 = datetime(2024, 1, 1, tzinfo=UTC)
EVENTS = events_of("transaction", list(generate("transaction", 3000, seed=9)))


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> tuple[SnapshotStore, TrainingHarness]:
    tmp = tmp_path_factory.mktemp("snap")
    harness = TrainingHarness(*transaction_specs(), tmp / "t", num_shards=1).open()
    for i in range(0, 2800, 200):
        harness.train(EVENTS[i : i + 200])
    pub = Publisher(
        "unused:9092", "d", tmp / "snaps", settings=PublisherSettings(topic="d"), sink=MemoryTopic()
    ).start()
    harness.publish(pub, EVENTS[2800:], snapshot=True)
    return SnapshotStore(tmp / "snaps"), harness


def loaded(tmp: Path, snaps: SnapshotStore, budget: int | None = None) -> ServingModel:
    fspec, mspec = transaction_specs()
    model = ServingModel(Blueprint(fspec, mspec, 2, budget), tmp).open()
    info = snaps.newest()
    assert info is not None
    model.load_snapshot(snaps, info)
    return model


def test_snapshot_predictions_equal_the_trainer_within_a_small_dram_budget(
    tmp_path: Path, snapshot: tuple[SnapshotStore, TrainingHarness]
) -> None:
    snaps, harness = snapshot
    info = snaps.newest()
    assert info is not None and info.rows > 1000
    row_bytes = 40  # the replica's rows: 32 header bytes + one float (linear) or 4 (factors)
    model = loaded(tmp_path / "m", snaps, budget=200 * row_bytes)
    try:
        for i in range(0, 2800, 400):  # touch many rows, more than the budget holds
            model.predict(EVENTS[i : i + 400])
            model.maintain()
        model.store.flush()
        tiers = model.rows_per_tier(count_cold=True)
        hot = sum(h for h, _ in tiers.values())
        cold = sum(c or 0 for _, c in tiers.values())
        assert hot <= 2 * 200 + 64 and cold >= info.rows
        scores = model.predict(EVENTS[2800:])
        assert np.max(np.abs(scores - harness.recorded[info.version])) <= 1e-6
    finally:
        model.close()


def bad_deltas(version: int) -> list[tuple[ModelDelta, str]]:
    ok_rows = TableDelta("tx", np.array([1], np.int64), np.ones((1, 4), np.float32), np.array([]))
    base = {"version": version + 1, "base": version, "created_at": T0, "step_time": T0}
    return [
        (
            ModelDelta(
                **base,  # type: ignore[arg-type]
                store_version=0,
                tables=(TableDelta("nope", ok_rows.ids, ok_rows.emb, ok_rows.tombstones),),
            ),
            "unknown table 'nope'",
        ),
        (
            ModelDelta(
                **base,  # type: ignore[arg-type]
                store_version=0,
                tables=(
                    TableDelta("tx", ok_rows.ids, np.ones((1, 3), np.float32), ok_rows.tombstones),
                ),
            ),
            "has dim 3, not 4",
        ),
        (
            ModelDelta(
                **base,  # type: ignore[arg-type]
                store_version=0,
                tables=(
                    ok_rows,
                    TableDelta("tx", np.array([2, 2]), np.ones((2, 4), np.float32), np.array([])),
                ),
            ),
            "upserts an id twice",
        ),
        (
            ModelDelta(
                **base,  # type: ignore[arg-type]
                store_version=0,
                tables=(ok_rows,),
                state={"dense/top.0.weight": np.zeros((2, 2), np.float32)},
            ),
            "dense 'top.0.weight' has shape",
        ),
        (
            ModelDelta(
                **base,  # type: ignore[arg-type]
                store_version=0,
                tables=(ok_rows,),
                state={
                    "featurizer/agg.cust_7d.keys": ArrayPatch(
                        0, np.array([0]), np.zeros(1), (10**9,)
                    )
                },
            ),
            "featurizer/agg.cust_7d.keys",
        ),
    ]


def test_a_bad_delta_changes_nothing(
    tmp_path: Path, snapshot: tuple[SnapshotStore, TrainingHarness]
) -> None:
    snaps, _ = snapshot
    model = loaded(tmp_path / "m", snaps)
    try:
        version = model.version
        assert version is not None
        before = model.predict(EVENTS[2800:])
        rows_before = model.store.read_rows("tx", np.array([1], np.int64))
        for delta, message in bad_deltas(version):
            with pytest.raises(DeltaMismatchError, match=message):
                model.prepare(delta)
        assert model.version == version and not model.broken
        assert np.array_equal(model.predict(EVENTS[2800:]), before)
        rows_after = model.store.read_rows("tx", np.array([1], np.int64))
        assert np.array_equal(rows_before[0], rows_after[0])
    finally:
        model.close()


def test_writer_waits_for_readers_and_blocks_new_ones() -> None:
    lock = ReadWriteLock()
    events: list[str] = []
    inside = threading.Event()
    release = threading.Event()

    def reader(name: str, hold: threading.Event | None) -> None:
        with lock.read():
            events.append(f"{name} in")
            inside.set()
            if hold is not None:
                hold.wait(5)
            events.append(f"{name} out")

    def writer() -> None:
        with lock.write():
            events.append("writer")

    first = threading.Thread(target=reader, args=("r1", release))
    first.start()
    assert inside.wait(5)
    w = threading.Thread(target=writer)
    w.start()
    while not lock._waiting_writers:
        time.sleep(0.001)
    second = threading.Thread(target=reader, args=("r2", None))
    second.start()
    time.sleep(0.05)
    assert events == ["r1 in"]  # the writer waits for r1; r2 waits behind the writer
    release.set()
    for t in (first, w, second):
        t.join(5)
    assert events == ["r1 in", "r1 out", "writer", "r2 in", "r2 out"]
