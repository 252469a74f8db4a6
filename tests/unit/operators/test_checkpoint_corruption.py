"""A corrupt, missing or partial checkpoint is reported and skipped for the previous good one."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

from embedding_store import EmbeddingStore, OptimizerConfig, StoreConfig, TableConfig
from operators.checkpoint.chain import CheckpointInfo
from operators.checkpoint.durable_io import sha256_file
from operators.checkpoint.manager import CheckpointManager
from operators.errors import (
    ChecksumMismatchError,
    CorruptCheckpointError,
    NoCompleteCheckpointError,
    StoreNotEmptyError,
)
from tests.unit.operators.conftest import assert_same_contents, store_contents, train_step

TABLES = (TableConfig("t", 4, OptimizerConfig("adagrad", lr=0.1), hot_rows=8),)


def config(path: Path) -> StoreConfig:
    return StoreConfig(str(path), TABLES, num_shards=2)


def build_chain(tmp_path: Path, manager: CheckpointManager) -> tuple[list[CheckpointInfo], list]:  # type: ignore[type-arg]
    """A full checkpoint and two increments, with the store's contents at each."""
    infos, contents = [], []
    rng = np.random.default_rng(3)
    with EmbeddingStore(config(tmp_path / "store")) as store:
        for k in range(3):
            for _ in range(3):
                train_step(store, "t", rng.integers(0, 60, 20).astype(np.int64))
                store.end_step()
            write = manager.write_full if k == 0 else manager.write_incremental
            infos.append(write(store, {"w": np.full(2, k, np.float32)}, {"p": k}, "cfg"))
            contents.append(store_contents(store))
    return infos, contents


def flip_byte(path: str, offset: int = -3) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset, os.SEEK_END)
        b = fh.read(1)
        fh.seek(offset, os.SEEK_END)
        fh.write(bytes([b[0] ^ 0xFF]))


def ckpt_file(manager: CheckpointManager, info: CheckpointInfo, name: str) -> str:
    return os.path.join(manager.root, info.relpath, name)


def test_flipped_byte_is_reported_and_latest_falls_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manager = CheckpointManager(str(tmp_path / "ckpt"))
    infos, contents = build_chain(tmp_path, manager)
    assert manager.latest_complete() == infos[2]
    target = ckpt_file(manager, infos[2], "rows-t-0000.rows.npy")
    expected_sha = sha256_file(target)
    flip_byte(target)
    actual_sha = sha256_file(target)

    problems = manager.verify(infos[2].id)
    assert len(problems) == 1
    p = problems[0]
    assert (p.checkpoint, p.file) == (infos[2].id, "rows-t-0000.rows.npy")
    assert (p.expected, p.actual) == (expected_sha, actual_sha)
    assert manager.verify(infos[1].id) == []

    with caplog.at_level(logging.WARNING, logger="operators.checkpoint.manager"):
        assert manager.latest_complete() == infos[1]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "rows-t-0000.rows.npy" in warnings[0]
    assert expected_sha in warnings[0] and actual_sha in warnings[0]
    assert infos[1].id in warnings[0]

    with EmbeddingStore(config(tmp_path / "fresh")) as fresh:
        state = manager.restore(fresh)
        assert (state.checkpoint, state.offsets) == (infos[1].id, {"p": 1})
        assert_same_contents(store_contents(fresh), contents[1])
    with (
        EmbeddingStore(config(tmp_path / "fresh2")) as fresh,
        pytest.raises(ChecksumMismatchError, match=r"rows-t-0000\.rows\.npy"),
    ):
        manager.restore(fresh, infos[2].id)


def test_corrupt_base_falls_back_to_the_previous_chain(tmp_path: Path) -> None:
    manager = CheckpointManager(str(tmp_path / "ckpt"))
    old, old_contents = build_chain(tmp_path / "a", manager)
    new, _ = build_chain(tmp_path / "b", manager)
    flip_byte(ckpt_file(manager, new[0], "manifest.json"), offset=-10)
    problems = manager.verify(new[2].id)
    assert [(p.checkpoint, p.file) for p in problems] == [(new[0].id, "manifest.json")]
    assert manager.latest_complete() == old[2]
    with EmbeddingStore(config(tmp_path / "fresh")) as fresh:
        assert manager.restore(fresh).checkpoint == old[2].id
        assert_same_contents(store_contents(fresh), old_contents[2])


def test_missing_and_truncated_files_are_reported(tmp_path: Path) -> None:
    manager = CheckpointManager(str(tmp_path / "ckpt"))
    infos, _ = build_chain(tmp_path, manager)
    os.unlink(ckpt_file(manager, infos[1], "tomb-t.npy"))
    with open(ckpt_file(manager, infos[2], "dense.safetensors"), "r+b") as fh:
        fh.truncate(10)
    assert [p.file for p in manager.verify(infos[1].id)] == ["tomb-t.npy"]
    assert "missing" in manager.verify(infos[1].id)[0].message
    assert [p.file for p in manager.verify(infos[2].id, with_chain=False)] == ["dense.safetensors"]
    assert manager.latest_complete() == infos[0]
    with (
        EmbeddingStore(config(tmp_path / "fresh")) as fresh,
        pytest.raises(CorruptCheckpointError, match=r"tomb-t\.npy"),
    ):
        manager.restore(fresh, infos[1].id)


def test_partial_writes_are_invisible_and_cleaned_up(tmp_path: Path) -> None:
    manager = CheckpointManager(str(tmp_path / "ckpt"))
    infos, _ = build_chain(tmp_path, manager)
    # what a writer killed mid-way leaves: a temporary dir, an unlisted renamed dir
    tmp_dir = tmp_path / "ckpt" / ".tmp-deadbeef"
    tmp_dir.mkdir()
    (tmp_dir / "rows-t-0000.ids.npy").write_bytes(b"\x93NUMPY partial")
    unlisted = tmp_path / "ckpt" / "chain-000001" / "ckpt-0003"
    unlisted.mkdir()
    (unlisted / "manifest.json").write_text("{")
    assert [c.id for c in manager.list()] == [i.id for i in infos]
    assert manager.latest_complete() == infos[2]
    with EmbeddingStore(config(tmp_path / "store2")) as store:
        train_step(store, "t", np.arange(5, dtype=np.int64))
        store.end_step()
        manager.write_full(store)
    assert not tmp_dir.exists()
    assert not unlisted.exists()


def test_restore_refuses_a_non_empty_store_unless_cleared(tmp_path: Path) -> None:
    manager = CheckpointManager(str(tmp_path / "ckpt"))
    _, contents = build_chain(tmp_path, manager)
    with EmbeddingStore(config(tmp_path / "other")) as other:
        train_step(other, "t", np.arange(100, 140, dtype=np.int64))
        other.end_step()
        with pytest.raises(StoreNotEmptyError, match="table 't' holds 40 rows"):
            manager.restore(other)
        manager.restore(other, clear=True)
        assert_same_contents(store_contents(other), contents[2])


def test_empty_directory_has_no_complete_checkpoint(tmp_path: Path) -> None:
    manager = CheckpointManager(str(tmp_path / "nothing"))
    assert manager.list() == ()
    assert manager.latest_complete() is None
    with EmbeddingStore(config(tmp_path / "s")) as store, pytest.raises(NoCompleteCheckpointError):
        manager.restore(store)
