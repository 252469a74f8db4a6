"""A lost or damaged ``chains.json`` is rebuilt from the checkpoints (issue 17, defect 11)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

from embedding_store import EmbeddingStore, StoreConfig, TableConfig
from operators.checkpoint.chain import CHAINS_FILE
from operators.checkpoint.chain_recovery import chain_dirs, rebuild_index
from operators.checkpoint.manager import CheckpointManager
from tests.unit.operators.conftest import assert_same_contents, store_contents, train_step

TABLES = (TableConfig("t", 3),)


def _checkpoints(tmp_path: Path) -> tuple[CheckpointManager, dict, list]:
    manager = CheckpointManager(str(tmp_path / "ckpt"), retention=3)
    with EmbeddingStore(StoreConfig(str(tmp_path / "a"), TABLES, num_shards=2)) as store:
        for step in range(6):
            train_step(store, "t", np.arange(step, step + 5, dtype=np.int64))
            store.end_step()
            if step in (0, 3):
                manager.write_full(store, {"w": np.full(2, step, np.float32)}, {"p": step})
            else:
                manager.write_incremental(store, {"w": np.full(2, step, np.float32)}, {"p": step})
        want = store_contents(store)
    return manager, want, [(c.id, c.kind, c.version, c.manifest_sha256) for c in manager.list()]


def _damage(root: Path, how: str) -> None:
    path = root / CHAINS_FILE
    if how == "deleted":
        path.unlink()
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:40])
    elif how == "empty":
        path.write_bytes(b"")
    else:
        path.write_text('{"format": 1, "chains": 3}')


@pytest.mark.parametrize("how", ["deleted", "truncated", "empty", "malformed"])
def test_a_lost_chain_manifest_is_rebuilt_from_the_checkpoints(tmp_path: Path, how: str) -> None:
    manager, want, listed = _checkpoints(tmp_path)
    assert [c[0] for c in listed] == [
        "000001-0000",
        "000001-0001",
        "000001-0002",
        "000002-0000",
        "000002-0001",
        "000002-0002",
    ]
    _damage(tmp_path / "ckpt", how)
    fresh = CheckpointManager(str(tmp_path / "ckpt"), retention=3)
    assert [(c.id, c.kind, c.version, c.manifest_sha256) for c in fresh.list()] == listed
    assert (tmp_path / "ckpt" / CHAINS_FILE).exists()  # written back
    latest = fresh.latest_complete()
    assert latest is not None and latest.id == "000002-0002"
    with EmbeddingStore(StoreConfig(str(tmp_path / "b"), TABLES, num_shards=2)) as store:
        state = fresh.restore(store)
        assert_same_contents(store_contents(store), want)
    assert state.version == 6 and state.offsets == {"p": 5}
    assert state.dense["w"].tolist() == [5.0, 5.0]
    # the next commit keeps the old chains and numbers the new one after them
    with EmbeddingStore(StoreConfig(str(tmp_path / "c"), TABLES, num_shards=2)) as store:
        info = fresh.write_full(store)
    assert info.id == "000003-0000"
    assert sorted(os.listdir(tmp_path / "ckpt" / "chain-000001")) == [
        "ckpt-0000",
        "ckpt-0001",
        "ckpt-0002",
    ]
    manager.close()
    fresh.close()


def test_the_rebuilt_index_stops_each_chain_at_its_first_bad_checkpoint(tmp_path: Path) -> None:
    manager, _, listed = _checkpoints(tmp_path)
    root = tmp_path / "ckpt"
    bad = root / "chain-000002" / "ckpt-0001" / "dense.safetensors"
    bad.write_bytes(bad.read_bytes()[:-4] + b"\x01\x02\x03\x04")
    (root / "chain-000001" / "ckpt-0000" / "rows-t-0000.rows.npy").unlink()  # chain 1's base
    (root / CHAINS_FILE).unlink()
    fresh = CheckpointManager(str(root))
    assert [c.id for c in fresh.list()] == ["000002-0000"]
    assert fresh.chains()[0].id == 2
    latest = fresh.latest_complete()
    assert latest is not None and latest.version == listed[3][2]
    manager.close()


def test_no_chain_directories_means_an_empty_root(tmp_path: Path) -> None:
    manager = CheckpointManager(str(tmp_path / "none"))
    assert manager.list() == ()
    assert not (tmp_path / "none" / CHAINS_FILE).exists()


def test_the_rebuilt_listing_equals_the_lost_one_field_by_field(tmp_path: Path) -> None:
    manager, _, _ = _checkpoints(tmp_path)
    compacted = manager.compact()  # chain 3: a compaction of chain 2's tip
    before = manager.list()
    assert compacted.compacted_from == "000002-0002" and before[-1] == compacted
    (tmp_path / "ckpt" / CHAINS_FILE).unlink()
    fresh = CheckpointManager(str(tmp_path / "ckpt"), retention=3)
    assert fresh.list() == before  # bytes, rows, created_at, parent, compacted_from too
    assert fresh._index().next_chain == 4
    manager.close()


def test_each_chain_cut_short_is_said_once_and_its_number_is_not_reused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manager, _, listed = _checkpoints(tmp_path)
    root = tmp_path / "ckpt"
    with EmbeddingStore(StoreConfig(str(tmp_path / "x"), TABLES, num_shards=2)) as store:
        train_step(store, "t", np.arange(3, dtype=np.int64))
        store.end_step()
        third = manager.write_full(store)  # chain 3
    assert third.id == "000003-0000"
    # chain 2 loses its second checkpoint (the third follows a bad one), chain 3 its base
    (root / "chain-000002" / "ckpt-0001" / "manifest.json").write_text("{}", encoding="utf-8")
    (root / "chain-000003" / "ckpt-0000" / "manifest.json").unlink()
    (root / CHAINS_FILE).unlink()
    with caplog.at_level(logging.WARNING, logger="operators.checkpoint.chain_recovery"):
        rebuilt = rebuild_index(str(root))
    assert [i.id for i in rebuilt.all()] == [c[0] for c in listed[:4]]
    chains_json = os.path.join(str(root), CHAINS_FILE)
    assert [r.getMessage() for r in caplog.records] == [
        f"rebuilding {chains_json}: {root / 'chain-000002'}/ckpt-0001 does not verify or does "
        f"not follow 000002-0000; chain 2 ends before it",
        f"rebuilding {chains_json}: {root / 'chain-000003'}/ckpt-0000 does not verify or does "
        "not follow a full checkpoint; chain 3 ends before it",
    ]
    # chain 3's directory is still there: the next chain is 4, not 3 again
    assert rebuilt.next_chain == 4
    with EmbeddingStore(StoreConfig(str(tmp_path / "y"), TABLES, num_shards=2)) as store:
        assert CheckpointManager(str(root)).write_full(store).id == "000004-0000"
    assert chain_dirs(str(root)) == [1, 2, 4]  # the next commit removed chain 3 (unlisted)
    assert chain_dirs(str(tmp_path / "nowhere")) == []
    manager.close()
