"""The on-disk checkpoint format and chain index, key by key against golden JSON (mutation
testing, issue 17): a renamed key or a dropped field changes what old checkpoints read as."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from operators.checkpoint.chain import (
    CHAINS_FILE,
    Chain,
    ChainIndex,
    CheckpointInfo,
    chain_dirname,
    checkpoint_id,
    load_index,
    save_index,
)
from operators.checkpoint.format import (
    FORMAT_VERSION,
    MANIFEST,
    CheckpointKind,
    CheckpointManifest,
    DenseEntry,
    FileEntry,
    RowPart,
    TableEntry,
    dense_file_name,
    rows_file_names,
    sightings_file_name,
    tombstone_file_name,
)
from operators.errors import ChainManifestError, CheckpointNotFoundError

WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

TABLE_JSON = {
    "name": "ads",
    "dim": 4,
    "state_dim": 1,
    "parts": [
        {"ids": "a0.ids.npy", "rows": "a0.rows.npy", "count": 3},
        {"ids": "a1.ids.npy", "rows": "a1.rows.npy", "count": 2},
    ],
    "tombstones": "tomb-ads.npy",
    "tombstone_count": 7,
    "sightings": "seen-ads.npy",
    "sighting_count": 5,
}
TABLE = TableEntry(
    "ads",
    dim=4,
    state_dim=1,
    parts=(RowPart("a0.ids.npy", "a0.rows.npy", 3), RowPart("a1.ids.npy", "a1.rows.npy", 2)),
    tombstones="tomb-ads.npy",
    tombstone_count=7,
    sightings="seen-ads.npy",
    sighting_count=5,
)
OTHER = TableEntry("users", dim=2, state_dim=0, parts=(RowPart("u.ids", "u.rows", 4),))

MANIFEST_JSON = {
    "format": FORMAT_VERSION,
    "id": "000003-0001",
    "chain": 3,
    "index": 1,
    "kind": "incremental",
    "version": 42,
    "created_at": "2026-01-02T03:04:05+00:00",
    "parent": "000003-0000",
    "base_version": 40,
    "compacted_from": "000002-0004",
    "store_state": {"version": 42},
    "store_schema": {"tables": ["ads", "users"]},
    "config_hash": "abc123",
    "offsets": {"events": {"0": 17}},
    "extra": {"note": "x"},
    "tables": [TABLE_JSON, OTHER.to_json()],
    "dense": [
        {"name": "mlp.weight", "file": "dense-0000.npy", "torch_dtype": "torch.float32"},
        {"name": "plain", "file": "dense-0001.npy", "torch_dtype": None},
    ],
    "files": {
        "dense-0000.npy": {"sha256": "aa", "bytes": 100},
        "dense-0001.npy": {"sha256": "bb", "bytes": 28},
    },
}
MANIFEST_OBJ = CheckpointManifest(
    id="000003-0001",
    chain=3,
    index=1,
    kind=CheckpointKind.INCREMENTAL,
    version=42,
    created_at=WHEN,
    parent="000003-0000",
    base_version=40,
    store_state={"version": 42},
    store_schema={"tables": ["ads", "users"]},
    config_hash="abc123",
    offsets={"events": {"0": 17}},
    extra={"note": "x"},
    tables=(TABLE, OTHER),
    dense=(
        DenseEntry("mlp.weight", "dense-0000.npy", "torch.float32"),
        DenseEntry("plain", "dense-0001.npy"),
    ),
    files={"dense-0000.npy": FileEntry("aa", 100), "dense-0001.npy": FileEntry("bb", 28)},
    compacted_from="000002-0004",
)


def test_file_names() -> None:
    assert FORMAT_VERSION == 1 and MANIFEST == "manifest.json"
    assert rows_file_names("ads", 7) == ("rows-ads-0007.ids.npy", "rows-ads-0007.rows.npy")
    assert tombstone_file_name("ads") == "tomb-ads.npy"
    assert sightings_file_name("ads") == "seen-ads.npy"
    assert dense_file_name(12) == "dense-0012.npy"
    assert [k.value for k in CheckpointKind] == ["full", "incremental"]


def test_table_entry_json_is_golden() -> None:
    assert TABLE.to_json() == TABLE_JSON
    assert TableEntry.from_json(TABLE_JSON) == TABLE
    assert TABLE.rows == 5
    bare = TableEntry("t", 1, 0)
    assert bare.rows == 0 and bare.tombstones is None and bare.sightings is None
    assert bare.tombstone_count == 0 and bare.sighting_count == 0 and bare.parts == ()
    assert TableEntry.from_json(bare.to_json()) == bare


def test_a_table_entry_written_before_sightings_still_reads() -> None:
    old = {k: v for k, v in TABLE_JSON.items() if k not in ("sightings", "sighting_count")}
    entry = TableEntry.from_json(old)
    assert entry.sightings is None and entry.sighting_count == 0
    assert entry.tombstones == "tomb-ads.npy" and entry.tombstone_count == 7
    no_tomb = TableEntry.from_json({**TABLE_JSON, "tombstones": None})
    assert no_tomb.tombstones is None


def test_manifest_json_is_golden() -> None:
    assert MANIFEST_OBJ.to_json() == MANIFEST_JSON
    parsed = CheckpointManifest.from_json(json.loads(json.dumps(MANIFEST_JSON)))
    assert parsed == MANIFEST_OBJ
    assert parsed.created_at == WHEN and parsed.created_at.tzinfo is not None
    assert MANIFEST_OBJ.rows == 9
    assert MANIFEST_OBJ.tombstones == 7
    assert MANIFEST_OBJ.bytes == 128
    assert MANIFEST_OBJ.table("users") == OTHER
    assert MANIFEST_OBJ.table("ads") == TABLE
    assert MANIFEST_OBJ.table("nope") is None


def test_a_full_manifest_has_no_parent() -> None:
    data = {**MANIFEST_JSON, "kind": "full", "parent": None, "base_version": None}
    del data["compacted_from"]
    full = CheckpointManifest.from_json(data)
    assert full.kind is CheckpointKind.FULL
    assert full.parent is None and full.base_version is None and full.compacted_from is None
    bare = CheckpointManifest(
        "x", 1, 0, CheckpointKind.FULL, 1, WHEN, None, None, {}, {}, "h", {}, {}, (), ()
    )
    assert bare.files == {} and bare.compacted_from is None and bare.bytes == 0


def test_bad_manifests_are_refused() -> None:
    with pytest.raises(ValueError, match=r"^format 2, this code reads 1$"):
        CheckpointManifest.from_json({**MANIFEST_JSON, "format": 2})
    with pytest.raises(ValueError, match=r"^format None, this code reads 1$"):
        CheckpointManifest.from_json({k: v for k, v in MANIFEST_JSON.items() if k != "format"})
    with pytest.raises(ValueError, match=r"^created_at has no timezone$"):
        CheckpointManifest.from_json({**MANIFEST_JSON, "created_at": "2026-01-02T03:04:05"})


def _info(chain: int, index: int, kind: CheckpointKind, **kw: object) -> CheckpointInfo:
    return CheckpointInfo(
        checkpoint_id(chain, index), chain, index, kind, 10 * chain + index, WHEN, "f" * 8, **kw
    )  # type: ignore[arg-type]


def test_checkpoint_info_json_is_golden() -> None:
    info = _info(3, 2, CheckpointKind.INCREMENTAL, bytes=9, rows=4, tombstones=1)
    info = CheckpointInfo(**{**info.__dict__, "parent": "000003-0001", "compacted_from": "c"})
    golden = {
        "id": "000003-0002",
        "chain": 3,
        "index": 2,
        "kind": "incremental",
        "version": 32,
        "created_at": "2026-01-02T03:04:05+00:00",
        "manifest_sha256": "ffffffff",
        "bytes": 9,
        "rows": 4,
        "tombstones": 1,
        "parent": "000003-0001",
        "compacted_from": "c",
    }
    assert info.to_json() == golden
    assert CheckpointInfo.from_json(golden) == info
    assert info.relpath == "chain-000003/ckpt-0002"
    assert chain_dirname(12) == "chain-000012" and checkpoint_id(12, 3) == "000012-0003"
    minimal = {k: golden[k] for k in ("id", "chain", "index", "kind", "version")}
    old = CheckpointInfo.from_json(
        {**minimal, "created_at": golden["created_at"], "manifest_sha256": "x"}
    )
    assert (old.bytes, old.rows, old.tombstones, old.parent, old.compacted_from) == (
        0,
        0,
        0,
        None,
        None,
    )


def test_chain_index_appends_finds_and_drops() -> None:
    empty = ChainIndex()
    assert empty.chains == () and empty.next_chain == 1 and empty.latest_chain() is None
    a0 = _info(1, 0, CheckpointKind.FULL)
    a1 = _info(1, 1, CheckpointKind.INCREMENTAL)
    b0 = _info(4, 0, CheckpointKind.FULL)
    b1 = _info(4, 1, CheckpointKind.INCREMENTAL)
    index = empty.appended(a0).appended(a1).appended(b0).appended(b1)
    assert index.next_chain == 5
    assert index.all() == (a0, a1, b0, b1)
    assert [c.id for c in index.chains] == [1, 4]
    assert index.latest_chain() == Chain(4, (b0, b1))
    assert index.chain(1).tip == a1
    assert index.chain(4).upto("000004-0000") == (b0,)
    assert index.chain(4).upto("000004-0001") == (b0, b1)
    assert index.find("000001-0001") == a1
    with pytest.raises(CheckpointNotFoundError):
        index.find("000009-0000")
    with pytest.raises(
        CheckpointNotFoundError,
        match=r"^checkpoint chain 2: not found in the chain manifest; newest known: \['1', '4'\]$",
    ):
        index.chain(2)
    with pytest.raises(CheckpointNotFoundError):
        index.chain(4).upto("000001-0000")
    assert empty.appended(b0).appended(a0).next_chain == 5  # never goes back
    dropped = index.without([1])
    assert [c.id for c in dropped.chains] == [4] and dropped.next_chain == 5
    assert index.without([]) == index


def test_chain_index_json_is_golden_and_round_trips(tmp_path: Path) -> None:
    a0 = _info(1, 0, CheckpointKind.FULL)
    index = ChainIndex().appended(a0)
    assert index.to_json() == {
        "format": 1,
        "next_chain": 2,
        "chains": [{"chain": 1, "checkpoints": [a0.to_json()]}],
    }
    assert ChainIndex.from_json(index.to_json()) == index
    with_empty = {
        **index.to_json(),
        "chains": [*index.to_json()["chains"], {"chain": 7, "checkpoints": []}],
    }
    assert ChainIndex.from_json(with_empty) == index  # an empty chain is dropped
    with pytest.raises(ValueError, match=r"^format 3, this code reads 1$"):
        ChainIndex.from_json({**index.to_json(), "format": 3})
    root = str(tmp_path)
    assert load_index(root) == ChainIndex()
    save_index(root, index)
    assert json.loads((tmp_path / CHAINS_FILE).read_text()) == index.to_json()
    assert load_index(root) == index
    (tmp_path / CHAINS_FILE).write_text("{not json")
    with pytest.raises(ChainManifestError, match=r"\.json': unreadable: Expecting .*\(char 1\)$"):
        load_index(root)
    (tmp_path / CHAINS_FILE).write_text(json.dumps({"format": 1}))
    with pytest.raises(ChainManifestError, match=r"\.json': malformed: KeyError\('chains'\)$"):
        load_index(root)
    with pytest.raises(ChainManifestError, match=r"\.json': cannot be written: \[Errno 2\] .*'$"):
        save_index(str(tmp_path / "missing" / "dir"), index)


@pytest.mark.parametrize(
    "obj",
    [
        FileEntry("aa", 1),
        RowPart("i", "r", 1),
        TABLE,
        DenseEntry("d", "f"),
        MANIFEST_OBJ,
        _info(1, 0, CheckpointKind.FULL),
        Chain(1, ()),
        ChainIndex(),
    ],
    ids=lambda o: type(o).__name__,
)
def test_format_records_are_immutable(obj: object) -> None:
    """Manifests and index entries are shared between the writer and readers: never edited."""
    name = dataclasses.fields(obj)[0].name  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(obj, name, None)


def test_chain_index_file_name_and_checkpoint_info_defaults(tmp_path: Path) -> None:
    assert CHAINS_FILE == "chains.json"  # existing checkpoint directories hold this name
    save_index(str(tmp_path), ChainIndex())
    assert [p.name for p in tmp_path.iterdir()] == ["chains.json"]
    info = CheckpointInfo("000001-0000", 1, 0, CheckpointKind.FULL, 5, WHEN, "sha")
    assert (info.bytes, info.rows, info.tombstones) == (0, 0, 0)
    assert info.parent is None and info.compacted_from is None
