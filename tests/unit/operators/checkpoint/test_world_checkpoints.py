"""World checkpoints in detail: the entry's JSON, the write schedule, what each failure says.

Two ranks run here as two threads of this process, each with its own gloo process group over
one in-memory store (real gloo collectives, no launcher), so a test sees what every rank
returns or raises when one rank fails, lags behind or cannot commit.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch.distributed import distributed_c10d

from embedding_store import EmbeddingStore, OptimizerConfig, StoreConfig, TableConfig
from embedding_store.collectives import single_process_group
from embedding_store.distributed import owner_of, rank_path
from operators.checkpoint.chain import load_index
from operators.checkpoint.dense_state import DenseArray
from operators.checkpoint.distributed import (
    FORMAT,
    WORLD_FILE,
    WorldCheckpoint,
    WorldCheckpointError,
    WorldCheckpoints,
    WorldPart,
    WorldRestored,
    _union_offsets,
    load_world,
    restore_rank,
)
from operators.checkpoint.manager import CheckpointManager
from operators.checkpoint.reader import CheckpointReader
from operators.errors import CheckpointError, NoCompleteCheckpointError, StoreNotEmptyError

TABLES = (
    TableConfig("t", 2, OptimizerConfig("sgd", lr=0.5), seed=3),
    TableConfig("s", 2, OptimizerConfig("sgd", lr=0.5), seed=4, admit_after=3),
)
LOGGER = "operators.checkpoint.distributed"


def train(store: EmbeddingStore, ids: np.ndarray) -> None:
    for t in TABLES:
        emb = store.lookup(t.name, ids)
        store.apply_gradients(t.name, ids, (emb + 1.0).numpy())
    store.end_step()


def rows_of(store: EmbeddingStore, table: str) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    for ids, block in store.export_rows(table):
        for i, r in zip(ids.tolist(), block, strict=True):
            out[i] = r.tobytes()
    return out


def sightings_of(store: EmbeddingStore, table: str) -> dict[int, int]:
    block = store.sightings(table)
    return dict(zip(block["id"].tolist(), block["count"].tolist(), strict=True))


def part_dense(part_root: str) -> dict[str, Any]:
    """The dense arrays of a rank's (first) checkpoint."""
    return dict(CheckpointReader(part_root, load_index(part_root).find("000001-0000")).dense())


def open_store(path: Path) -> EmbeddingStore:
    return EmbeddingStore(StoreConfig(str(path), TABLES, num_shards=2))


@contextmanager
def two_ranks(timeout_s: float = 30.0) -> Iterator[list[dist.ProcessGroup]]:
    """Two gloo groups (rank 0 and rank 1 of one world) for two threads of this process.

    They are entered in torch's table of groups so that ``dist.get_backend(group)`` knows
    them, as it does a group made by ``init_process_group``/``new_group``.
    """
    kv = dist.HashStore()
    groups: list[Any] = [None, None]

    def make(rank: int) -> None:
        groups[rank] = dist.ProcessGroupGloo(
            dist.PrefixStore("world", kv), rank, 2, timedelta(seconds=timeout_s)
        )

    threads = [threading.Thread(target=make, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for g in groups:
        distributed_c10d._world.pg_map[g] = ("gloo", kv)
    try:
        yield groups
    finally:
        for g in groups:
            distributed_c10d._world.pg_map.pop(g, None)


def on_both(fn: Callable[[int], Any]) -> list[Any]:
    """``fn(rank)`` on rank 0 and rank 1 at once; each rank's result or the error it raised."""
    out: list[Any] = [None, None]

    def run(rank: int) -> None:
        try:
            out[rank] = fn(rank)
        except Exception as err:  # every rank's outcome is the test's to check
            out[rank] = err

    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
        assert not t.is_alive(), "a rank is still waiting in a collective"
    return out


# -- records -----------------------------------------------------------------------------------


def test_the_error_names_the_world_and_the_rank_at_fault() -> None:
    err = WorldCheckpointError(None, "something")
    assert isinstance(err, CheckpointError)
    assert (str(err), err.rank) == ("checkpoint world: something", None)
    err = WorldCheckpointError(2, "else")
    assert (str(err), err.rank) == ("checkpoint world (rank 2): else", 2)
    assert str(WorldCheckpointError(0, "x")) == "checkpoint world (rank 0): x"


def test_an_entry_as_json_and_back() -> None:
    parts = (WorldPart(0, "rank-0000", "000001-0002"), WorldPart(1, "rank-0001", "000002-0000"))
    entry = WorldCheckpoint(5, 2, parts, {"t/0": 7, "t/1": 9}, "abc", {"step": 3})
    assert entry.to_json() == {
        "version": 5,
        "world_size": 2,
        "parts": [
            {"rank": 0, "root": "rank-0000", "checkpoint": "000001-0002"},
            {"rank": 1, "root": "rank-0001", "checkpoint": "000002-0000"},
        ],
        "offsets": {"t/0": 7, "t/1": 9},
        "config_hash": "abc",
        "extra": {"step": 3},
    }
    assert WorldCheckpoint.from_json(entry.to_json()) == entry
    older = {"version": 1, "world_size": 1, "parts": [], "offsets": {"t/0": "4"}}
    got = WorldCheckpoint.from_json(older)  # written before config_hash and extra existed
    assert (got.config_hash, got.extra, got.offsets, got.parts) == ("", {}, {"t/0": 4}, ())
    assert WorldCheckpoint(1, 1, (), {}, "").extra == {}


def test_records_are_frozen() -> None:
    part = WorldPart(0, "rank-0000", "000001-0000")
    entry = WorldCheckpoint(1, 1, (part,), {}, "")
    restored = WorldRestored(entry, False, {}, {}, {})
    for obj, name in ((part, "rank"), (entry, "version"), (restored, "resharded")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, name, 1)


def test_what_a_rank_got_back() -> None:
    entry = WorldCheckpoint(4, 1, (), {"t/0": 3}, "")
    dense = {"w": DenseArray(np.array([16256, 16384], np.uint16), "bfloat16")}
    got = WorldRestored(entry, True, {"t": 2}, dense, {})
    assert (got.version, got.offsets, got.patches) == (4, {"t/0": 3}, ())
    tensors = got.dense_tensors()
    assert list(tensors) == ["w"] and tensors["w"].dtype == torch.bfloat16
    assert tensors["w"].tolist() == [1.0, 2.0]


def test_offsets_of_the_ranks_are_merged_keeping_the_furthest() -> None:
    got = _union_offsets([{"t/1": 5, "t/0": 2}, {"t/1": 3, "t/2": 8}, {"t/0": 4}])
    assert list(got.items()) == [("t/0", 4), ("t/1", 5), ("t/2", 8)]
    assert _union_offsets([]) == {}


# -- world.json --------------------------------------------------------------------------------


def test_no_world_file_is_no_checkpoint(tmp_path: Path) -> None:
    assert load_world(str(tmp_path)) == ()
    world = WorldCheckpoints(str(tmp_path), 0)
    assert world.list() == () and world.latest() is None
    with open_store(tmp_path / "s") as local:
        with pytest.raises(NoCompleteCheckpointError) as err:
            world.restore(local, 1)
    assert str(err.value) == (
        f"no complete checkpoint under {str(tmp_path)!r}: no world.json entry with all its parts"
    )


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (
            "{",
            "JSONDecodeError('Expecting property name enclosed in double quotes: line 1 "
            "column 2 (char 1)')",
        ),
        ('{"checkpoints": [{"version": 1}]}', "KeyError('world_size')"),
        ('{"format": 1}', "KeyError('checkpoints')"),
        ('{"checkpoints": 3}', "TypeError(\"'int' object is not iterable\")"),
        (
            '{"checkpoints": [{"version": "x"}]}',
            "ValueError(\"invalid literal for int() with base 10: 'x'\")",
        ),
    ],
)
def test_a_damaged_world_file_names_itself_and_the_error(
    tmp_path: Path, body: str, error: str
) -> None:
    (tmp_path / WORLD_FILE).write_text(body)
    with pytest.raises(WorldCheckpointError) as err:
        load_world(str(tmp_path))
    path = os.path.join(str(tmp_path), WORLD_FILE)
    assert str(err.value) == f"checkpoint world: {path} is unreadable: {error}"
    assert err.value.rank is None


def test_a_world_file_that_is_a_directory_is_unreadable(tmp_path: Path) -> None:
    (tmp_path / WORLD_FILE).mkdir()
    path = os.path.join(str(tmp_path), WORLD_FILE)
    with pytest.raises(
        WorldCheckpointError,
        match=f"^checkpoint world: {re.escape(path)} is "
        r"unreadable: IsADirectoryError\(21, 'Is a directory'\)$",
    ):
        load_world(str(tmp_path))


# -- writing in a world of one ----------------------------------------------------------------


def test_defaults_and_no_io_when_constructed(tmp_path: Path) -> None:
    world = WorldCheckpoints(str(tmp_path / "c"), 2)
    assert (world.root, world.rank, world.group) == (str(tmp_path / "c"), 2, None)
    assert (world.full_every, world.keep, world.manager.retention) == (8, 16, 3)
    assert world.manager.root == rank_path(str(tmp_path / "c"), 2)
    assert not (tmp_path / "c").exists()
    rel = WorldCheckpoints("rel-ckpt", 0)
    assert rel.root == os.path.abspath("rel-ckpt")


def test_a_full_every_n_writes_increments_between(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    ids = []
    with single_process_group(), open_store(tmp_path / "s") as store:
        world = WorldCheckpoints(str(tmp_path / "c"), 0, full_every=2, retention=5)
        for step in range(6):
            train(store, np.arange(step, step + 4, dtype=np.int64))
            entry = world.write(store, {}, {"t/0": step}, full=step == 5)
            ids.append(entry.parts[0].checkpoint)
            assert (entry.version, entry.offsets) == (step + 1, {"t/0": step})
        world.close()
    assert ids == [
        "000001-0000",
        "000001-0001",
        "000001-0002",
        "000002-0000",
        "000002-0001",
        "000003-0000",
    ]
    committed = [r.getMessage() for r in caplog.records if "committed" in r.getMessage()]
    assert committed == [
        f"world checkpoint v{v} committed: 1 parts, 1 partitions" for v in range(1, 7)
    ]


def test_world_file_keeps_the_newest_entries_and_replaces_a_rewritten_version(
    tmp_path: Path,
) -> None:
    root = tmp_path / "c"
    with single_process_group(), open_store(tmp_path / "s") as store:
        world = WorldCheckpoints(str(root), 0, keep=2)
        for step in range(3):
            train(store, np.arange(4, dtype=np.int64))
            world.write(store, {}, {"t/0": step}, config_hash="h", extra={"n": step})
        again = world.write(store, {}, {"t/0": 9, "t/1": 1})  # the same version once more
        world.close()
    body = json.loads((root / WORLD_FILE).read_text())
    assert body["format"] == FORMAT == 1 and sorted(body) == ["checkpoints", "format"]
    listed = world.list()
    assert [(e.version, dict(e.offsets)) for e in listed] == [
        (2, {"t/0": 1}),
        (3, {"t/0": 9, "t/1": 1}),
    ]
    assert listed[-1] == again and (listed[0].config_hash, listed[0].extra) == ("h", {"n": 1})
    assert (again.config_hash, again.extra) == ("", {})


def test_latest_skips_entries_whose_parts_are_gone(tmp_path: Path) -> None:
    root = tmp_path / "c"
    with single_process_group(), open_store(tmp_path / "s") as store:
        world = WorldCheckpoints(str(root), 0, retention=1)
        train(store, np.arange(4, dtype=np.int64))
        first = world.write(store, {}, {"t/0": 1})
        train(store, np.arange(4, dtype=np.int64))
        second = world.write(store, {}, {"t/0": 2}, full=True)  # retention drops chain 1
        world.close()
    assert world.list() == (first, second) and world.latest() == second
    body = json.loads((root / WORLD_FILE).read_text())
    gone = dataclasses.replace(second, version=9, parts=(WorldPart(0, "rank-0000", "000009-0000"),))
    nowhere = dataclasses.replace(second, version=10, parts=(WorldPart(0, "rank-0007", "x"),))
    body["checkpoints"] += [gone.to_json(), nowhere.to_json()]
    (root / WORLD_FILE).write_text(json.dumps(body))
    assert world.latest() == second
    with open_store(tmp_path / "r") as local:
        got = world.restore(local, 1)
        assert got.checkpoint == second and rows_of(local, "t") == rows_of_path(tmp_path / "s")
    body["checkpoints"] = [first.to_json()]
    (root / WORLD_FILE).write_text(json.dumps(body))
    assert world.latest() is None


def rows_of_path(path: Path) -> dict[int, bytes]:
    with open_store(path) as store:
        return rows_of(store, "t")


def test_a_failed_part_is_logged_and_raised_with_its_cause(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "c"
    root.mkdir()
    (root / "rank-0000").write_text("not a directory")
    with single_process_group(), open_store(tmp_path / "s") as store:
        world = WorldCheckpoints(str(root), 0)
        train(store, np.arange(4, dtype=np.int64))
        with pytest.raises(WorldCheckpointError) as err:
            world.write(store, {}, {})
        world.close()
    failed = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.ERROR]
    assert [r.getMessage() for r in failed] == ["rank 0: checkpoint part failed"]
    assert failed[0].exc_info is not None
    cause = failed[0].exc_info[1]
    assert (
        str(err.value) == f"checkpoint world (rank 0): checkpoint at version [1] failed: {cause!r}"
    )
    assert err.value.rank == 0


def test_rank_zero_that_cannot_write_the_world_file_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "c"
    root.mkdir()
    (root / f"{WORLD_FILE}.tmp-{os.getpid()}").mkdir()  # where the new world.json goes first
    with single_process_group(), open_store(tmp_path / "s") as store:
        world = WorldCheckpoints(str(root), 0)
        train(store, np.arange(4, dtype=np.int64))
        with pytest.raises(WorldCheckpointError) as err:
            world.write(store, {}, {})
        world.close()
    assert str(err.value) == (
        "checkpoint world (rank 0): checkpoint at version [1] failed: cannot write world.json: "
        "IsADirectoryError(21, 'Is a directory')"
    )
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert logged == ["rank 0: cannot write world.json"]
    assert not (root / WORLD_FILE).exists()


def test_a_world_without_rank_zero_commits_nothing(tmp_path: Path) -> None:
    with single_process_group(), open_store(tmp_path / "s") as store:
        world = WorldCheckpoints(str(tmp_path / "c"), 1)  # rank 1 alone: nobody commits
        train(store, np.arange(4, dtype=np.int64))
        with pytest.raises(WorldCheckpointError) as err:
            world.write(store, {"w": np.ones(2)}, {})
        world.close()
    assert str(err.value) == "checkpoint world (rank 0): world.json was not written"
    assert not (tmp_path / "c" / WORLD_FILE).exists()
    assert part_dense(rank_path(str(tmp_path / "c"), 1)) == {}  # kept from rank 0 only


# -- two ranks ---------------------------------------------------------------------------------


def test_two_ranks_commit_one_entry_and_restore_into_two_one_and_three(tmp_path: Path) -> None:
    root = tmp_path / "c"
    w = torch.tensor([1.0, 2.5], dtype=torch.bfloat16)
    ids = {0: np.arange(0, 30, dtype=np.int64), 1: np.arange(20, 50, dtype=np.int64)}
    want: dict[str, dict[int, bytes]] = {t.name: {} for t in TABLES}
    seen: dict[int, int] = {}
    with two_ranks() as groups:

        def write(rank: int) -> WorldCheckpoint:
            with open_store(tmp_path / f"s{rank}") as store:
                world = WorldCheckpoints(str(root), rank, group=groups[rank])
                mine = ids[rank][owner_of(ids[rank], 2) == rank]
                train(store, mine)
                offsets = {"t/0": 10 + rank, f"t/{rank + 1}": 5 * (rank + 1)}
                entry = world.write(store, {"w": w}, offsets, config_hash="h", extra={"r": 1})
                world.close()
                for t in TABLES:
                    want[t.name].update(rows_of(store, t.name))
                seen.update(sightings_of(store, "s"))
                return entry

        got = on_both(write)
    assert got[0] == got[1], got
    entry = got[0]
    assert entry == WorldCheckpoint(
        1,
        2,
        (WorldPart(0, "rank-0000", "000001-0000"), WorldPart(1, "rank-0001", "000001-0000")),
        {"t/0": 11, "t/1": 5, "t/2": 10},
        "h",
        {"r": 1},
    )
    assert load_world(str(root)) == (entry,)
    assert part_dense(str(root / "rank-0001")) == {}
    assert list(part_dense(str(root / "rank-0000"))) == ["w"]
    assert len(seen) > 0 and not set(seen) & set(want["s"])  # seen once: not admitted yet
    for rank in range(2):  # the same world: each rank its own part, rank 0's dense
        with open_store(tmp_path / f"same{rank}") as local:
            restored = WorldCheckpoints(str(root), rank).restore(local, 2)
            assert not restored.resharded and restored.checkpoint == entry
            assert restored.rows == {t.name: len(rows_of(local, t.name)) for t in TABLES}
            assert restored.extra == {"r": 1} and list(restored.dense) == ["w"]
            back = restored.dense_tensors()["w"]
            assert back.dtype == torch.bfloat16 and back.tolist() == [1.0, 2.5]
            for t in TABLES:
                assert set(rows_of(local, t.name)) <= set(want[t.name])
    for size in (1, 3):
        got_rows: dict[str, dict[int, bytes]] = {t.name: {} for t in TABLES}
        got_seen: dict[int, int] = {}
        for rank in range(size):
            with open_store(tmp_path / f"w{size}-{rank}") as local:
                restored = WorldCheckpoints(str(root), rank).restore(local, size)
                assert restored.resharded and restored.version == local.version == 1
                assert restored.dense["w"].tensor().tolist() == [1.0, 2.5]
                for t in TABLES:
                    mine = rows_of(local, t.name)
                    assert restored.rows[t.name] == len(mine)
                    assert (owner_of(np.array(list(mine), np.int64), size) == rank).all()
                    got_rows[t.name].update(mine)
                mine_seen = sightings_of(local, "s")
                assert (owner_of(np.array(list(mine_seen), np.int64), size) == rank).all()
                got_seen.update(mine_seen)
        assert got_rows == want and got_seen == seen, f"world of {size}"


def test_ranks_at_different_versions_commit_nothing(tmp_path: Path) -> None:
    root = tmp_path / "c"
    with two_ranks() as groups:

        def write(rank: int) -> WorldCheckpoint:
            with open_store(tmp_path / f"s{rank}") as store:
                world = WorldCheckpoints(str(root), rank, group=groups[rank])
                for _ in range(rank + 1):
                    train(store, np.arange(4, dtype=np.int64))
                try:
                    return world.write(store, {}, {})
                finally:
                    world.close()

        got = on_both(write)
    for err in got:
        assert isinstance(err, WorldCheckpointError), got
        assert str(err) == (
            "checkpoint world: checkpoint at version [1, 2] failed: ranks are at different "
            "versions [1, 2]"
        )
    assert not (root / WORLD_FILE).exists()


def test_a_failed_part_on_rank_one_fails_every_rank(tmp_path: Path) -> None:
    root = tmp_path / "c"
    root.mkdir()
    (root / "rank-0001").write_text("not a directory")
    with two_ranks() as groups:

        def write(rank: int) -> WorldCheckpoint:
            with open_store(tmp_path / f"s{rank}") as store:
                world = WorldCheckpoints(str(root), rank, group=groups[rank])
                train(store, np.arange(4, dtype=np.int64))
                try:
                    return world.write(store, {}, {})
                finally:
                    world.close()

        got = on_both(write)
    assert all(isinstance(e, WorldCheckpointError) for e in got), got
    assert str(got[0]) == str(got[1])
    assert str(got[0]).startswith("checkpoint world (rank 1): checkpoint at version [1] failed: ")
    assert got[0].rank == got[1].rank == 1
    assert not (root / WORLD_FILE).exists()


def test_an_unreadable_world_file_fails_every_rank_instead_of_hanging_one(
    tmp_path: Path,
) -> None:
    root = tmp_path / "c"
    root.mkdir()
    (root / WORLD_FILE).write_text("{")
    with two_ranks(timeout_s=20) as groups:

        def write(rank: int) -> WorldCheckpoint:
            with open_store(tmp_path / f"s{rank}") as store:
                world = WorldCheckpoints(str(root), rank, group=groups[rank])
                train(store, np.arange(4, dtype=np.int64))
                try:
                    return world.write(store, {}, {})
                finally:
                    world.close()

        got = on_both(write)
    path = os.path.join(str(root), WORLD_FILE)
    assert all(isinstance(err, WorldCheckpointError) for err in got), got
    assert str(got[0]) == (
        "checkpoint world (rank 0): checkpoint at version [1] failed: cannot write "
        f"world.json: checkpoint world: {path} is unreadable: JSONDecodeError('Expecting "
        "property name enclosed in double quotes: line 1 column 2 (char 1)')"
    )
    assert str(got[1]) == "checkpoint world (rank 0): world.json was not written"
    assert (root / WORLD_FILE).read_text() == "{"


# -- restoring ---------------------------------------------------------------------------------


def written(tmp_path: Path, full_every: int = 8) -> tuple[Path, WorldCheckpoint]:
    """A 1-rank world checkpoint of 12 ids in ``tmp_path / "c"`` (its store at ``"s"``)."""
    root = tmp_path / "c"
    with single_process_group(), open_store(tmp_path / "s") as store:
        world = WorldCheckpoints(str(root), 0, full_every=full_every)
        train(store, np.arange(12, dtype=np.int64))
        entry = world.write(store, {"w": np.ones(2, np.float32)}, {"t/0": 1})
        world.close()
    return root, entry


def test_restore_rank_refuses_a_rank_outside_the_world(tmp_path: Path) -> None:
    root, entry = written(tmp_path)
    with open_store(tmp_path / "r") as local:
        for rank in (2, -1):
            with pytest.raises(WorldCheckpointError) as err:
                restore_rank(str(root), local, rank, 2, entry)
            assert str(err.value) == f"checkpoint world (rank {rank}): rank outside a world of 2"
        restore_rank(str(root), local, 1, 2, entry)  # the last rank is inside


def test_restore_needs_an_empty_store_unless_cleared(tmp_path: Path) -> None:
    root, entry = written(tmp_path)
    want = rows_of_path(tmp_path / "s")
    with open_store(tmp_path / "r") as local:
        train(local, np.arange(100, 103, dtype=np.int64))
        with pytest.raises(StoreNotEmptyError) as err:
            restore_rank(str(root), local, 0, 2, entry)
        assert str(err.value) == (
            "checkpoint world v1: the target store's table 't' holds 3 rows; restore into a store "
            "opened on an empty directory, or pass clear=True"
        )
        restore_rank(str(root), local, 0, 1, entry, clear=True)
        assert rows_of(local, "t") == want
        world = WorldCheckpoints(str(root), 0)
        with pytest.raises(StoreNotEmptyError):
            world.restore(local, 2)
        with pytest.raises(StoreNotEmptyError):
            world.restore(local, 1)
        assert world.restore(local, 2, clear=True).resharded
        assert not world.restore(local, 1, clear=True).resharded
        assert rows_of(local, "t") == want


def damage(root: Path) -> None:
    """Flip one byte of the first row file of rank 0's part, after its header."""
    path = sorted((root / "rank-0000").rglob("*.npy"))
    rows = next(p for p in path if "rows" in p.name)
    data = bytearray(rows.read_bytes())
    data[-1] ^= 0xFF
    rows.write_bytes(bytes(data))


def test_a_damaged_part_is_refused_unless_verification_is_off(tmp_path: Path) -> None:
    root, entry = written(tmp_path)
    damage(root)
    with open_store(tmp_path / "r") as local:
        with pytest.raises(WorldCheckpointError) as err:
            restore_rank(str(root), local, 0, 2, entry)
        problem = CheckpointManager(str(root / "rank-0000")).verify("000001-0000")[0]
        assert str(err.value) == (
            f"checkpoint world (rank 0): part 000001-0000 is damaged: {problem}"
        )
        assert "checksum mismatch" in str(problem)
        with pytest.raises(WorldCheckpointError, match="is damaged"):
            WorldCheckpoints(str(root), 0).restore(local, 2)
        got = restore_rank(str(root), local, 0, 1, entry, verify=False)
        assert got.rows["t"] == 12
    with open_store(tmp_path / "r2") as local:
        with pytest.raises(CheckpointError, match="sha256"):
            WorldCheckpoints(str(root), 0).restore(local, 1)
        got = WorldCheckpoints(str(root), 0).restore(local, 1, verify=False)
        assert got.rows["t"] == 12
        again = WorldCheckpoints(str(root), 0).restore(local, 3, verify=False, clear=True)
        assert again.resharded and again.rows["t"] > 0


def test_a_world_without_a_part_of_rank_zero_is_refused(tmp_path: Path) -> None:
    root, entry = written(tmp_path)
    moved = root / "rank-0001"
    os.rename(root / "rank-0000", moved)
    orphan = dataclasses.replace(entry, parts=(WorldPart(1, "rank-0001", "000001-0000"),))
    with open_store(tmp_path / "r") as local:
        with pytest.raises(WorldCheckpointError) as err:
            restore_rank(str(root), local, 0, 2, orphan)
    assert str(err.value) == "checkpoint world (rank 0): world v1 has no part of rank 0"


def test_a_reshard_logs_what_each_rank_got(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    root, entry = written(tmp_path)
    caplog.clear()
    with open_store(tmp_path / "r") as local:
        got = restore_rank(str(root), local, 1, 2, entry)
    n = int((owner_of(np.arange(12, dtype=np.int64), 2) == 1).sum())
    assert got.rows == {"t": n, "s": 0} and 0 < n < 12
    assert [r.getMessage() for r in caplog.records if r.name == LOGGER] == [
        f"rank 1 of 2: re-sharded world v1 (1 parts; patch layers are per rank and not carried "
        f"over): {{'t': {n}, 's': 0}}"
    ]


def test_after_a_restore_increments_count_from_the_restore(tmp_path: Path) -> None:
    root, _ = written(tmp_path, full_every=2)
    ids = []
    with single_process_group(), open_store(tmp_path / "r") as local:
        world = WorldCheckpoints(str(root), 0, full_every=2)
        world.restore(local, 1)
        for step in range(3):
            train(local, np.arange(step, step + 2, dtype=np.int64))
            ids.append(world.write(local, {}, {}).parts[0].checkpoint)
        world.close()
    assert ids == ["000001-0001", "000001-0002", "000002-0000"]


def test_rank_one_checks_the_part_of_rank_zero_it_takes_the_dense_state_from(
    tmp_path: Path,
) -> None:
    root = tmp_path / "c"
    with two_ranks() as groups:

        def write(rank: int) -> WorldCheckpoint:
            with open_store(tmp_path / f"s{rank}") as store:
                world = WorldCheckpoints(str(root), rank, group=groups[rank])
                train(store, np.arange(4, dtype=np.int64))
                try:
                    return world.write(store, {"w": np.arange(3, dtype=np.float32)}, {})
                finally:
                    world.close()

        got = on_both(write)
    assert got[0] == got[1], got
    dense = next((root / "rank-0000").rglob("dense.safetensors"))
    data = bytearray(dense.read_bytes())
    data[-1] ^= 0xFF  # the last byte of the last value
    dense.write_bytes(bytes(data))
    problem = CheckpointManager(str(root / "rank-0000")).verify("000001-0000")[0]
    with open_store(tmp_path / "r") as local:
        with pytest.raises(WorldCheckpointError) as err:
            WorldCheckpoints(str(root), 1).restore(local, 2)
        assert str(err.value) == (
            f"checkpoint world (rank 0): part 000001-0000 is damaged: {problem}"
        )
        unchecked = WorldCheckpoints(str(root), 1).restore(local, 2, verify=False, clear=True)
    assert unchecked.dense["w"].array.tolist()[:2] == [0.0, 1.0]
    assert unchecked.dense["w"].array.tolist()[2] != 2.0  # what verify=False lets through
