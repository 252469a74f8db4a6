"""write_checkpoint: row files split at ``rows_per_file``, what full and incremental entries hold,
the temporary directory it commits by rename, and what a failed write leaves (nothing)."""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import numpy as np
import pytest

from embedding_store.admission import SIGHTING_DTYPE
from embedding_store.rows import RowLayout
from operators.checkpoint.chain import chain_dirname
from operators.checkpoint.dense_state import snapshot_dense
from operators.checkpoint.format import MANIFEST, CheckpointKind
from operators.checkpoint.snapshot import CheckpointSnapshot, TableSnapshot
from operators.checkpoint.writer import TMP_PREFIX, write_checkpoint
from operators.errors import CheckpointWriteError

LAYOUT = RowLayout(dim=2, state_dim=0)


def rows(ids: np.ndarray) -> np.ndarray:
    out = LAYOUT.empty(len(ids))
    out["emb"] = np.stack([ids, -ids], axis=1).astype(np.float32)
    return out


def snapshot(
    kind: CheckpointKind,
    blocks: list[np.ndarray],
    tombstones: np.ndarray | None = None,
    sightings: np.ndarray | None = None,
) -> CheckpointSnapshot:
    table = TableSnapshot(
        "t", 2, 0, [(b, rows(b)) for b in blocks], tombstones=tombstones, sightings=sightings
    )
    return CheckpointSnapshot(
        kind=kind,
        version=7,
        base_version=None if kind is CheckpointKind.FULL else 3,
        store_state={"version": 7},
        store_schema={},
        tables=(table,),
        dense=snapshot_dense({"w": np.arange(3, dtype=np.float32)}),
        offsets={"p": 1},
        config_hash="cfg",
        extra={},
    )


def ids(start: int, n: int) -> np.ndarray:
    return np.arange(start, start + n, dtype=np.int64)


def test_rows_are_split_into_files_of_rows_per_file(tmp_path: Path) -> None:
    blocks = [ids(0, 5), ids(100, 5), ids(200, 5)]
    manifest, _, path = write_checkpoint(
        str(tmp_path), snapshot(CheckpointKind.FULL, blocks), 1, 0, None, rows_per_file=4
    )
    (entry,) = manifest.tables
    assert [p.count for p in entry.parts] == [4, 4, 4, 3]
    got = [np.load(os.path.join(path, p.ids)) for p in entry.parts]
    assert [g.dtype for g in got] == [np.dtype(np.int64)] * 4
    assert np.array_equal(np.concatenate(got), np.concatenate(blocks))
    back = np.concatenate([np.load(os.path.join(path, p.rows)) for p in entry.parts])
    assert np.array_equal(back["emb"], rows(np.concatenate(blocks))["emb"])
    # a block exactly one file long, and a default of a million rows per file
    manifest, _, _ = write_checkpoint(
        str(tmp_path), snapshot(CheckpointKind.FULL, [ids(0, 4)]), 1, 1, None, rows_per_file=4
    )
    assert [p.count for p in manifest.tables[0].parts] == [4]
    assert inspect.signature(write_checkpoint).parameters["rows_per_file"].default == 1 << 20


def test_a_full_entry_has_no_tombstones_and_no_sightings_unless_given(tmp_path: Path) -> None:
    manifest, _, path = write_checkpoint(
        str(tmp_path), snapshot(CheckpointKind.FULL, [ids(0, 3)]), 1, 0, None
    )
    (entry,) = manifest.tables
    assert (entry.tombstones, entry.tombstone_count) == (None, 0)
    assert (entry.sightings, entry.sighting_count) == (None, 0)
    assert sorted(os.listdir(path)) == sorted([*manifest.files, MANIFEST])
    assert manifest.kind is CheckpointKind.FULL and manifest.base_version is None


def test_an_incremental_entry_always_has_a_tombstone_file(tmp_path: Path) -> None:
    manifest, _, path = write_checkpoint(
        str(tmp_path), snapshot(CheckpointKind.INCREMENTAL, [ids(0, 2)]), 1, 1, "000001-0000"
    )
    (entry,) = manifest.tables
    assert entry.tombstones is not None and entry.tombstone_count == 0
    empty = np.load(os.path.join(path, entry.tombstones))
    assert (empty.dtype, empty.shape) == (np.dtype(np.int64), (0,))
    tomb = np.array([9, 4], dtype=np.int32)  # any integer dtype given is stored as int64
    seen = np.zeros(3, dtype=SIGHTING_DTYPE)
    seen["id"] = [5, 6, 7]
    seen["count"] = [1, 2, 1]
    manifest, _, path = write_checkpoint(
        str(tmp_path),
        snapshot(CheckpointKind.INCREMENTAL, [ids(0, 2)], tombstones=tomb, sightings=seen),
        1,
        2,
        "000001-0001",
    )
    (entry,) = manifest.tables
    assert entry.tombstone_count == 2 and entry.sighting_count == 3
    assert entry.tombstones is not None and entry.sightings is not None
    stored = np.load(os.path.join(path, entry.tombstones))
    assert stored.dtype == np.int64 and stored.tolist() == [9, 4]
    stored_seen = np.load(os.path.join(path, entry.sightings))
    assert stored_seen.dtype == SIGHTING_DTYPE
    assert stored_seen["id"].tolist() == [5, 6, 7] and stored_seen["count"].tolist() == [1, 2, 1]
    assert manifest.parent == "000001-0001" and manifest.base_version == 3


def test_files_are_written_in_a_temporary_directory_then_renamed(tmp_path: Path) -> None:
    seen: list[str] = []
    manifest, sha, path = write_checkpoint(
        str(tmp_path),
        snapshot(CheckpointKind.FULL, [ids(0, 3)]),
        2,
        5,
        None,
        file_hook=seen.append,
    )
    assert path == os.path.join(str(tmp_path), chain_dirname(2), "ckpt-0005")
    dirs = {os.path.basename(os.path.dirname(p)) for p in seen}
    assert len(dirs) == 1 and next(iter(dirs)).startswith(TMP_PREFIX)
    assert [os.path.basename(p) for p in seen][-1] == MANIFEST
    assert sorted(os.path.basename(p) for p in seen) == sorted([*manifest.files, MANIFEST])
    assert [n for n in os.listdir(tmp_path) if n.startswith(TMP_PREFIX)] == []
    assert manifest.id == "000002-0005" and len(sha) == 64


def test_a_failed_write_raises_naming_the_file_and_leaves_nothing(tmp_path: Path) -> None:
    def fail_on_rows(path: str) -> None:
        if path.endswith(".rows.npy"):
            raise OSError(28, "No space left on device", path)

    with pytest.raises(CheckpointWriteError) as err:
        write_checkpoint(
            str(tmp_path),
            snapshot(CheckpointKind.FULL, [ids(0, 3)]),
            1,
            0,
            None,
            file_hook=fail_on_rows,
        )
    assert err.value.path.endswith("rows-t-0000.rows.npy")
    assert os.path.basename(os.path.dirname(err.value.path)).startswith(TMP_PREFIX)
    assert "No space left on device" in str(err.value)
    assert os.listdir(tmp_path) == []  # the temporary directory is gone, no checkpoint


def test_a_failure_without_a_file_name_names_the_temporary_directory(tmp_path: Path) -> None:
    def fail(path: str) -> None:
        raise OSError(5, "I/O error")

    with pytest.raises(CheckpointWriteError) as err:
        write_checkpoint(
            str(tmp_path), snapshot(CheckpointKind.FULL, [ids(0, 3)]), 1, 0, None, file_hook=fail
        )
    assert os.path.dirname(err.value.path) == str(tmp_path)
    assert os.path.basename(err.value.path).startswith(TMP_PREFIX)
    assert os.listdir(tmp_path) == []


def test_a_directory_left_at_the_final_place_is_replaced(tmp_path: Path) -> None:
    final = tmp_path / chain_dirname(1) / "ckpt-0000"
    final.mkdir(parents=True)
    (final / "stale.npy").write_bytes(b"x")
    manifest, _, path = write_checkpoint(
        str(tmp_path), snapshot(CheckpointKind.FULL, [ids(0, 3)]), 1, 0, None
    )
    assert path == str(final)
    assert sorted(os.listdir(path)) == sorted([*manifest.files, MANIFEST])
