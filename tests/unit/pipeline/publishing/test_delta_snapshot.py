"""Snapshots: atomic commit, verification on read, signatures, retention."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from pipeline.publishing.chunks import Signer
from pipeline.publishing.errors import SnapshotError
from pipeline.publishing.snapshot import MANIFEST, SnapshotStore, snapshot_name

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def write(store: SnapshotStore, version: int, rows: int = 10) -> None:
    w = store.begin(version=version, store_version=version * 10, step_time=T0)
    ids = np.arange(rows, dtype=np.int64) + version
    w.add_rows("t", ids[: rows // 2], np.full((rows // 2, 3), version, np.float32))
    w.add_rows("t", ids[rows // 2 :], np.full((rows - rows // 2, 3), version, np.float32))
    w.add_table("empty", 2)
    w.set_state({"dense/w": np.arange(4, dtype=np.float32) * version})
    w.commit(topic="d", partition=0, next_offset=version * 3)


def test_snapshot_roundtrip(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    write(store, 4)
    info = store.newest()
    assert info is not None
    assert (info.version, info.store_version, info.next_offset, info.rows) == (4, 40, 12, 10)
    assert info.step_time == T0 and info.created_at.tzinfo is not None
    chunks = list(store.iter_rows(info, "t"))
    assert [len(i) for i, _ in chunks] == [5, 5]
    assert np.concatenate([i for i, _ in chunks]).tolist() == list(range(4, 14))
    assert all((e == 4).all() for _, e in chunks)
    assert list(store.iter_rows(info, "empty")) == []
    assert store.read_state(info)["dense/w"].tolist() == [0.0, 4.0, 8.0, 12.0]
    assert store.newest(above=4) is None and store.newest(above=3) is not None


def test_uncommitted_snapshots_are_invisible(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    write(store, 1)
    w = store.begin(version=2, store_version=20, step_time=T0)
    w.add_rows("t", np.array([1], np.int64), np.ones((1, 3), np.float32))
    w.set_state({})
    info = store.newest()
    assert info is not None and info.version == 1  # version 2 not committed
    w.abort()
    assert [p.name for p in tmp_path.iterdir()] == [snapshot_name(1)]


def test_retention_keeps_the_newest(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, retain=2)
    for v in (1, 2, 3, 4):
        write(store, v)
    assert sorted(p.name for p in tmp_path.iterdir()) == [snapshot_name(3), snapshot_name(4)]


def test_corrupted_file_is_refused(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    write(store, 7)
    info = store.newest()
    assert info is not None
    victim = info.path / info.tables["t"].files[1]
    data = bytearray(victim.read_bytes())
    data[-1] ^= 1
    victim.write_bytes(bytes(data))
    with pytest.raises(SnapshotError, match="differs from the manifest"):
        list(store.iter_rows(info, "t"))


def test_bad_manifests_are_skipped(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    write(store, 1)
    write(store, 2)
    (tmp_path / snapshot_name(2) / MANIFEST).write_text("{not json")
    info = store.newest()
    assert info is not None and info.version == 1


def test_signed_manifests(tmp_path: Path) -> None:
    signed = SnapshotStore(tmp_path, signer=Signer(b"k"))
    write(signed, 3)
    assert signed.newest() is not None
    assert SnapshotStore(tmp_path, signer=Signer(b"other")).newest() is None
    path = tmp_path / snapshot_name(3) / MANIFEST
    path.write_text(path.read_text().replace('"store_version": 30', '"store_version": 31'))
    assert signed.newest() is None
