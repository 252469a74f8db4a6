"""Checkpoint snapshots: what a capture copies, row counts while streaming, tombstones, errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from embedding_store import EmbeddingStore, OptimizerConfig, StoreConfig, TableConfig
from operators.checkpoint.format import CheckpointKind
from operators.checkpoint.snapshot import (
    CheckpointSnapshot,
    TableSnapshot,
    capture_full,
    capture_incremental,
)
from tests.unit.operators.conftest import train_step

TABLES = (TableConfig("t", 2, OptimizerConfig("sgd", lr=0.1), expire_after_steps=2),)


def store_at(path: Path) -> EmbeddingStore:
    return EmbeddingStore(StoreConfig(str(path), TABLES, num_shards=2))


def full(store: EmbeddingStore, **kw: object) -> CheckpointSnapshot:
    args: dict[str, object] = {"config_hash": "h", "extra": {"e": 1}, "materialize": True}
    args.update(kw)
    offsets = args.pop("offsets", {"p/0": 5})
    with store.step_boundary():
        return capture_full(store, {"w": np.ones(2, np.float32)}, offsets, **args)  # type: ignore[arg-type]


def test_table_snapshot_defaults_and_row_counts() -> None:
    ids = np.arange(3, dtype=np.int64)
    listed = TableSnapshot("t", 2, 0, [(ids, ids), (ids[:1], ids[:1])])
    assert (listed.tombstones, listed.sightings, listed.rows) == (None, None, 4)
    streaming = TableSnapshot("t", 2, 0, iter([(ids, ids)]))
    assert streaming.rows == -1
    with pytest.raises(dataclasses.FrozenInstanceError):
        listed.name = "u"  # type: ignore[misc]
    snap = CheckpointSnapshot(
        CheckpointKind.FULL, 1, None, {}, {}, (listed, listed), {}, {}, "", {}
    )
    assert (snap.rows, snap.capture_seconds) == (8, 0.0)
    assert dataclasses.replace(snap, tables=(listed, streaming)).rows == -1
    assert dataclasses.replace(snap, tables=()).rows == 0
    empty = TableSnapshot("t", 2, 0, [])
    assert empty.rows == 0 and dataclasses.replace(snap, tables=(empty, listed)).rows == 4
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.version = 2  # type: ignore[misc]


def test_a_capture_copies_what_it_is_given(tmp_path: Path) -> None:
    with store_at(tmp_path / "s") as store:
        train_step(store, "t", np.array([1, 2, 3], dtype=np.int64))
        store.end_step()
        offsets = {"p/0": 5}
        extra = {"nested": {"k": [1, 2]}}
        snap = full(store, offsets=offsets, extra=extra)
        offsets["p/0"] = 99
        extra["nested"]["k"].append(3)  # type: ignore[index]
        assert snap.offsets == {"p/0": 5} and snap.extra == {"nested": {"k": [1, 2]}}
        assert snap.store_state["version"] == store.version == snap.version
        assert snap.kind is CheckpointKind.FULL and snap.base_version is None
        assert snap.rows == 3 and snap.config_hash == "h"
        assert 0.0 < snap.capture_seconds < 3600.0  # a duration, not a clock reading
        streaming = full(store, materialize=False)
        assert streaming.rows == -1


@pytest.mark.parametrize(
    ("kw", "what"),
    [({"offsets": {"p/0": float("nan")}}, "offsets"), ({"extra": {"x": object()}}, "extra")],
)
def test_state_that_is_not_json_is_refused_by_name(
    tmp_path: Path, kw: dict[str, object], what: str
) -> None:
    with store_at(tmp_path / "s") as store:
        with pytest.raises(TypeError) as err:
            full(store, **kw)
        assert str(err.value).startswith(f"checkpoint {what} must be JSON-serializable: ")


def test_an_increment_holds_rows_written_since_and_tombstones_of_ids_gone(tmp_path: Path) -> None:
    with store_at(tmp_path / "s") as store:
        for _ in range(2):
            train_step(store, "t", np.array([1, 2, 3, 4], dtype=np.int64))
            store.end_step()
        base = full(store).version
        for _ in range(3):
            train_step(store, "t", np.array([10, 11], dtype=np.int64))
            store.end_step()
        gone = store.expire()["t"]
        assert sorted(gone.tolist()) == [1, 2, 3, 4]
        train_step(store, "t", np.array([3], dtype=np.int64))  # 3 comes back: not a tombstone
        store.end_step()
        with store.step_boundary():
            inc = capture_incremental(store, base, {}, {"p/0": 9}, config_hash="h", extra={})
        (table,) = inc.tables
        ids = np.concatenate([i for i, _ in table.blocks])
        assert sorted(ids.tolist()) == [3, 10, 11]
        assert table.tombstones is not None and sorted(table.tombstones.tolist()) == [1, 2, 4]
        assert inc.kind is CheckpointKind.INCREMENTAL and inc.base_version == base
        assert 0.0 < inc.capture_seconds < 3600.0


def test_an_expiry_at_the_base_boundary_is_a_tombstone_of_the_next_increment(
    tmp_path: Path,
) -> None:
    with store_at(tmp_path / "s") as store:
        train_step(store, "t", np.array([1, 2], dtype=np.int64))
        store.end_step()
        for _ in range(3):
            train_step(store, "t", np.array([7], dtype=np.int64))
            store.end_step()
        base = full(store).version
        gone = store.expire()["t"]  # at the base's own boundary, after it was captured
        assert sorted(gone.tolist()) == [1, 2]
        train_step(store, "t", np.array([7], dtype=np.int64))
        store.end_step()
        with store.step_boundary():
            inc = capture_incremental(store, base, {}, {}, config_hash="h", extra={})
        (table,) = inc.tables
        assert table.tombstones is not None and sorted(table.tombstones.tolist()) == [1, 2]


def test_ids_expired_before_the_base_are_not_tombstones_again(tmp_path: Path) -> None:
    with store_at(tmp_path / "s") as store:
        train_step(store, "t", np.array([1, 2], dtype=np.int64))
        store.end_step()
        for _ in range(3):
            train_step(store, "t", np.array([7], dtype=np.int64))
            store.end_step()
        assert sorted(store.expire()["t"].tolist()) == [1, 2]
        train_step(store, "t", np.array([7], dtype=np.int64))
        store.end_step()
        base = full(store).version  # the base already lacks 1 and 2
        train_step(store, "t", np.array([7], dtype=np.int64))
        store.end_step()
        with store.step_boundary():
            inc = capture_incremental(store, base, {}, {}, config_hash="h", extra={})
        (table,) = inc.tables
        assert table.tombstones is not None and table.tombstones.tolist() == []
