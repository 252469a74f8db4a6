"""One service shard: a tiered store of the rows its id range holds, readable at a version.

A shard owns an :class:`~embedding_store.EmbeddingStore` (DRAM over RocksDB) with one table
per served table. The table's owner (the job that trains it) applies updates: the rows a
published delta upserts and the ids it deletes, tagged with the delta's ``version`` and
``base``. Readers look rows up at a version; the last ``keep_versions`` versions stay
answerable through undo records, so a client that reads two shards can always ask both for
the same version and never mixes the halves of a publication::

    <path>/state.json             tables (schema, owner) and the version checkpointed
    <path>/store/                 the EmbeddingStore (rows at the newest applied version)
    <path>/wal/<table>/<v>.fshb   every update after the checkpoint, written before applying

    lookup(t, ids, v):  rows = store rows of known ids | initial values of the others
                        for each undo record newer than v (newest first): put back old values

An id the table has never held gets its deterministic initial value
(:func:`embedding_store.initializers.initial_values`) and is *not* stored. Each log file
holds the update and its undo record (the touched rows' values before it); a shard that
restarts reopens its store, replays the log past the checkpoint and reloads the undo records
of the newest ``keep_versions`` files, so it answers the same versions as before the crash.

>>> import tempfile, numpy as np
>>> with tempfile.TemporaryDirectory() as d:
...     shard = ServiceShard(ShardSettings(d)).open()
...     shard.register(TableSchema("users", dim=2, seed=1, init_scale=0.0, owner="ctr"))
...     ids = np.array([4], np.int64)
...     _ = shard.apply(RowUpdate("users", "ctr", 1, 0, ids, np.ones((1, 2), np.float32)))
...     now, before = shard.lookup("users", ids), shard.lookup("users", ids, version=0)
...     shard.close()
>>> now.version, now.emb.tolist(), before.version, bool((before.emb == 0).all()), before.found
(1, [[1.0, 1.0]], 0, True, array([False]))
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from embedding_store import EmbeddingStore, OptimizerConfig, StoreConfig, TableConfig
from embedding_store.initializers import initial_values
from embedding_store.rows import RowLayout
from pipeline.embedservice import routing
from pipeline.embedservice.errors import (
    EmbedServiceError,
    NotOwnerError,
    TableSchemaError,
    UnknownServiceTableError,
    VersionGapError,
    VersionUnavailableError,
)
from pipeline.embedservice.idset import IdSet
from pipeline.publishing.array_bundle import decode_bundle, encode_bundle

I64 = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]
B = npt.NDArray[np.bool_]
_SGD = OptimizerConfig("sgd", lr=1.0)
_MAINTAIN_EVERY = 64


@dataclass(frozen=True)
class TableSchema:
    """A served table: its width, its initialiser (as the owner's ``TableConfig``), its owner.

    >>> TableSchema("users", 2, seed=1, init_scale=0.5, owner="ctr").initial(
    ...     np.array([7], np.int64)).shape
    (1, 2)
    """

    name: str
    dim: int
    seed: int = 0
    init_scale: float = 0.05
    owner: str = ""

    @classmethod
    def from_table(cls, table: TableConfig, owner: str) -> TableSchema:
        """The schema of an owner's store table."""
        return cls(table.name, table.dim, table.seed, table.init_scale, owner)

    def initial(self, ids: I64) -> F32:
        """Initial values of ``ids`` (what the owner's store gives an id it has not seen)."""
        return initial_values(ids, self.dim, self.seed, self.init_scale)

    def same_shape(self, other: TableSchema) -> bool:
        """Whether ``other`` describes the same rows (owner aside)."""
        return (self.dim, self.seed, self.init_scale) == (other.dim, other.seed, other.init_scale)


@dataclass(frozen=True)
class ShardSettings:
    """Where a shard lives and how it behaves.

    ``keep_versions``: published versions a reader may still ask for besides the newest.
    ``checkpoint_every``: updates between store flushes (the log is replayed past the last).
    ``dram_budget_bytes``: DRAM tier of the store, split over tables (``None``: unbounded).
    """

    path: str
    shard: int = 0
    num_shards: int = 1
    keep_versions: int = 4
    checkpoint_every: int = 8
    store_shards: int = 1
    dram_budget_bytes: int | None = None


@dataclass(frozen=True)
class RowUpdate:
    """The owner's update of one table to ``version``: upserted rows and deleted ids.

    ``base`` is the version it was made against (``None``: do not check).
    """

    table: str
    writer: str
    version: int
    base: int | None
    ids: I64
    emb: F32
    tombstones: I64 = field(default_factory=lambda: np.empty(0, np.int64))


@dataclass(frozen=True)
class Lookup:
    """Rows of a lookup at ``version``; ``found[i]`` is False where the initial value stood in."""

    version: int
    emb: F32
    found: B


@dataclass(frozen=True)
class _Undo:
    version: int
    base: int
    ids: I64  # sorted, unique: every id the update touched
    old: F32  # their values before it
    existed: B  # whether they had a row before it


@dataclass
class _Table:
    schema: TableSchema
    version: int = 0
    checkpointed: int = 0
    members: IdSet = field(default_factory=IdSet)
    undo: list[_Undo] = field(default_factory=list)

    @property
    def oldest(self) -> int:
        return self.undo[0].base if self.undo else self.version


def _member(sorted_ids: I64, ids: I64) -> tuple[B, I64]:
    pos = np.searchsorted(sorted_ids, ids)
    if not len(sorted_ids):
        return np.zeros(len(ids), np.bool_), pos
    pos = np.minimum(pos, len(sorted_ids) - 1)
    return sorted_ids[pos] == ids, pos


class ServiceShard:
    """The rows of one shard of every served table (see the module docstring)."""

    def __init__(self, settings: ShardSettings) -> None:
        self.settings = settings
        self.path = Path(settings.path)
        self._tables: dict[str, _Table] = {}
        self._store: EmbeddingStore | None = None
        self._lock = threading.Lock()
        self._lookups = 0
        self.rows_looked_up = 0

    # -- life cycle ----------------------------------------------------------
    def open(self) -> ServiceShard:
        """Open the store, then replay the log past the checkpoint."""
        self.path.mkdir(parents=True, exist_ok=True)
        state_path = self.path / "state.json"
        if state_path.exists():
            state = json.loads(state_path.read_text())
            for entry in state["tables"]:
                schema = TableSchema(**entry["schema"])
                self._tables[schema.name] = _Table(
                    schema, int(entry["version"]), int(entry["version"])
                )
        self._open_store()
        for name, table in self._tables.items():
            for version, path in self._wal(name):
                meta, arrays = decode_bundle(path.read_bytes(), str(path))
                base = int(meta["base"])
                if version > table.version:
                    update = RowUpdate(
                        name, table.schema.owner, version, base,
                        arrays["ids"], arrays["emb"], arrays["tombstones"],
                    )  # fmt: skip
                    self._write(table, update)
                undo = _Undo(
                    version, base, arrays["undo.ids"], arrays["undo.old"], arrays["undo.existed"]
                )
                self._push_undo(table, undo)
            table.members = IdSet(self._scan_ids(name))
        return self

    def _open_store(self) -> None:
        budget = self.settings.dram_budget_bytes
        share = None if budget is None or not self._tables else budget // len(self._tables)
        tables = tuple(
            TableConfig(
                t.schema.name,
                t.schema.dim,
                _SGD,
                t.schema.seed,
                t.schema.init_scale,
                hot_bytes=share,
            )
            for t in self._tables.values()
        )
        cfg = StoreConfig(
            str(self.path / "store"),
            tables,
            num_shards=self.settings.store_shards,
            parallel_shards=False,
        )
        self._store = EmbeddingStore(cfg).open()

    def _scan_ids(self, name: str) -> I64:
        parts = [ids for ids, _ in self.store.export_rows(name)]
        return np.unique(np.concatenate(parts)) if parts else np.empty(0, np.int64)

    def close(self) -> None:
        """Checkpoint and close the store."""
        with self._lock:
            if self._store is None:
                return
            self._checkpoint()
            self._store.close()
            self._store = None

    @property
    def store(self) -> EmbeddingStore:
        """The open store."""
        if self._store is None:
            raise EmbedServiceError(f"service shard at {self.path} is not open")
        return self._store

    # -- tables --------------------------------------------------------------
    def _table(self, name: str) -> _Table:
        try:
            return self._tables[name]
        except KeyError:
            raise UnknownServiceTableError(name, list(self._tables)) from None

    def schemas(self) -> list[TableSchema]:
        """Every served table."""
        return [t.schema for t in self._tables.values()]

    def versions(self) -> dict[str, tuple[int, int]]:
        """Table -> (oldest, newest) version a lookup may ask for."""
        with self._lock:
            return {n: (t.oldest, t.version) for n, t in self._tables.items()}

    def rows(self, name: str) -> int:
        """Rows the shard holds of table ``name``."""
        with self._lock:
            return len(self._table(name).members)

    def stored_rows(self, name: str) -> int:
        """Rows the shard's store really holds of ``name`` (flushes, then counts every key)."""
        with self._lock:
            self._table(name)
            self.store.flush()
            return int(self.store.stats(name, count_cold=True).cold_rows or 0)

    def register(self, schema: TableSchema) -> None:
        """Serve a new table (idempotent for the same schema and owner)."""
        with self._lock:
            have = self._tables.get(schema.name)
            if have is not None:
                if not have.schema.same_shape(schema):
                    raise TableSchemaError(schema.name, have.schema, schema)
                if have.schema.owner != schema.owner:
                    raise NotOwnerError(schema.name, have.schema.owner, schema.owner)
                return
            self._checkpoint()
            self.store.close()
            self._tables[schema.name] = _Table(schema)
            self._save_state()
            self._open_store()

    # -- updates -------------------------------------------------------------
    def apply(self, update: RowUpdate) -> int:
        """Apply the owner's update (idempotent per version); returns the shard's version."""
        name, version, base = update.table, update.version, update.base
        with self._lock:
            table = self._table(name)
            if update.writer != table.schema.owner:
                raise NotOwnerError(name, table.schema.owner, update.writer)
            if version <= table.version:
                return table.version
            if base is not None and base != table.version:
                raise VersionGapError(name, self.settings.shard, table.version, base)
            ids = np.ascontiguousarray(update.ids, np.int64)
            tombs = np.ascontiguousarray(update.tombstones, np.int64)
            emb = np.ascontiguousarray(update.emb, np.float32).reshape(len(ids), table.schema.dim)
            if len(np.unique(ids)) != len(ids):
                raise EmbedServiceError(f"table {name!r} v{version}: an id is upserted twice")
            update = RowUpdate(name, update.writer, version, table.version, ids, emb, tombs)
            undo = self._undo_record(table, update)
            wal = self.path / "wal" / name
            wal.mkdir(parents=True, exist_ok=True)
            arrays: dict[str, npt.NDArray[Any]] = {
                "ids": ids,
                "emb": emb,
                "tombstones": tombs,
                "undo.ids": undo.ids,
                "undo.old": undo.old,
                "undo.existed": undo.existed,
            }
            blob = encode_bundle({"version": version, "base": table.version}, arrays)
            tmp = wal / f"{version:016d}.tmp"
            with open(tmp, "wb") as fh:
                fh.write(blob)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, wal / f"{version:016d}.fshb")
            self._write(table, update)
            self._push_undo(table, undo)
            if table.version - table.checkpointed >= self.settings.checkpoint_every:
                self._checkpoint()
            return table.version

    def _undo_record(self, table: _Table, update: RowUpdate) -> _Undo:
        """What reading at the version before ``update`` needs once it is applied."""
        touched = np.union1d(update.ids, update.tombstones)
        existed = table.members.contains(touched)
        old = np.zeros((len(touched), table.schema.dim), np.float32)
        if existed.any():
            _, rows = self.store.read_rows(table.schema.name, touched[existed])
            old[existed] = rows["emb"]
        return _Undo(update.version, table.version, touched, old, existed)

    def _push_undo(self, table: _Table, undo: _Undo) -> None:
        table.undo.append(undo)
        del table.undo[: max(0, len(table.undo) - self.settings.keep_versions)]

    def _write(self, table: _Table, update: RowUpdate) -> None:
        name, store = table.schema.name, self.store
        ids, emb, tombs, version = update.ids, update.emb, update.tombstones, update.version
        if len(tombs):
            store.delete_rows(name, tombs)
            table.members.discard(tombs)
            if table.members.dead > max(len(table.members), 1 << 16):  # mostly dead: rebuild
                table.members = IdSet(self._scan_ids(name))
        if len(ids):
            block = RowLayout(table.schema.dim, 0).empty(len(ids))
            block["emb"], block["version"] = emb, version
            block["last_step"], block["last_time"], block["freq"], block["epoch"] = 0, 0.0, 0, 0
            store.import_rows(name, ids, block)
            table.members.add(ids)
        table.version = version

    def _wal(self, name: str) -> list[tuple[int, Path]]:
        wal = self.path / "wal" / name
        if not wal.exists():
            return []
        return sorted((int(p.stem), p) for p in wal.glob("*.fshb"))

    def _checkpoint(self) -> None:
        """Flush the store, record the versions, drop the log they cover (lock held)."""
        if self._store is None:
            return
        self._store.flush()
        for table in self._tables.values():
            table.checkpointed = table.version
        self._save_state()
        for name, table in self._tables.items():
            wal = self._wal(name)
            keep = (
                {v for v, _ in wal[-self.settings.keep_versions :]}
                if self.settings.keep_versions
                else set()
            )
            for version, path in wal:
                if version <= table.checkpointed and version not in keep:
                    path.unlink(missing_ok=True)  # the newest stay: their undo records

    def _save_state(self) -> None:
        state: dict[str, Any] = {
            "tables": [
                {"schema": asdict(t.schema), "version": t.checkpointed}
                for t in self._tables.values()
            ]
        }
        tmp = self.path / "state.json.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(state, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path / "state.json")

    # -- lookups -------------------------------------------------------------
    def lookup(
        self, name: str, ids: I64, version: int | None = None, unique: bool = False
    ) -> Lookup:
        """Rows of ``ids`` at ``version`` (``None``: the newest); never stores a row.

        ``unique``: the caller vouches that ``ids`` holds no id twice (the store skips its
        dedup pass).
        """
        with self._lock:
            table = self._table(name)
            v = table.version if version is None else version
            if not table.oldest <= v <= table.version:
                raise VersionUnavailableError(
                    name, self.settings.shard, v, table.oldest, table.version
                )
            ids = np.ascontiguousarray(ids, np.int64)
            known = table.members.contains(ids)
            if known.all():  # the common case: no masked copies
                emb = self._stored(name, ids, unique)
            else:
                emb = np.empty((len(ids), table.schema.dim), np.float32)
                emb[~known] = table.schema.initial(ids[~known])
                if known.any():
                    emb[known] = self._stored(name, ids[known], unique)
            found = known.copy()
            for rec in reversed(table.undo):
                if rec.version <= v:
                    break
                hit, pos = _member(rec.ids, ids)
                at = np.flatnonzero(hit)
                existed = rec.existed[pos[at]]
                emb[at[existed]] = rec.old[pos[at[existed]]]
                emb[at[~existed]] = table.schema.initial(ids[at[~existed]])
                found[at] = existed
            self._lookups += 1
            self.rows_looked_up += len(ids)
            if self._lookups % _MAINTAIN_EVERY == 0:
                self.store.end_step()  # rows read into DRAM go back under its budget
            return Lookup(v, emb, found)

    def _stored(self, name: str, ids: I64, unique: bool) -> F32:
        """Stored rows of ``ids`` (a fresh array; none is pinned or created)."""
        if unique:
            return self.store._lookup_unique(name, ids, False)
        writable = ids if ids.flags.writeable else ids.copy()  # torch wants writable ids
        out: F32 = self.store.lookup(name, writable, pin=False).numpy()
        return out

    # -- re-sharding ---------------------------------------------------------
    def reshard_from(self, sources: Sequence[str | Path]) -> dict[str, int]:
        """Fill this empty shard with its ids from every shard of a service with another count.

        ``sources``: the directories of all the old service's shards (stopped: their stores
        are opened here). Each table comes over at the newest version every old shard holds
        (read through their undo records, so a publication half applied at shutdown is left
        out), with the rows whose ids route to this shard under its ``num_shards``; older
        versions do not come over. Returns table -> version.
        """
        if self._tables:
            raise EmbedServiceError(
                f"re-sharding needs an empty shard directory; {self.path} already serves "
                f"{sorted(self._tables)}"
            )
        olds = [ServiceShard(ShardSettings(str(src))) for src in sources]
        if not olds:
            raise EmbedServiceError("re-sharding needs the old service's shard directories")
        try:
            for old in olds:
                old.open()
            schemas = {sc.name: sc for old in olds for sc in old.schemas()}
            target = {
                name: min(old.versions().get(name, (0, 0))[1] for old in olds) for name in schemas
            }
            for schema in schemas.values():
                self.register(schema)
            with self._lock:
                for name, version in target.items():
                    table = self._table(name)
                    for old in olds:
                        if name in old._tables:
                            self._take_rows(old, table, version)
                    table.version = version
                self._checkpoint()
        finally:
            for old in olds:
                old.close()
        return target

    def _take_rows(self, old: ServiceShard, table: _Table, version: int) -> None:
        """Copy ``old``'s rows of ``table`` at ``version`` that route here (lock held)."""
        name, me = table.schema.name, self.settings
        parts = [ids for ids, _ in old.store.export_rows(name)]
        ids = np.unique(np.concatenate(parts)) if parts else np.empty(0, np.int64)
        # ids the old shard deleted after ``version`` are in its undo records, not its store
        for rec in old._tables[name].undo:
            if rec.version > version:
                ids = np.union1d(ids, rec.ids[rec.existed])
        ids = ids[routing.shard_of(ids, me.num_shards) == me.shard]
        for start in range(0, len(ids), 65536):
            chunk = ids[start : start + 65536]
            got = old.lookup(name, chunk, version, unique=True)
            keep = chunk[got.found]
            update = RowUpdate(name, table.schema.owner, version, None, keep, got.emb[got.found])
            self._write(table, update)

    def remove(self) -> None:
        """Delete the shard's directory (closed shards only)."""
        if self._store is not None:
            raise EmbedServiceError(f"service shard at {self.path} is open")
        shutil.rmtree(self.path, ignore_errors=True)
