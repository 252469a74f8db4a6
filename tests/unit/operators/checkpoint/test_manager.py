"""CheckpointManager: its arguments, background writes, the base per store, what a commit
records and logs, the rebuilt index, and compaction that lost the race to a newer chain."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from embedding_store import EmbeddingStore, OptimizerConfig, StoreConfig, TableConfig
from operators.checkpoint.chain import CHAINS_FILE
from operators.checkpoint.format import CheckpointKind
from operators.checkpoint.manager import LOCK_FILE, WRITE_LOG_CONSUMER, CheckpointManager
from operators.errors import CheckpointError, NoBaseCheckpointError
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
    with caplog.at_level(logging.WARNING, logger="operators.checkpoint.manager"):
        assert [i.id for i in CheckpointManager(str(root)).list()] == [first.id, second.id]
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"{root / CHAINS_FILE}: ") and "missing" not in line.split(";")[0]
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
        manager.write_full(store)
        step(other, [5])
        CheckpointManager(root).write_full(other)  # another writer starts a newer chain
        step(store, [2])
        with pytest.raises(CheckpointError):
            manager.write_incremental(store)
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
