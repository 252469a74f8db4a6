"""The publisher with an in-memory sink: versions, bases, snapshots, failures, delta size."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from embedding_store import EmbeddingStore, OptimizerConfig, StoreConfig, TableConfig
from pipeline.publishing.array_patch import ArrayPatch
from pipeline.publishing.chunks import ChunkAssembler, highest_version
from pipeline.publishing.delta import ModelDelta
from pipeline.publishing.errors import PublishError
from pipeline.publishing.publisher import Publisher, PublisherSettings
from pipeline.publishing.snapshot import SnapshotStore


class MemorySink:
    """Keeps every message; offsets count from zero; can be told to fail."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.fail = False

    def send(self, messages: Sequence[bytes]) -> int | None:
        if self.fail:
            raise PublishError("injected failure")
        self.messages += messages
        return len(self.messages) - 1

    def last_version(self) -> int | None:
        return highest_version(self.messages)

    def close(self) -> None:
        pass

    def deltas(self) -> list[ModelDelta]:
        assembler = ChunkAssembler()
        out = []
        for m in self.messages:
            done = assembler.add(m)
            if done is not None:
                out.append(ModelDelta.from_bytes(done.payload))
        return out


def open_store(path: Path, rows: int = 0, dim: int = 8, **table: object) -> EmbeddingStore:
    cfg = StoreConfig(
        str(path), (TableConfig("t", dim, OptimizerConfig("sgd", lr=0.1), **table),), num_shards=2
    )
    store = EmbeddingStore(cfg).open()
    for start in range(0, rows, 50_000):
        train(store, np.arange(start, min(rows, start + 50_000), dtype=np.int64))
    return store


def train(store: EmbeddingStore, ids: np.ndarray) -> None:
    emb = store.lookup("t", ids)
    store.apply_gradients("t", ids, np.ones_like(emb.numpy()))
    store.end_step()


def publisher(tmp: Path, sink: MemorySink, **settings: object) -> Publisher:
    s = PublisherSettings(topic="d", snapshot_interval_s=None, **settings)  # type: ignore[arg-type]
    return Publisher("unused:9092", "d", tmp / "snaps", settings=s, sink=sink).start()


DENSE = {"w": np.zeros(3, np.float32)}


def test_versions_chain_and_carry_the_rows_written(tmp_path: Path) -> None:
    sink = MemorySink()
    store = open_store(tmp_path / "s", rows=100)
    pub = publisher(tmp_path, sink, snapshot_every=100)
    first = pub.publish(store, DENSE, {})
    assert first is not None and first.base is None and first.snapshot and first.rows == 0
    assert first.snapshot_rows == 100 and first.next_offset == len(sink.messages)
    assert pub.publish(store, DENSE, {}) is None  # nothing trained since
    train(store, np.array([3, 5, 7], np.int64))
    second = pub.publish(store, {"w": np.ones(3, np.float32)}, {})
    assert second is not None and (second.version, second.base) == (2, 1)
    assert not second.snapshot and second.rows == 3
    deltas = sink.deltas()
    assert [(d.version, d.base) for d in deltas] == [(1, None), (2, 1)]
    assert deltas[1].tables[0].ids.tolist() == [3, 5, 7]
    found, rows = store.read_rows("t", np.array([3, 5, 7], np.int64))
    assert found.all() and np.array_equal(deltas[1].tables[0].emb, rows["emb"])
    assert np.array_equal(deltas[1].state["dense/w"], np.ones(3))  # type: ignore[arg-type]
    snap = SnapshotStore(tmp_path / "snaps").newest()
    assert snap is not None and snap.version == 1 and snap.next_offset == first.next_offset


def test_tombstones_reach_the_delta(tmp_path: Path) -> None:
    sink = MemorySink()
    store = open_store(tmp_path / "s", rows=10, expire_after_steps=1)
    pub = publisher(tmp_path, sink)
    pub.publish(store, DENSE, {})
    train(store, np.array([1, 2], np.int64))
    train(store, np.array([1, 2], np.int64))
    expired = store.expire()["t"]
    assert len(expired) == 8
    report = pub.publish(store, DENSE, {})
    assert report is not None and report.tombstones == 8 and report.rows == 2
    # expire at the boundary right after a publish: the tombstones still reach the next delta
    train(store, np.array([1], np.int64))
    train(store, np.array([1], np.int64))
    pub.publish(store, DENSE, {})
    later = store.expire()["t"]
    assert later.tolist() == [2]
    train(store, np.array([1], np.int64))
    report = pub.publish(store, DENSE, {})
    assert report is not None and 2 in sink.deltas()[-1].tables[0].tombstones.tolist()


def test_snapshots_every_k_and_retention(tmp_path: Path) -> None:
    sink = MemorySink()
    store = open_store(tmp_path / "s", rows=10)
    pub = publisher(tmp_path, sink, snapshot_every=3, retain_snapshots=2)
    snaps = []
    for i in range(8):
        train(store, np.array([i], np.int64))
        report = pub.publish(store, DENSE, {})
        assert report is not None
        snaps.append(report.snapshot)
    assert snaps == [True, False, False, True, False, False, True, False]
    kept = [s.version for s in SnapshotStore(tmp_path / "snaps").available()]
    assert kept == [7, 4]


def test_a_failed_send_never_reuses_its_version(tmp_path: Path) -> None:
    sink = MemorySink()
    store = open_store(tmp_path / "s", rows=10)
    pub = publisher(tmp_path, sink, snapshot_every=100)
    pub.publish(store, DENSE, {})
    train(store, np.array([1], np.int64))
    sink.fail = True
    with pytest.raises(PublishError):
        pub.publish(store, DENSE, {})
    sink.fail = False
    train(store, np.array([2], np.int64))
    report = pub.publish(store, DENSE, {})
    assert report is not None
    # version 2 is burnt; 3 builds on 1 and carries both steps' rows; a snapshot follows
    assert (report.version, report.base, report.rows, report.snapshot) == (3, 1, 2, True)
    assert [s.version for s in SnapshotStore(tmp_path / "snaps").available()] == [3, 1]


def test_numbering_continues_after_a_restart(tmp_path: Path) -> None:
    store = open_store(tmp_path / "s", rows=10)
    pub = publisher(tmp_path, MemorySink(), snapshot_every=100)
    for i in range(3):
        train(store, np.array([i], np.int64))
        pub.publish(store, DENSE, {})
    # a new run on an empty topic continues after the newest snapshot (v1) ...
    again = publisher(tmp_path, MemorySink())
    report = again.publish(store, DENSE, {})
    assert report is not None and (report.version, report.base) == (2, None)
    # ... or after the topic's newest version, whichever is higher
    sink = MemorySink()
    sink.messages = list(pub._sink.messages)  # type: ignore[union-attr]
    third = publisher(tmp_path / "other", sink)
    first = third.publish(store, DENSE, {})
    assert first is not None and (first.version, first.base) == (4, None)


@pytest.mark.parametrize("changed", [10, 1000])
def test_delta_bytes_follow_rows_changed_not_table_size(tmp_path: Path, changed: int) -> None:
    sizes = {}
    for table_rows in (2_000, 100_000):
        sink = MemorySink()
        store = open_store(tmp_path / f"s{table_rows}-{changed}", rows=table_rows)
        pub = publisher(tmp_path / f"p{table_rows}-{changed}", sink)
        pub.publish(store, DENSE, {})
        train(store, np.arange(changed, dtype=np.int64) * 7)
        report = pub.publish(store, DENSE, {})
        assert report is not None and report.rows == changed
        sizes[table_rows] = report.bytes
        store.close()
    payload = changed * (8 + 8 * 4)  # id + 8 floats per row
    assert payload <= sizes[2_000] <= payload + 4096
    assert abs(sizes[100_000] - sizes[2_000]) <= 64


def test_featurizer_state_travels_as_a_patch(tmp_path: Path) -> None:
    sink = MemorySink()
    store = open_store(tmp_path / "s", rows=10)
    pub = publisher(tmp_path, sink)
    stats = np.zeros((3, 50_000, 7))
    pub.publish(store, DENSE, {"agg.stats": stats})
    stats = stats.copy()
    stats[:, 123] = 1.0
    stats = np.concatenate([stats, np.ones((3, 2, 7))], axis=1)  # two new entities
    train(store, np.array([1], np.int64))
    report = pub.publish(store, DENSE, {"agg.stats": stats})
    assert report is not None and report.bytes < 2000
    patch = sink.deltas()[-1].state["featurizer/agg.stats"]
    assert isinstance(patch, ArrayPatch)
    assert patch.index.tolist() == [123, 50_000, 50_001]
