"""On-disk format of checkpoints: the per-checkpoint manifest and the files it names.

A checkpoint directory holds plain arrays (``.npy`` and safetensors, never pickled) and one
``manifest.json`` that lists every other file with its sha256 and size::

    chain-000007/ckpt-0002/                 (one checkpoint; kind "full" or "incremental")
      manifest.json                         id, kind, version, parent, store state and schema,
                                            source offsets, config hash, extra, files + sha256
      rows-<table>-0000.ids.npy             int64[n]          ids of the rows in part 0
      rows-<table>-0000.rows.npy            RowLayout[n]      the rows (emb, state, LFU, ...)
      rows-<table>-0001.ids.npy ...         parts of at most ``rows_per_file`` rows
      tomb-<table>.npy                      int64[k]          ids deleted since the parent
                                                              (incremental only)
      seen-<table>.npy                      SIGHTING_DTYPE[s] ids seen but not admitted yet,
                                                              with their counts (all of them,
                                                              in every checkpoint)
      dense.safetensors                     every dense array, keyed by its name (any
                                            string); torch dtypes in ``__metadata__``
                                            (checkpoints before it: dense-0000.npy ...)

A full checkpoint's parts hold every row of every table; an incremental one's hold the rows
written since its parent's version, and its tombstones the ids expired since then.

>>> m = TableEntry("ads", dim=4, state_dim=1, parts=(RowPart("a.ids.npy", "a.rows.npy", 3),))
>>> m.rows, TableEntry.from_json(m.to_json()) == m
(3, True)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class CheckpointKind(Enum):
    """A full base of a chain, or an increment on top of its parent."""

    FULL = "full"
    INCREMENTAL = "incremental"


def rows_file_names(table: str, part: int) -> tuple[str, str]:
    """The ``(ids, rows)`` file names of one part of one table."""
    return f"rows-{table}-{part:04d}.ids.npy", f"rows-{table}-{part:04d}.rows.npy"


def tombstone_file_name(table: str) -> str:
    """The file holding a table's tombstones."""
    return f"tomb-{table}.npy"


def sightings_file_name(table: str) -> str:
    """The file holding a table's sighting counts of ids not admitted yet."""
    return f"seen-{table}.npy"


def dense_file_name(index: int) -> str:
    """The file that held the ``index``-th dense array before ``dense.safetensors``."""
    return f"dense-{index:04d}.npy"


@dataclass(frozen=True)
class FileEntry:
    """One file of a checkpoint: its sha256 and size in bytes."""

    sha256: str
    bytes: int


@dataclass(frozen=True)
class RowPart:
    """One part of a table's rows: an ids file and a rows file of ``count`` entries."""

    ids: str
    rows: str
    count: int


@dataclass(frozen=True)
class TableEntry:
    """The rows (and, in an increment, tombstones) of one table in one checkpoint."""

    name: str
    dim: int
    state_dim: int
    parts: tuple[RowPart, ...] = ()
    tombstones: str | None = None
    tombstone_count: int = 0
    sightings: str | None = None
    sighting_count: int = 0

    @property
    def rows(self) -> int:
        """Rows stored for this table."""
        return sum(p.count for p in self.parts)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "name": self.name,
            "dim": self.dim,
            "state_dim": self.state_dim,
            "parts": [{"ids": p.ids, "rows": p.rows, "count": p.count} for p in self.parts],
            "tombstones": self.tombstones,
            "tombstone_count": self.tombstone_count,
            "sightings": self.sightings,
            "sighting_count": self.sighting_count,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TableEntry:
        """Parse :meth:`to_json`'s output (``KeyError``/``TypeError`` if malformed)."""
        return cls(
            name=str(data["name"]),
            dim=int(data["dim"]),
            state_dim=int(data["state_dim"]),
            parts=tuple(
                RowPart(str(p["ids"]), str(p["rows"]), int(p["count"])) for p in data["parts"]
            ),
            tombstones=None if data["tombstones"] is None else str(data["tombstones"]),
            tombstone_count=int(data["tombstone_count"]),
            sightings=None if data.get("sightings") is None else str(data["sightings"]),
            sighting_count=int(data.get("sighting_count", 0)),
        )


@dataclass(frozen=True)
class DenseEntry:
    """One dense array: its name, file, and the torch dtype it came from (if a tensor)."""

    name: str
    file: str
    torch_dtype: str | None = None


@dataclass(frozen=True)
class CheckpointManifest:
    """Everything ``manifest.json`` records about one checkpoint."""

    id: str
    chain: int
    index: int
    kind: CheckpointKind
    version: int
    created_at: datetime
    parent: str | None
    base_version: int | None
    store_state: Mapping[str, Any]
    store_schema: Mapping[str, Any]
    config_hash: str
    offsets: Mapping[str, Any]
    extra: Mapping[str, Any]
    tables: tuple[TableEntry, ...]
    dense: tuple[DenseEntry, ...]
    files: Mapping[str, FileEntry] = field(default_factory=dict)
    compacted_from: str | None = None

    @property
    def rows(self) -> int:
        """Rows stored, all tables together."""
        return sum(t.rows for t in self.tables)

    @property
    def tombstones(self) -> int:
        """Tombstones stored, all tables together."""
        return sum(t.tombstone_count for t in self.tables)

    @property
    def bytes(self) -> int:
        """Bytes of the files the manifest lists."""
        return sum(f.bytes for f in self.files.values())

    def table(self, name: str) -> TableEntry | None:
        """The entry of table ``name``, if the checkpoint has it."""
        for t in self.tables:
            if t.name == name:
                return t
        return None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "format": FORMAT_VERSION,
            "id": self.id,
            "chain": self.chain,
            "index": self.index,
            "kind": self.kind.value,
            "version": self.version,
            "created_at": self.created_at.isoformat(),
            "parent": self.parent,
            "base_version": self.base_version,
            "compacted_from": self.compacted_from,
            "store_state": dict(self.store_state),
            "store_schema": dict(self.store_schema),
            "config_hash": self.config_hash,
            "offsets": dict(self.offsets),
            "extra": dict(self.extra),
            "tables": [t.to_json() for t in self.tables],
            "dense": [
                {"name": d.name, "file": d.file, "torch_dtype": d.torch_dtype} for d in self.dense
            ],
            "files": {k: {"sha256": f.sha256, "bytes": f.bytes} for k, f in self.files.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CheckpointManifest:
        """Parse :meth:`to_json`'s output (``KeyError``/``TypeError``/``ValueError`` if bad)."""
        if data.get("format") != FORMAT_VERSION:
            raise ValueError(f"format {data.get('format')!r}, this code reads {FORMAT_VERSION}")
        created = datetime.fromisoformat(str(data["created_at"]))
        if created.tzinfo is None:
            raise ValueError("created_at has no timezone")
        return cls(
            id=str(data["id"]),
            chain=int(data["chain"]),
            index=int(data["index"]),
            kind=CheckpointKind(data["kind"]),
            version=int(data["version"]),
            created_at=created,
            parent=None if data["parent"] is None else str(data["parent"]),
            base_version=None if data["base_version"] is None else int(data["base_version"]),
            compacted_from=data.get("compacted_from"),
            store_state=dict(data["store_state"]),
            store_schema=dict(data["store_schema"]),
            config_hash=str(data["config_hash"]),
            offsets=dict(data["offsets"]),
            extra=dict(data["extra"]),
            tables=tuple(TableEntry.from_json(t) for t in data["tables"]),
            dense=tuple(
                DenseEntry(str(d["name"]), str(d["file"]), d.get("torch_dtype"))
                for d in data["dense"]
            ),
            files={
                str(k): FileEntry(str(v["sha256"]), int(v["bytes"]))
                for k, v in data["files"].items()
            },
        )
