"""CheckpointManager: its arguments, background writes, the base per store, what a commit
records and logs, the rebuilt index, and compaction that lost the race to a newer chain."""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
import re
import threading
from pathlib import Path

import numpy as np
import pytest

from embedding_store import EmbeddingStore, OptimizerConfig, StoreConfig, TableConfig
from operators.checkpoint.chain import CHAINS_FILE, ChainIndex, load_index, save_index
from operators.checkpoint.format import CheckpointKind
from operators.checkpoint.manager import LOCK_FILE, WRITE_LOG_CONSUMER, CheckpointManager
from operators.errors import (
    ChainManifestError,
    CheckpointError,
    NoBaseCheckpointError,
    NoCompleteCheckpointError,
)
from tests.unit.operators.conftest import train_step

TABLES = (TableConfig("t", 2, OptimizerConfig("sgd", lr=0.1)),)


def store_at(path: Path) -> EmbeddingStore:
    return EmbeddingStore(StoreConfig(str(path), TABLES, num_shards=2))


def step(store: EmbeddingStore, ids: list[int]) -> None:
    train_step(store, "t", np.array(ids, dtype=np.int64))
    store.end_step()


def test_arguments_and_their_defaults(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as err:
        CheckpointManager(str(tmp_path), retention=0)
    assert str(err.value) == "retention must be >= 1, got 0"
    with pytest.raises(ValueError) as err:
        CheckpointManager(str(tmp_path), rows_per_file=0)
    assert str(err.value) == "rows_per_file must be >= 1, got 0"
    smallest = CheckpointManager(str(tmp_path), retention=1, rows_per_file=1)
    assert (smallest.retention, smallest.rows_per_file) == (1, 1)
    default = CheckpointManager(str(tmp_path / "d"))
    assert (default.retention, default.rows_per_file) == (3, 1 << 20)
    assert default.root == os.path.abspath(tmp_path / "d") and not os.path.exists(default.root)
    assert WRITE_LOG_CONSUMER == "checkpoint"


def test_a_background_write_is_busy_until_committed(tmp_path: Path) -> None:
    gate = threading.Event()
    seen: list[str] = []

    def hold(path: str) -> None:
        seen.append(threading.current_thread().name)
        gate.wait(30)

    manager = CheckpointManager(str(tmp_path / "c"), file_hook=hold)
    with store_at(tmp_path / "s") as store:
        step(store, [1, 2, 3])
        handle = manager.submit_full(store, {"w": np.zeros(2, np.float32)}, {"p": 1}, "h")
        assert (handle.kind, handle.version, handle.rows) == (
            CheckpointKind.FULL,
            store.version,
            3,
        )
        assert handle.capture_seconds > 0.0
        assert manager.busy and not handle.done()
        gate.set()
        manager.wait()
        assert not manager.busy and handle.done()
        info = handle.result()
        assert seen and all(name.startswith("checkpoint") for name in seen)
        assert manager.base == info and manager.has_base(store)
        # the record's bytes are every file of the checkpoint, the manifest included
        path = os.path.join(manager.root, info.relpath)
        assert info.bytes == sum(os.path.getsize(os.path.join(path, n)) for n in os.listdir(path))
        manager.close()
        assert manager._executor is None
        # a closed manager writes again (a new writer thread)
        again = manager.submit_full(store, {}, {"p": 2}, "h").result(30)
        assert again.index == 0 and again.chain == info.chain + 1
        manager.close()


def test_an_increment_needs_a_base_of_the_same_store(tmp_path: Path) -> None:
    manager = CheckpointManager(str(tmp_path / "c"))
    with store_at(tmp_path / "a") as a, store_at(tmp_path / "b") as b:
        step(a, [1])
        step(b, [1])
        with pytest.raises(NoBaseCheckpointError):
            manager.write_incremental(a, {}, {}, "h")
        manager.write_full(a, {}, {}, "h")
        assert manager.has_base(a) and not manager.has_base(b)
        with pytest.raises(NoBaseCheckpointError):
            manager.write_incremental(b, {}, {}, "h")
        step(a, [2])
        inc = manager.write_incremental(a, {}, {}, "h")
        assert inc.kind is CheckpointKind.INCREMENTAL and inc.rows == 1
    manager.close()


def test_a_commit_is_logged_and_advances_the_write_log_watermark(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manager = CheckpointManager(str(tmp_path / "c"))
    with store_at(tmp_path / "s") as store:
        step(store, [1, 2])
        with caplog.at_level(logging.INFO, logger="operators.checkpoint.manager"):
            info = manager.write_full(store, {}, {}, "h")
        (line,) = [r.getMessage() for r in caplog.records if "committed" in r.getMessage()]
        assert line.startswith(
            f"checkpoint {info.id} committed: full, version {info.version}, 2 rows, "
            f"0 tombstones, {info.bytes} bytes, captured in "
        )
        assert manager.watermarks.mark(WRITE_LOG_CONSUMER) == info.version
    manager.close()


def test_a_lost_chain_manifest_is_rebuilt_and_said_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "c"
    manager = CheckpointManager(str(root))
    with store_at(tmp_path / "s") as store:
        step(store, [1])
        first = manager.write_full(store, {}, {}, "h")
        step(store, [2])
        second = manager.write_incremental(store, {}, {}, "h")
    manager.close()
    os.unlink(root / CHAINS_FILE)
    fresh = CheckpointManager(str(root))
    with caplog.at_level(logging.WARNING, logger="operators.checkpoint.manager"):
        assert [i.id for i in fresh.list()] == [first.id, second.id]
    (line,) = [r.getMessage() for r in caplog.records]
    assert line == (
        f"{root / CHAINS_FILE}: missing; rebuilt from the checkpoint directories that verify: "
        f"{[first.id, second.id]}"
    )
    assert (root / CHAINS_FILE).exists()  # written back
    caplog.clear()
    (root / CHAINS_FILE).write_text("{trunc", encoding="utf-8")
    with pytest.raises(ChainManifestError) as err:
        load_index(str(root))
    with caplog.at_level(logging.WARNING, logger="operators.checkpoint.manager"):
        assert [i.id for i in CheckpointManager(str(root)).list()] == [first.id, second.id]
    (line,) = [r.getMessage() for r in caplog.records]
    assert line == (
        f"{root / CHAINS_FILE}: {err.value}; rebuilt from the checkpoint directories that "
        f"verify: {[first.id, second.id]}"
    )
    assert str(err.value).startswith(f"chain manifest {str(root / CHAINS_FILE)!r}: unreadable: ")
    # an empty root is just empty: no warning, nothing written
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="operators.checkpoint.manager"):
        assert CheckpointManager(str(tmp_path / "empty")).list() == ()
    assert caplog.records == [] and not (tmp_path / "empty").exists()


def test_a_chain_no_longer_the_newest_is_not_compacted(tmp_path: Path) -> None:
    manager = CheckpointManager(str(tmp_path / "c"))
    with store_at(tmp_path / "s") as store:
        step(store, [1])
        old = manager.write_full(store, {}, {}, "h")
        step(store, [2])
        manager.write_incremental(store, {}, {}, "h")
        step(store, [3])
        manager.write_full(store, {}, {}, "h")  # chain 2 is the newest now
        with pytest.raises(CheckpointError) as err:
            manager.compact(old.chain)
        assert str(err.value).endswith("is no longer the newest; not compacting it")
        assert len(manager.chains()) == 2
    manager.close()


def test_defaults_of_a_write_and_increments_after_a_compaction(tmp_path: Path) -> None:
    manager = CheckpointManager(str(tmp_path / "c"))
    with store_at(tmp_path / "s") as store:
        step(store, [1])
        base = manager.write_full(store)
        assert manager.reader(base.id).manifest().config_hash == ""
        assert manager.reader(base.id).manifest().offsets == {}
        step(store, [2])
        tip = manager.write_incremental(store)
        assert manager.reader(tip.id).manifest().config_hash == ""
        compacted = manager.compact()
        assert (compacted.kind, compacted.compacted_from) == (CheckpointKind.FULL, tip.id)
        step(store, [3])
        # the next increment goes on the compaction, which holds the same state as its tip
        after = manager.write_incremental(store)
        assert (after.chain, after.index, after.parent) == (compacted.chain, 1, compacted.id)


def test_an_increment_whose_base_was_superseded_elsewhere_is_refused(tmp_path: Path) -> None:
    root = str(tmp_path / "c")
    manager = CheckpointManager(root)
    with store_at(tmp_path / "s") as store, store_at(tmp_path / "other") as other:
        step(store, [1])
        base = manager.write_full(store)
        step(other, [5])
        CheckpointManager(root).write_full(other)  # another writer starts a newer chain
        step(store, [2])
        with pytest.raises(CheckpointError) as err:
            manager.write_incremental(store)
        assert str(err.value) == (
            f"checkpoint {base.id}: is no longer the newest checkpoint (another writer or a "
            "retention/compaction moved on); write a full checkpoint"
        )
        assert manager.base is None and not manager.has_base(store)
    manager.close()


ADMITTED = (TableConfig("t", 2, OptimizerConfig("sgd", lr=0.1), admit_after=3),)


def test_compaction_in_the_background_keeps_rows_and_sightings(tmp_path: Path) -> None:
    manager = CheckpointManager(str(tmp_path / "c"))
    with EmbeddingStore(StoreConfig(str(tmp_path / "s"), ADMITTED, num_shards=2)) as store:
        for k in range(3):
            for s in range(3):
                step(store, [1, 2, 100 + 10 * k + s])  # 1 and 2 get admitted, the rest sighted
            (manager.write_full if k == 0 else manager.write_incremental)(store)
        tip = manager.list()[-1]
        future = manager.submit_compact()
        compacted = future.result(30)
        assert compacted.compacted_from == tip.id and not manager.busy
        ids, rows = manager.read_table(compacted.id, "t")
        want_ids, want_rows = manager.read_table(tip.id, "t")
        assert np.array_equal(ids, want_ids) and np.array_equal(rows["emb"], want_rows["emb"])
        entry = manager.reader(compacted.id).manifest().table("t")
        tip_entry = manager.reader(tip.id).manifest().table("t")
        assert entry is not None and tip_entry is not None
        got = manager.reader(compacted.id).sightings(entry)
        assert len(got) > 0
        assert got.tobytes() == manager.reader(tip.id).sightings(tip_entry).tobytes()
        with pytest.raises(CheckpointError) as err:
            manager.read_table(compacted.id, "nope")
        assert str(err.value).endswith("has no table 'nope'")
    manager.close()


def test_a_failed_background_write_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def fail(path: str) -> None:
        raise OSError(28, "No space left on device", path)

    manager = CheckpointManager(str(tmp_path / "c"), file_hook=fail)
    with store_at(tmp_path / "s") as store:
        step(store, [1])
        with caplog.at_level(logging.ERROR, logger="operators.checkpoint.manager"):
            handle = manager.submit_full(store)
            manager.wait()
        assert isinstance(handle.future.exception(), OSError | CheckpointError)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].startswith("background checkpoint write failed: ")
    assert "No space left on device" in errors[0]
    manager.close()


def test_leftovers_of_dead_writers_are_removed_at_the_next_commit(tmp_path: Path) -> None:
    root = tmp_path / "c"
    manager = CheckpointManager(str(root))
    with store_at(tmp_path / "s") as store:
        step(store, [1])
        first = manager.write_full(store)
        chain_dir = root / first.relpath.split("/")[0]
        (root / ".tmp-deadbeef").mkdir()
        (chain_dir / "ckpt-0007").mkdir()  # never listed
        (root / "chain-999999").mkdir()  # a chain the manifest does not know
        (root / "notes.txt").write_text("kept")  # not a directory: not ours to judge
        step(store, [2])
        manager.write_incremental(store)
        left = set(os.listdir(root)) - {LOCK_FILE}  # the root lock may stay
        assert left == {CHAINS_FILE, chain_dir.name, "notes.txt"}
        assert sorted(os.listdir(chain_dir)) == ["ckpt-0000", "ckpt-0001"]
    manager.close()


def test_verify_reports_a_chain_whose_parents_disagree(tmp_path: Path) -> None:
    root = tmp_path / "c"
    manager = CheckpointManager(str(root))
    with store_at(tmp_path / "s") as store:
        step(store, [1])
        first = manager.write_full(store)
        step(store, [2])
        second = manager.write_incremental(store)
    manager.close()
    text = (root / CHAINS_FILE).read_text(encoding="utf-8")
    (root / CHAINS_FILE).write_text(
        text.replace(f'"parent": "{first.id}"', '"parent": "000009-0009"'), encoding="utf-8"
    )
    problems = CheckpointManager(str(root)).verify(second.id)
    assert [(p.checkpoint, p.file, p.message) for p in problems] == [
        (second.id, CHAINS_FILE, f"parent 000009-0009 != {first.id}")
    ]


def test_log_lines_of_a_commit_a_restore_a_retention_and_a_fallback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "c"
    manager = CheckpointManager(str(root), retention=1)
    with store_at(tmp_path / "s") as store:
        step(store, [1, 2])
        with caplog.at_level(logging.INFO, logger="operators.checkpoint.manager"):
            first = manager.write_full(store)
            step(store, [2])
            second = manager.write_incremental(store)
            step(store, [3])
            third = manager.write_full(store)  # retention 1: chain 1 goes
        lines = [r.getMessage() for r in caplog.records]
    assert re.fullmatch(
        rf"checkpoint {first.id} committed: full, version {first.version}, 2 rows, "
        rf"0 tombstones, {first.bytes} bytes, captured in \d+\.\d{{3}} s",
        lines[0],
    )
    assert lines[1].startswith(
        f"checkpoint {second.id} committed: incremental, version {second.version}, 1 rows, "
    )
    assert lines[2].startswith(f"checkpoint {third.id} committed: full, ")
    assert lines[3:] == [f"retention 1: deleted chains [{first.chain}]"]
    caplog.clear()
    with store_at(tmp_path / "fresh") as fresh:
        with caplog.at_level(logging.INFO, logger="operators.checkpoint.manager"):
            manager.restore(fresh)
    assert [r.getMessage() for r in caplog.records] == [
        f"restored checkpoint {third.id} (version {third.version}, 1 checkpoints in its chain)"
    ]
    # a damaged tip: the warning names the problem and what the lookup falls back to
    with store_at(tmp_path / "s2") as store:
        manager.restore(store)
        step(store, [4])
        fourth = manager.write_incremental(store)
    (root / fourth.relpath / "manifest.json").write_text("{}", encoding="utf-8")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="operators.checkpoint.manager"):
        assert manager.latest_complete() == third
    problem = manager.verify(fourth.id, with_chain=False)[0]
    assert [r.getMessage() for r in caplog.records] == [
        f"{problem}; skipping it, falling back to {third.id}"
    ]
    (root / third.relpath / "manifest.json").write_text("{}", encoding="utf-8")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="operators.checkpoint.manager"):
        assert manager.latest_complete() is None
    problem = manager.verify(third.id, with_chain=False)[0]
    assert [r.getMessage() for r in caplog.records] == [
        f"{problem}; skipping it, falling back to an older chain"
    ]
    manager.close()


def test_orphans_are_logged_as_they_are_removed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "c"
    manager = CheckpointManager(str(root))
    with store_at(tmp_path / "s") as store:
        step(store, [1])
        first = manager.write_full(store)
        chain_dir = root / first.relpath.split("/")[0]
        (root / ".tmp-deadbeef").mkdir()
        (chain_dir / "ckpt-0007").mkdir()
        step(store, [2])
        with caplog.at_level(logging.INFO, logger="operators.checkpoint.manager"):
            manager.write_incremental(store)
    removed = sorted(r.getMessage() for r in caplog.records if "removing" in r.getMessage())
    assert removed == [
        f"removing {root / '.tmp-deadbeef'} (left by an interrupted write or a pruned chain)",
        f"removing uncommitted checkpoint directory {chain_dir}/ckpt-0007",
    ]
    manager.close()


def test_compaction_moves_the_base_and_keeps_the_tips_dense_state(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gate = threading.Event()
    seen: list[str] = []

    def hold(path: str) -> None:
        seen.append(threading.current_thread().name)
        gate.wait(30)

    root = str(tmp_path / "c")
    manager = CheckpointManager(root, patches=Layers())
    with store_at(tmp_path / "s") as store:
        step(store, [1])
        full = manager.write_full(store, {"w": np.zeros(2, np.float32)})
        with caplog.at_level(logging.INFO, logger="operators.checkpoint.manager"):
            assert manager.compact() == full  # a single full checkpoint: nothing to do
        assert [r.getMessage() for r in caplog.records] == [
            f"chain {full.chain} is a single full checkpoint {full.id}: nothing to compact"
        ]
        step(store, [2])
        middle = manager.write_incremental(store, {"w": np.ones(2, np.float32)}, {"p": 1})
        step(store, [3])
        tip = manager.write_incremental(store, {"w": np.full(2, 2, np.float32)}, {"p": 2}, "h2")
        manager.file_hook = hold
        future = manager.submit_compact()
        assert manager.busy and not future.done()
        gate.set()
        manager.wait()
        compacted = future.result(30)
        assert not manager.busy
        assert seen and all(name.startswith("checkpoint") for name in seen)
        # the base moved onto the compaction (same store, same state as the tip)
        assert manager.base == compacted and manager.has_base(store)
        dense = manager.reader(compacted.id).dense()
        assert sorted(dense) == ["patch/0000/at", "patch/0001/at", "patch/0002/at", "w"]
        assert dense["w"].array.tolist() == [2.0, 2.0]  # the tip's, not an earlier link's
        assert [int(dense[f"patch/000{i}/at"].array[0]) for i in (0, 1, 2)] == [
            full.version,
            middle.version,
            tip.version,
        ]
        got, want = manager.reader(compacted.id).manifest(), manager.reader(tip.id).manifest()
        assert (got.version, got.offsets, got.config_hash) == (tip.version, {"p": 2}, "h2")
        assert (got.store_state, got.store_schema) == (want.store_state, want.store_schema)
    manager.close()


class Layers:
    """A patch source giving the version it was asked at."""

    def capture(self, version: int, base_version: int | None) -> dict[str, np.ndarray]:
        return {"at": np.array([version], np.int64)}


def test_a_manager_without_a_base_compacts_and_keeps_none(tmp_path: Path) -> None:
    root = str(tmp_path / "c")
    writer = CheckpointManager(root)
    with store_at(tmp_path / "s") as store:
        step(store, [1])
        writer.write_full(store)
        step(store, [2])
        tip = writer.write_incremental(store)
    other = CheckpointManager(root)
    compacted = other.compact()
    assert compacted.compacted_from == tip.id and other.base is None
    # the writer's base is not moved by another manager's compaction
    assert writer.base == tip
    writer.close()
    other.close()


def test_compacting_a_chain_without_a_valid_base_names_it(tmp_path: Path) -> None:
    root = tmp_path / "c"
    manager = CheckpointManager(str(root))
    with store_at(tmp_path / "s") as store:
        step(store, [1])
        first = manager.write_full(store)
        step(store, [2])
        manager.write_incremental(store)
    (root / first.relpath / "manifest.json").write_text("{}", encoding="utf-8")
    with pytest.raises(NoCompleteCheckpointError) as err:
        manager.compact(first.chain)
    assert str(err.value) == (
        f"no complete checkpoint under {str(root)!r}: chain {first.chain} has no valid base"
    )
    manager.close()


def test_a_commit_rebuilds_a_lost_index_under_the_root_lock(tmp_path: Path) -> None:
    root = tmp_path / "c"
    manager = CheckpointManager(str(root))
    with store_at(tmp_path / "s") as store:
        step(store, [1])
        first = manager.write_full(store)
    manager.close()
    (root / CHAINS_FILE).unlink()
    # a commit finds the index lost: it rebuilds it under the lock it already holds
    # (taking the lock again would wait for itself)
    done: list[str] = []

    def commit() -> None:
        with store_at(tmp_path / "s2") as store:
            step(store, [3])
            done.append(CheckpointManager(str(root)).write_full(store).id)

    worker = threading.Thread(target=commit, daemon=True)
    worker.start()
    worker.join(20)
    assert done == [f"{first.chain + 1:06d}-0000"]
    (root / CHAINS_FILE).unlink()
    # a listing rebuilds it under the root lock: it waits for another writer's lock
    listed: list[list[str]] = []
    reader = threading.Thread(
        target=lambda: listed.append([i.id for i in CheckpointManager(str(root)).list()]),
        daemon=True,
    )
    with open(root / LOCK_FILE, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        reader.start()
        reader.join(1.0)
        written = (root / CHAINS_FILE).exists()
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    reader.join(60)
    assert not written
    assert listed == [[first.id, done[0]]]


def test_the_rebuilt_index_says_none_when_nothing_verifies(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "c"
    (root / "chain-000004").mkdir(parents=True)
    with caplog.at_level(logging.WARNING, logger="operators.checkpoint.manager"):
        assert CheckpointManager(str(root)).list() == ()
    assert [r.getMessage() for r in caplog.records] == [
        f"{root / CHAINS_FILE}: missing; rebuilt from the checkpoint directories that verify: none"
    ]


def test_close_joins_the_writer_thread_and_the_base_is_frozen(tmp_path: Path) -> None:
    manager = CheckpointManager(str(tmp_path / "c"))
    with store_at(tmp_path / "s") as store:
        step(store, [1])
        info = manager.submit_full(store).result(30)
        assert manager._executor is not None
        threads = list(manager._executor._threads)
        assert threads and all(t.name.startswith("checkpoint") for t in threads)
        manager.close()
        assert not any(t.is_alive() for t in threads)
        base = manager._base
        assert base is not None and base.info == info and base.store() is store
        with pytest.raises(dataclasses.FrozenInstanceError):
            base.info = info  # type: ignore[misc]


def test_background_writes_default_and_keep_their_small_state(tmp_path: Path) -> None:
    manager = CheckpointManager(str(tmp_path / "c"))
    with store_at(tmp_path / "s") as store:
        step(store, [1])
        full = manager.submit_full(store).result(30)
        step(store, [2])
        inc = manager.submit_incremental(store).result(30)
        for info in (full, inc):
            got = manager.reader(info.id).manifest()
            assert (got.config_hash, got.offsets, got.extra) == ("", {}, {})
        step(store, [3])
        inc = manager.write_incremental(store, {}, {"p": 3}, "h", {"run": "b"})
        step(store, [4])
        full = manager.write_full(store, {}, {"p": 4}, "h", {"run": "a"})
        assert manager.reader(inc.id).manifest().extra == {"run": "b"}
        assert manager.reader(full.id).manifest().extra == {"run": "a"}
    manager.close()


def test_a_restore_bases_increments_only_on_the_newest_checkpoint(tmp_path: Path) -> None:
    root = str(tmp_path / "c")
    writer = CheckpointManager(root)
    with store_at(tmp_path / "s") as store:
        step(store, [1])
        first = writer.write_full(store)
        step(store, [2])
        tip = writer.write_incremental(store)
    manager = CheckpointManager(root)
    with store_at(tmp_path / "old") as old:
        manager.restore(old, first.id)
        assert manager.base is None and not manager.has_base(old)
    with store_at(tmp_path / "new") as new:
        manager.restore(new, tip.id)
        assert manager.base == tip and manager.has_base(new)
    writer.close()


def test_a_readable_index_without_chains_is_trusted(tmp_path: Path) -> None:
    root = tmp_path / "c"
    manager = CheckpointManager(str(root))
    with store_at(tmp_path / "s") as store:
        step(store, [1])
        first = manager.write_full(store)
    save_index(str(root), ChainIndex(next_chain=first.chain + 1))  # e.g. written by hand
    assert manager.list() == () and manager.chains() == ()
    assert load_index(str(root)) == ChainIndex(next_chain=first.chain + 1)  # not rebuilt


def test_a_leftover_that_cannot_be_removed_does_not_block_a_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unlink = os.unlink

    def refuse(path: str, *args: object, **kwargs: object) -> None:
        if "stuck" in str(path):
            raise PermissionError(1, "Operation not permitted", str(path))
        unlink(path, *args, **kwargs)  # type: ignore[arg-type]

    root = tmp_path / "c"
    manager = CheckpointManager(str(root), retention=1)
    with store_at(tmp_path / "s") as store:
        step(store, [1])
        first = manager.write_full(store)
        chain_dir = root / first.relpath.split("/")[0]
        (root / ".tmp-dead").mkdir()
        (root / ".tmp-dead" / "stuck").write_bytes(b"x")
        (chain_dir / "ckpt-0009").mkdir()
        (chain_dir / "ckpt-0009" / "stuck").write_bytes(b"x")
        (root / first.relpath / "stuck").write_bytes(b"x")  # chain 1 is pruned below
        monkeypatch.setattr(os, "unlink", refuse)
        step(store, [2])
        manager.write_incremental(store)  # orphans: removal fails, the commit goes on
        step(store, [3])
        second = manager.write_full(store)  # retention 1: chain 1's removal fails too
    assert [c.id for c in manager.chains()] == [second.chain]
    assert (root / ".tmp-dead" / "stuck").exists() and (chain_dir / "ckpt-0009").exists()
    manager.close()


def test_a_table_without_rows_is_compacted_empty(tmp_path: Path) -> None:
    tables = (*TABLES, TableConfig("u", 3, OptimizerConfig("sgd", lr=0.1)))
    manager = CheckpointManager(str(tmp_path / "c"))
    with EmbeddingStore(StoreConfig(str(tmp_path / "s"), tables, num_shards=2)) as store:
        step(store, [1])
        manager.write_full(store)
        step(store, [2])
        manager.write_incremental(store)
        compacted = manager.compact()
        ids, rows = manager.read_table(compacted.id, "u")
        want = store.read_rows("u", np.empty(0, np.int64))[1]
        assert len(ids) == 0 and ids.dtype == np.int64 and rows.dtype == want.dtype
        assert len(rows) == 0 and manager.read_table(compacted.id, "t")[0].tolist() == [1, 2]
    manager.close()
