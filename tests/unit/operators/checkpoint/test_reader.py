"""CheckpointReader: the trust chain (manifest checksum, then each file's), loading and its errors.

Each error is checked by its whole message: the message names the checkpoint, the file and
what is wrong, and it is what an operator reads in a log line.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest

from embedding_store import EmbeddingStore, OptimizerConfig, StoreConfig, TableConfig
from embedding_store.admission import SIGHTING_DTYPE
from embedding_store.rows import RowLayout
from operators.checkpoint.chain import CheckpointInfo
from operators.checkpoint.durable_io import sha256_file
from operators.checkpoint.format import MANIFEST
from operators.checkpoint.manager import CheckpointManager
from operators.checkpoint.reader import CheckpointReader, VerificationProblem
from operators.errors import ChecksumMismatchError, CorruptCheckpointError
from tests.unit.operators.conftest import train_step

TABLES = (
    TableConfig("t", 4, OptimizerConfig("adagrad", lr=0.1), hot_rows=8, expire_after_steps=2),
    TableConfig("a", 2, OptimizerConfig("sgd", lr=0.1), admit_after=3),
)


@pytest.fixture()
def chain(tmp_path: Path) -> tuple[CheckpointManager, list[CheckpointInfo]]:
    """A full checkpoint and one increment that expired every id of the first (tombstones)."""
    manager = CheckpointManager(str(tmp_path / "ckpt"))
    infos = []
    rng = np.random.default_rng(11)
    with EmbeddingStore(StoreConfig(str(tmp_path / "store"), TABLES, num_shards=2)) as store:
        for k in range(2):
            for step in range(3):
                train_step(store, "t", rng.integers(0, 50, 20).astype(np.int64) + 100 * k)
                train_step(store, "a", np.array([1, 2, 2, 3, 40 + 3 * k + step], dtype=np.int64))
                store.end_step()
            if k == 1:
                store.expire()
            write = manager.write_full if k == 0 else manager.write_incremental
            infos.append(write(store, {"w": np.full(3, k, np.float32)}, {"p": k}, "cfg"))
    yield manager, infos
    manager.close()


def what(err: CorruptCheckpointError) -> str:
    """What is wrong, and that the full message is ``file NAME: `` + it."""
    assert err.detail == f"file {err.file}: {err.reason}"
    return err.reason


def reader_of(manager: CheckpointManager, info: CheckpointInfo) -> CheckpointReader:
    return CheckpointReader(manager.root, info)


def rewrite_manifest(
    manager: CheckpointManager, info: CheckpointInfo, edit: object
) -> CheckpointInfo:
    """Edit the manifest JSON in place; the info returned vouches for the new bytes."""
    path = os.path.join(manager.root, info.relpath, MANIFEST)
    with open(path, encoding="utf-8") as fh:
        doc = json.load(fh)
    edit(doc)  # type: ignore[operator]
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(doc, fh)
    return dataclasses.replace(info, manifest_sha256=sha256_file(path))


# -- VerificationProblem -------------------------------------------------------------------------
def test_a_problem_names_checkpoint_file_and_what_is_wrong() -> None:
    plain = VerificationProblem("c1", "f.npy", "missing")
    assert (plain.expected, plain.actual) == (None, None)
    assert str(plain) == "checkpoint c1: file f.npy: missing"
    sums = VerificationProblem("c1", "f.npy", "checksum mismatch", "ab", "cd")
    assert (
        str(sums) == "checkpoint c1: file f.npy: checksum mismatch (expected sha256 ab, actual cd)"
    )
    one = VerificationProblem("c1", "f.npy", "checksum mismatch", None, "cd")
    assert (
        str(one) == "checkpoint c1: file f.npy: checksum mismatch (expected sha256 None, actual cd)"
    )
    other = VerificationProblem("c1", "f.npy", "checksum mismatch", "ab", None)
    assert str(other).endswith("(expected sha256 ab, actual None)")
    with pytest.raises(dataclasses.FrozenInstanceError):
        plain.message = "x"  # type: ignore[misc]


# -- the manifest --------------------------------------------------------------------------------
def test_the_manifest_is_read_once(chain: tuple[CheckpointManager, list[CheckpointInfo]]) -> None:
    manager, infos = chain
    reader = reader_of(manager, infos[1])
    first = reader.manifest()
    os.unlink(os.path.join(reader.path, MANIFEST))  # a second read would fail
    assert reader.manifest() is first
    assert (first.id, first.version) == (infos[1].id, infos[1].version)


def test_an_unreadable_manifest(chain: tuple[CheckpointManager, list[CheckpointInfo]]) -> None:
    manager, infos = chain
    reader = reader_of(manager, infos[1])
    os.unlink(os.path.join(reader.path, MANIFEST))
    with pytest.raises(CorruptCheckpointError) as err:
        reader.manifest()
    assert (err.value.file, what(err.value).split(":")[0]) == (MANIFEST, "unreadable")
    assert [(p.checkpoint, p.file, p.message.split(":")[0]) for p in reader.verify()] == [
        (infos[1].id, MANIFEST, "unreadable")
    ]


def test_a_manifest_with_another_checksum(
    chain: tuple[CheckpointManager, list[CheckpointInfo]],
) -> None:
    manager, infos = chain
    path = os.path.join(manager.root, infos[1].relpath, MANIFEST)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(" ")
    reader = reader_of(manager, infos[1])
    with pytest.raises(ChecksumMismatchError):
        reader.manifest()
    assert reader.verify() == [
        VerificationProblem(
            infos[1].id, MANIFEST, "checksum mismatch", infos[1].manifest_sha256, sha256_file(path)
        )
    ]


def test_a_malformed_manifest_that_the_chain_vouches_for(
    chain: tuple[CheckpointManager, list[CheckpointInfo]],
) -> None:
    manager, infos = chain
    path = os.path.join(manager.root, infos[1].relpath, MANIFEST)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("{not json")
    info = dataclasses.replace(infos[1], manifest_sha256=sha256_file(path))
    reader = reader_of(manager, info)
    with pytest.raises(CorruptCheckpointError) as err:
        reader.manifest()
    assert what(err.value).startswith("malformed: JSONDecodeError(")
    problems = reader.verify()
    assert [(p.file, p.message.split(":")[0], p.expected) for p in problems] == [
        (MANIFEST, "malformed", None)
    ]


def test_a_manifest_of_another_checkpoint(
    chain: tuple[CheckpointManager, list[CheckpointInfo]],
) -> None:
    manager, infos = chain
    info = rewrite_manifest(manager, infos[1], lambda doc: doc.update(version=999))
    with pytest.raises(CorruptCheckpointError) as err:
        reader_of(manager, info).manifest()
    assert what(err.value) == f"describes {info.id} v999, not this checkpoint"


# -- verify --------------------------------------------------------------------------------------
def test_an_intact_checkpoint_has_no_problems(
    chain: tuple[CheckpointManager, list[CheckpointInfo]],
) -> None:
    manager, infos = chain
    assert [reader_of(manager, i).verify() for i in infos] == [[], []]


def test_a_missing_file_is_one_problem(
    chain: tuple[CheckpointManager, list[CheckpointInfo]],
) -> None:
    manager, infos = chain
    reader = reader_of(manager, infos[1])
    name = sorted(reader.manifest().files)[0]
    os.unlink(os.path.join(reader.path, name))
    problems = reader.verify()
    assert [(p.checkpoint, p.file, p.expected, p.actual) for p in problems] == [
        (infos[1].id, name, None, None)
    ]
    assert problems[0].message.startswith("missing or unreadable: [Errno 2]")
    # every missing file is reported, not only the first
    others = sorted(reader.manifest().files)[1:3]
    for other in others:
        os.unlink(os.path.join(reader.path, other))
    assert [p.file for p in reader.verify()] == [name, *others]


def test_a_changed_file_names_both_checksums(
    chain: tuple[CheckpointManager, list[CheckpointInfo]],
) -> None:
    manager, infos = chain
    reader = reader_of(manager, infos[0])
    name = sorted(reader.manifest().files)[-1]
    path = os.path.join(reader.path, name)
    want = reader.manifest().files[name].sha256
    with open(path, "r+b") as fh:
        fh.seek(-1, os.SEEK_END)
        last = fh.read(1)
        fh.seek(-1, os.SEEK_END)
        fh.write(bytes([last[0] ^ 1]))
    assert reader.verify() == [
        VerificationProblem(infos[0].id, name, "checksum mismatch", want, sha256_file(path))
    ]


def test_a_size_that_disagrees_with_a_matching_checksum(
    chain: tuple[CheckpointManager, list[CheckpointInfo]],
) -> None:
    manager, infos = chain
    first = reader_of(manager, infos[0])
    name = sorted(first.manifest().files)[0]
    size = first.manifest().files[name].bytes

    def grow(doc: dict) -> None:  # type: ignore[type-arg]
        files = doc["files"]
        entry = (
            files[name] if isinstance(files, dict) else next(f for f in files if f["name"] == name)
        )
        entry["bytes"] = size + 7

    info = rewrite_manifest(manager, infos[0], grow)
    assert reader_of(manager, info).verify() == [
        VerificationProblem(info.id, name, f"size {size}, expected {size + 7}")
    ]


def test_a_file_referenced_but_not_listed(
    chain: tuple[CheckpointManager, list[CheckpointInfo]],
) -> None:
    manager, infos = chain
    reader = reader_of(manager, infos[1])
    tomb = next(t.tombstones for t in reader.manifest().tables if t.tombstones is not None)
    assert tomb is not None

    def unlist(doc: dict) -> None:  # type: ignore[type-arg]
        files = doc["files"]
        if isinstance(files, dict):
            del files[tomb]
        else:
            doc["files"] = [f for f in files if f["name"] != tomb]

    info = rewrite_manifest(manager, infos[1], unlist)
    assert reader_of(manager, info).verify() == [
        VerificationProblem(info.id, tomb, "referenced but not listed")
    ]


# -- loading -------------------------------------------------------------------------------------
def test_blocks_tombstones_and_sightings(
    chain: tuple[CheckpointManager, list[CheckpointInfo]],
) -> None:
    manager, infos = chain
    full, inc = reader_of(manager, infos[0]), reader_of(manager, infos[1])
    entry = full.manifest().table("t")
    assert entry is not None
    whole = list(full.table_blocks(entry))
    ids = np.concatenate([i for i, _ in whole])
    small = list(full.table_blocks(entry, chunk=5))
    assert all(len(i) <= 5 for i, _ in small)
    assert np.array_equal(np.concatenate([i for i, _ in small]), ids)
    assert np.array_equal(
        np.concatenate([r for _, r in small]).tobytes(),
        np.concatenate([r for _, r in whole]).tobytes(),
    )
    assert len(ids) == sum(p.count for p in entry.parts) == len(np.unique(ids))
    # blocks are copies, not views of the read-only map
    assert all(type(i) is np.ndarray and i.flags.writeable for i, _ in small)
    assert full.tombstones(entry).tolist() == []
    assert full.tombstones(entry).dtype == np.int64
    inc_entry = inc.manifest().table("t")
    assert inc_entry is not None
    assert sorted(inc.tombstones(inc_entry).tolist()) == sorted(ids.tolist())
    admitted = inc.manifest().table("a")
    assert admitted is not None
    seen = inc.sightings(admitted)
    assert seen.dtype == SIGHTING_DTYPE and len(seen) == admitted.sighting_count > 0
    no_record = dataclasses.replace(admitted, sightings=None)
    assert inc.sightings(no_record).dtype == SIGHTING_DTYPE
    assert len(inc.sightings(no_record)) == 0
    assert inc.dense()["w"].array.tolist() == [1.0, 1.0, 1.0]


def test_arrays_of_the_wrong_shape_or_type(
    chain: tuple[CheckpointManager, list[CheckpointInfo]],
) -> None:
    manager, infos = chain
    reader = reader_of(manager, infos[1])
    entry = reader.manifest().table("t")
    assert entry is not None
    part = entry.parts[0]
    short = dataclasses.replace(entry, parts=(dataclasses.replace(part, count=part.count + 1),))
    with pytest.raises(CorruptCheckpointError) as err:
        list(reader.table_blocks(short))
    assert what(err.value) == f"holds int64({part.count},), expected int64[{part.count + 1}]"
    assert err.value.file == part.ids
    # the rows file where the ids file should be: its dtype is refused
    swapped = dataclasses.replace(entry, parts=(dataclasses.replace(part, ids=part.rows),))
    with pytest.raises(CorruptCheckpointError) as err:
        list(reader.table_blocks(swapped))
    assert err.value.file == part.rows and what(err.value).endswith(f"expected int64[{part.count}]")
    # the ids file where the rows file should be
    layout = RowLayout(entry.dim, entry.state_dim)
    as_rows = dataclasses.replace(entry, parts=(dataclasses.replace(part, rows=part.ids),))
    with pytest.raises(CorruptCheckpointError) as err:
        list(reader.table_blocks(as_rows))
    assert what(err.value) == (f"holds int64({part.count},), expected {layout.dtype}[{part.count}]")
    tomb = dataclasses.replace(entry, tombstone_count=(entry.tombstone_count or 0) + 2)
    with pytest.raises(CorruptCheckpointError) as err:
        reader.tombstones(tomb)
    assert err.value.file == entry.tombstones
    admitted = reader.manifest().table("a")
    assert admitted is not None
    wrong = dataclasses.replace(admitted, sighting_count=admitted.sighting_count + 1)
    with pytest.raises(CorruptCheckpointError) as err:
        reader.sightings(wrong)
    assert what(err.value) == (
        f"holds {SIGHTING_DTYPE}({admitted.sighting_count},), "
        f"expected {SIGHTING_DTYPE}[{admitted.sighting_count + 1}]"
    )


def test_a_file_numpy_cannot_load(
    chain: tuple[CheckpointManager, list[CheckpointInfo]],
) -> None:
    manager, infos = chain
    reader = reader_of(manager, infos[0])
    entry = reader.manifest().table("t")
    assert entry is not None
    with open(os.path.join(reader.path, entry.parts[0].ids), "wb") as fh:
        fh.write(b"not an npy file")
    with pytest.raises(CorruptCheckpointError) as err:
        list(reader.table_blocks(entry))
    assert err.value.file == entry.parts[0].ids
    assert what(err.value).startswith("cannot be loaded: ")
    dense_file = reader.manifest().dense[0].file
    with open(os.path.join(reader.path, dense_file), "wb") as fh:
        fh.write(b"\x00" * 16)
    with pytest.raises(CorruptCheckpointError) as err:
        reader.dense()
    assert (err.value.file, what(err.value).split(":")[0]) == (dense_file, "cannot be loaded")


def test_a_dense_array_the_bundle_lacks(
    chain: tuple[CheckpointManager, list[CheckpointInfo]],
) -> None:
    manager, infos = chain

    def ghost(doc: dict) -> None:  # type: ignore[type-arg]
        doc["dense"] = [dict(d, name="ghost") for d in doc["dense"]]

    info = rewrite_manifest(manager, infos[0], ghost)
    reader = reader_of(manager, info)
    with pytest.raises(CorruptCheckpointError) as err:
        reader.dense()
    assert what(err.value) == "has no array 'ghost'"
