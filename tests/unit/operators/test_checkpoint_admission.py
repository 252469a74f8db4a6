"""Crash-exactness with admission and expiry on: a restored store continues bit-identically.

Sighting counts of ids not admitted yet are training state (issue 17, defect 9): without them
a restarted job admits ids later than the job that never stopped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embedding_store import EmbeddingStore, OptimizerConfig, StoreConfig, TableConfig
from operators.checkpoint.manager import CheckpointManager
from tests.conftest import zipf_ids
from tests.unit.operators.conftest import assert_same_contents, store_contents

STEPS = 40
TABLES = (
    TableConfig(
        "a",
        4,
        OptimizerConfig("rowwise_adagrad", lr=0.1),
        hot_rows=20,
        admit_after=3,
        expire_after_steps=7,
    ),
    TableConfig("b", 2, OptimizerConfig("sgd", lr=0.2), admit_after=2, expire_after_seconds=9.5),
)
STREAM = [
    {t.name: zipf_ids(np.random.default_rng(i), 32, 200) for t in TABLES} for i in range(STEPS)
]


class StepClock:
    """Seconds are steps: 1000 + the store's version."""

    def __init__(self) -> None:
        self.store: EmbeddingStore | None = None

    def __call__(self) -> float:
        return 1000.0 + (self.store.version if self.store is not None else 0)


def _open(path: Path) -> EmbeddingStore:
    clock = StepClock()
    store = EmbeddingStore(StoreConfig(str(path), TABLES, num_shards=2), clock=clock)
    clock.store = store
    return store.open()


def _train(store: EmbeddingStore, start: int, stop: int) -> None:
    ahead = store.prefetch(STREAM[start : start + 2]) if start < stop else None
    for i in range(start, stop):
        for name, ids in STREAM[i].items():
            emb = store.lookup(name, ids).numpy()
            store.apply_gradients(
                name, ids, (emb * 0.5 + 0.01 * (ids % 5)[:, None]).astype(np.float32)
            )
        store.end_step()
        if store.version % 4 == 0:
            store.expire()
    if ahead is not None:
        ahead.release()


@pytest.mark.parametrize("compact", [False, True])
def test_restore_then_continue_equals_the_uninterrupted_run(tmp_path: Path, compact: bool) -> None:
    with _open(tmp_path / "ref") as ref:
        _train(ref, 0, STEPS)
        want = store_contents(ref)
        want_seen = {t.name: ref.sightings(t.name) for t in TABLES}
    assert all(len(s) for s in want_seen.values())

    manager = CheckpointManager(str(tmp_path / "ckpt"))
    crashed = _open(tmp_path / "crashed")
    _train(crashed, 0, 15)
    manager.write_full(crashed)
    _train(crashed, 15, 26)
    info = manager.write_incremental(crashed)
    _train(crashed, 26, 30)  # lost with the crash
    crashed.abandon()
    if compact:
        manager.compact()

    with _open(tmp_path / "restored") as restored:
        state = manager.restore(restored)
        assert state.version == info.version == 26
        _train(restored, 26, STEPS)
        got = store_contents(restored)
        got_seen = {t.name: restored.sightings(t.name) for t in TABLES}
    assert_same_contents(got, want)
    for name, seen in want_seen.items():
        assert np.array_equal(got_seen[name], seen), name
    manager.close()


def test_the_checkpoint_lists_and_verifies_its_sightings_file(tmp_path: Path) -> None:
    manager = CheckpointManager(str(tmp_path / "ckpt"))
    with _open(tmp_path / "s") as store:
        _train(store, 0, 3)
        want = store.sightings("a")
        info = manager.write_full(store)
    reader = manager.reader(info.id)
    entry = reader.manifest().table("a")
    assert entry is not None and entry.sightings == "seen-a.npy"
    assert entry.sighting_count == len(want) > 0
    assert np.array_equal(reader.sightings(entry), want)
    path = Path(reader.path) / "seen-a.npy"
    path.write_bytes(path.read_bytes()[:-8] + b"\0" * 8)
    problems = manager.verify(info.id)
    assert [p.file for p in problems] == ["seen-a.npy"]
