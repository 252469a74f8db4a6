"""The tiered embedding store: tables sharded by id hash, DRAM over RocksDB, fused optimizers.

::

    EmbeddingStore(config).open()
      ├── table "ads"   ── shard 0: ShardTable(DRAM tier ─► RocksDB cf "t.ads" of shard-0000)
      │                 ── shard 1: ...
      └── table "users" ── shard 0 ... N-1
    <path>/schema.json      tables and shard count the directory was written with
    <path>/shard-NNNN/      one RocksDB instance per shard

A training step is ``lookup`` (or the autograd module's forward) for every table, then
``apply_gradients`` and ``end_step`` (or ``loss.backward(); store.step()``). Everything that
moves rows between tiers (migration, expiry, flush, export) acts at a step boundary.

>>> import tempfile, numpy as np
>>> from embedding_store.config import StoreConfig, TableConfig, OptimizerConfig
>>> with tempfile.TemporaryDirectory() as d:
...     cfg = StoreConfig(d, (TableConfig("ads", 4, OptimizerConfig("sgd", lr=1.0)),), num_shards=2)
...     with EmbeddingStore(cfg) as store:
...         ids = np.array([3, 5, 3], dtype=np.int64)
...         before = store.lookup("ads", ids)
...         _ = store.apply_gradients("ads", ids, np.ones((3, 4), np.float32))
...         store.end_step()
...         after = store.lookup("ads", ids)
>>> [round(float(x), 4) for x in (before - after)[:, 0]]
[2.0, 1.0, 2.0]
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import numpy as np
import torch

from embedding_store.admission import SIGHTING_DTYPE, SightingBlock
from embedding_store.chain import SlabChain
from embedding_store.config import StoreConfig, TableConfig
from embedding_store.dedup import unique, unique_inverse
from embedding_store.errors import (
    InvalidIdsError,
    SchemaMismatchError,
    ShapeError,
    StorageError,
    StoreClosedError,
    StoreNotOpenError,
    UnknownTableError,
)
from embedding_store.initializers import hash_ids
from embedding_store.prefetch import Prefetcher, PrefetchTicket
from embedding_store.rocks import RocksMemory, RocksShard
from embedding_store.rows import RowLayout
from embedding_store.shard import ShardTable
from embedding_store.slab import open_slab
from embedding_store.staleness import StalenessClock
from embedding_store.tier import RowBlock
from embedding_store.types import FloatArray, IdArray, SlotArray
from embedding_store.writeback import WriteBack

FORMAT_VERSION = 1
SHARD_SALT = 0x5EED_5A1D


@dataclass(frozen=True)
class TableStats:
    """Counters of one table, summed over shards."""

    hot_rows: int
    cold_rows: int | None
    hits: int
    misses: int
    cold_reads: int
    created: int
    evicted: int
    written_back: int
    prefetched: int
    slab_rows: int = 0  # rows in the slab tiers (0 without a slab)
    slab_demoted: int = 0  # rows the slabs sent down to RocksDB

    @property
    def lookups(self) -> int:
        """Ids requested by lookups."""
        return self.hits + self.misses

    @property
    def hit_ratio(self) -> float:
        """Fraction of looked-up ids served without consulting RocksDB (by prefetch or step)."""
        return max(0.0, 1.0 - self.cold_reads / self.lookups) if self.lookups else 0.0

    @property
    def step_hit_ratio(self) -> float:
        """Fraction of looked-up ids already in DRAM when the step asked (prefetch counts)."""
        return self.hits / self.lookups if self.lookups else 0.0


@dataclass(frozen=True)
class MigrationReport:
    """What one migration did."""

    promoted: int
    demoted: int
    seconds: float


@dataclass
class _Pending:
    table: str
    ids: IdArray
    weight: torch.Tensor


@dataclass
class _StepState:
    pins: list[tuple[ShardTable, SlotArray]] = field(default_factory=list)
    pending: list[_Pending] = field(default_factory=list)
    # the shard split of the ids each table's lookup read this step, reused by its gradients
    splits: dict[str, tuple[IdArray, list[SlotArray]]] = field(default_factory=dict)


class EmbeddingStore:
    """A sharded, tiered store of embedding tables. Constructing it does no I/O; ``open()`` does."""

    def __init__(self, config: StoreConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self._shards: list[RocksShard] = []
        self._tables: dict[str, list[ShardTable]] = {}
        self._version = 0
        self._tombstones: dict[str, list[tuple[int, IdArray]]] = {}
        self._local = threading.local()  # each trainer thread has its own step state
        self._boundary = threading.RLock()
        self._pool: ThreadPoolExecutor | None = None
        self._prefetcher: Prefetcher | None = None
        self._writeback = WriteBack()
        self.staleness_clock = StalenessClock(config.staleness)
        self._opened = False
        self._closed = False
        self.prefetch_stall_seconds = 0.0

    @property
    def _step(self) -> _StepState:
        state: _StepState | None = getattr(self._local, "step", None)
        if state is None:
            state = self._local.step = _StepState()
        return state

    # -- lifecycle -----------------------------------------------------------
    def open(self) -> EmbeddingStore:
        """Create or reopen the directory, check its schema, open every shard."""
        if self._closed:
            raise StoreClosedError(f"store at {self.config.path!r}")
        if self._opened:
            return self
        cfg = self.config
        try:
            os.makedirs(cfg.path, exist_ok=True)
        except OSError as err:
            raise StorageError(cfg.path, "create directory", err) from err
        self._check_schema()
        names = [t.name for t in cfg.tables]
        memory = RocksMemory(
            cfg.block_cache_bytes,
            cfg.memtable_budget_bytes,
            column_families=cfg.num_shards * (len(names) + 1),  # + each shard's _meta
        )
        self._shards = [
            RocksShard(
                os.path.join(cfg.path, f"shard-{i:04d}"),
                names,
                cfg.write_buffer_bytes,
                cfg.sync_writes,
                memory=memory,
                sst=cfg.sst,
            )
            for i in range(cfg.num_shards)
        ]
        for shard in self._shards:
            shard.open()
        for t in cfg.tables:
            layout = RowLayout(t.dim, t.state_dim)
            budget = t.hot_budget_rows(layout.row_bytes)
            per_shard = None if budget is None else -(-budget // cfg.num_shards)
            self._tables[t.name] = [
                ShardTable(t, db, per_shard, cfg.lfu_decay, open_slab(cfg, t, i, layout))
                for i, db in enumerate(self._shards)
            ]
            self._tombstones[t.name] = []
        self._load_meta()
        if cfg.parallel_shards and cfg.num_shards > 1:
            self._pool = ThreadPoolExecutor(min(cfg.num_shards, 8), thread_name_prefix="shard")
        self._prefetcher = Prefetcher(self)
        self._opened = True
        return self

    def close(self) -> None:
        """Flush dirty rows and close every shard (idempotent)."""
        if self._closed or not self._opened:
            self._closed = True
            return
        try:
            if self._prefetcher is not None:
                self._prefetcher.stop()
            self.flush()
            self._writeback.stop()
        finally:
            self._release()

    def abandon(self) -> None:
        """Close without writing anything more, after a disk failure (a :class:`StorageError`).

        Dirty DRAM rows not yet in RocksDB are dropped and errors from RocksDB's own close are
        ignored: the directory stays as the failure left it, so restore a checkpoint into it
        (``clear=True``) before training on it again. Idempotent; nothing to do after
        ``close()``.
        """
        if self._closed or not self._opened:
            self._closed = True
            return
        try:
            if self._prefetcher is not None:
                self._prefetcher.stop()
            try:
                self._writeback.stop()
            except StorageError:
                pass  # the failure being abandoned
        finally:
            self._release(ignore_errors=True)

    def _release(self, ignore_errors: bool = False) -> None:
        """Stop the shard pool and close every shard (each one, even if another fails)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        for sts in self._tables.values():
            for st in sts:
                if isinstance(st.cold, SlabChain):
                    st.cold.slab.close()  # a cache: its file goes with it
        first: StorageError | None = None
        for shard in self._shards:
            try:
                shard.close()
            except StorageError as err:
                first = first or err
        self._closed = True
        if first is not None and not ignore_errors:
            raise first

    def __enter__(self) -> EmbeddingStore:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _check_schema(self) -> None:
        cfg = self.config
        path = os.path.join(cfg.path, "schema.json")
        wanted = {
            "format": FORMAT_VERSION,
            "num_shards": cfg.num_shards,
            "tables": {t.name: t.schema() for t in cfg.tables},
        }
        if os.path.exists(path):
            with open(path, encoding="utf-8") as fh:
                stored = json.load(fh)
            if stored.get("num_shards") != cfg.num_shards:
                raise SchemaMismatchError(
                    cfg.path,
                    "*",
                    f"num_shards={stored.get('num_shards')}",
                    f"num_shards={cfg.num_shards}",
                )
            for name, schema in wanted["tables"].items():  # type: ignore[attr-defined]
                old = stored.get("tables", {}).get(name)
                if old is not None and old != schema:
                    raise SchemaMismatchError(cfg.path, name, old, schema)
            stored_tables = stored.get("tables", {})
            stored_tables.update(wanted["tables"])  # new tables may be added
            wanted["tables"] = stored_tables
        tmp = path + ".tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(wanted, fh, indent=2, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError as err:
            raise StorageError(cfg.path, "write schema.json", err) from err

    def _load_meta(self) -> None:
        raw = self._shards[0].get_meta("state")
        if raw is None:
            return
        meta = json.loads(raw)
        self._version = int(meta["version"])
        for name, epoch in meta.get("epochs", {}).items():
            for st in self._tables.get(name, []):
                st.epoch = int(epoch)

    def _save_meta(self) -> None:
        meta = {
            "version": self._version,
            "epochs": {name: sts[0].epoch for name, sts in self._tables.items()},
        }
        self._shards[0].put_meta({"state": json.dumps(meta).encode()})

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError(f"store at {self.config.path!r}")
        if not self._opened:
            raise StoreNotOpenError(f"store at {self.config.path!r}")

    # -- introspection -------------------------------------------------------
    @property
    def version(self) -> int:
        """Steps completed (the version the next step's writes will carry minus one)."""
        return self._version

    @property
    def tables(self) -> tuple[TableConfig, ...]:
        """The store's tables."""
        return self.config.tables

    def _shard_tables(self, table: str) -> list[ShardTable]:
        self._check_open()
        try:
            return self._tables[table]
        except KeyError:
            raise UnknownTableError(table, list(self._tables)) from None

    def stats(self, table: str, count_cold: bool = False) -> TableStats:
        """Rows per tier and hit/miss counters of ``table``."""
        sts = self._shard_tables(table)
        return TableStats(
            hot_rows=sum(s.hot.count() for s in sts),
            cold_rows=sum(s.cold.count() for s in sts) if count_cold else None,
            hits=sum(s.counters.hits for s in sts),
            misses=sum(s.counters.misses for s in sts),
            cold_reads=sum(s.counters.cold_reads for s in sts),
            created=sum(s.counters.created for s in sts),
            evicted=sum(s.counters.evicted for s in sts),
            written_back=sum(s.counters.written_back for s in sts),
            prefetched=sum(s.counters.prefetched for s in sts),
            slab_rows=sum(s.cold.slab.count() for s in sts if isinstance(s.cold, SlabChain)),
            slab_demoted=sum(s.cold.demoted for s in sts if isinstance(s.cold, SlabChain)),
        )

    # -- ids and sharding ----------------------------------------------------
    def _ids(self, table: str, ids: object) -> IdArray:
        if isinstance(ids, torch.Tensor):
            if ids.dtype != torch.int64:
                raise InvalidIdsError(table, f"got a tensor of {ids.dtype}")
            arr = ids.detach().cpu().numpy()
        elif isinstance(ids, np.ndarray):
            if ids.dtype != np.int64:
                raise InvalidIdsError(table, f"got an array of {ids.dtype}")
            arr = ids
        else:
            raise InvalidIdsError(table, f"got {type(ids).__name__}")
        if arr.ndim != 1:
            raise InvalidIdsError(table, f"got shape {tuple(arr.shape)}")
        return arr

    def shard_of(self, ids: IdArray) -> np.ndarray[Any, np.dtype[np.int64]]:
        """The shard of each id."""
        return (hash_ids(ids, SHARD_SALT) % np.uint64(self.config.num_shards)).astype(np.int64)

    def _split(self, ids: IdArray) -> list[np.ndarray[Any, np.dtype[np.int64]]]:
        """Positions of ``ids`` per shard."""
        n = self.config.num_shards
        if n == 1:
            return [np.arange(len(ids), dtype=np.int64)]
        shard = self.shard_of(ids)
        order = np.argsort(shard, kind="stable")
        bounds = np.cumsum(np.bincount(shard, minlength=n))[:-1]
        return list(np.split(order, bounds))

    def _map(self, fn: Callable[[int], Any], n: int, rows: int | None = None) -> list[Any]:
        """``fn`` of every shard: inline, or on the shard pool for ``rows`` >= the threshold.

        Handing a shard's work to a thread costs more than a small batch's work itself
        (``StoreConfig.parallel_min_rows``); ``rows=None`` (maintenance) always may use it.
        """
        if self._pool is None or (rows is not None and rows < self.config.parallel_min_rows):
            return [fn(i) for i in range(n)]
        return list(self._pool.map(fn, range(n)))

    def _split_unique(self, table: str, uniq: IdArray) -> list[SlotArray]:
        """``_split(uniq)``, shared by a table's lookup and its gradients in the same step."""
        step = self._step
        cached = step.splits.get(table)
        if cached is not None and cached[0] is uniq:
            return cached[1]
        parts = self._split(uniq)
        step.splits[table] = (uniq, parts)
        return parts

    # -- training ------------------------------------------------------------
    def lookup(self, table: str, ids: object, pin: bool = True) -> torch.Tensor:
        """Embeddings of ``ids`` (any order, duplicates allowed) as a float32 tensor.

        Rows read are pinned in DRAM until ``end_step`` unless ``pin`` is False.
        """
        arr = self._ids(table, ids)
        uniq, inverse = unique_inverse(arr)
        out = self._lookup_unique(table, uniq, pin)
        return torch.from_numpy(out[inverse])

    def _lookup_unique(self, table: str, uniq: IdArray, pin: bool) -> FloatArray:
        sts = self._shard_tables(table)
        dim = sts[0].table.dim
        out = np.empty((len(uniq), dim), dtype=np.float32)
        parts = self._split_unique(table, uniq) if pin else self._split(uniq)
        step, now = self._version + 1, self.clock()

        def one(i: int) -> tuple[int, SlotArray]:
            pos = parts[i]
            emb, slots = sts[i].fetch(uniq[pos], step, now, pin=pin)
            out[pos] = emb
            return i, slots

        pins = self._step.pins
        for i, slots in self._map(one, len(sts), len(uniq)):
            if pin:
                pins.append((sts[i], slots))
        return out

    def apply_gradients(self, table: str, ids: object, grads: object) -> int:
        """Apply ``table``'s optimizer to the rows of ``ids``; duplicate ids' grads are summed.

        Returns how many rows were written (unadmitted ids are skipped).
        """
        arr = self._ids(table, ids)
        sts = self._shard_tables(table)
        dim = sts[0].table.dim
        g = grads.detach().cpu().numpy() if isinstance(grads, torch.Tensor) else grads
        if not isinstance(g, np.ndarray) or g.dtype != np.float32:
            raise ShapeError(
                table, f"gradients must be float32, got {getattr(g, 'dtype', type(g))}"
            )
        if g.shape != (len(arr), dim):
            raise ShapeError(table, f"gradients must have shape ({len(arr)}, {dim}), got {g.shape}")
        uniq, inverse = unique_inverse(arr)
        if len(uniq) != len(arr):
            summed = torch.zeros((len(uniq), dim), dtype=torch.float32)
            summed.index_add_(0, torch.from_numpy(inverse), torch.from_numpy(g))
            g = summed.numpy()
        else:
            g = g[np.argsort(arr, kind="stable")] if len(arr) else g
        return self._apply_unique(table, uniq, g)

    def _apply_unique(self, table: str, uniq: IdArray, grads: FloatArray) -> int:
        sts = self._shard_tables(table)
        parts = self._split_unique(table, uniq)
        version, now = self._version + 1, self.clock()

        def one(i: int) -> int:
            pos = parts[i]
            return sts[i].apply(uniq[pos], grads[pos], version, version, now)

        return int(sum(self._map(one, len(sts), len(uniq))))

    def register(self, table: str, uniq_ids: IdArray, weight: torch.Tensor) -> None:
        """Remember a leaf tensor of rows whose ``.grad`` ``step()`` will apply (for modules)."""
        self._step.pending.append(_Pending(table, uniq_ids, weight))

    def step(self, worker: int | None = None) -> int:
        """Apply the gradients of every registered lookup, then end the step."""
        written = 0
        for p in self._step.pending:
            if p.weight.grad is not None:
                g = p.weight.grad.detach().cpu().numpy().astype(np.float32, copy=False)
                written += self._apply_unique(p.table, p.ids, g)
        self._step.pending.clear()
        self.end_step(worker)
        return written

    def register_worker(self) -> int:
        """Join the bounded-staleness clock as one more trainer; returns the worker id.

        Workers call ``begin_step(worker)`` before their lookups and ``end_step(worker)``
        (or ``step(worker)``) after their updates; none reads more than ``staleness``
        steps behind the slowest. Single-trainer use needs none of this.
        """
        return self.staleness_clock.register()

    def begin_step(self, worker: int, timeout: float | None = None) -> int:
        """Wait until ``worker`` may start a step; returns its lead over the slowest worker."""
        self._check_open()
        return self.staleness_clock.begin(worker, timeout)

    def end_step(self, worker: int | None = None) -> None:
        """Close the step: release its pins, bump the version, bring DRAM back under budget."""
        self._check_open()
        with self._boundary:
            for st, slots in self._step.pins:
                st.unpin(slots)
            self._local.step = _StepState()
            self._version += 1
            slack = self.config.evict_slack
            for sts in self._tables.values():
                for st in sts:
                    if st.start_eviction(slack):
                        self._writeback.submit(st)
                    budget = st.budget_rows
                    if budget is not None and st.hot.count() > 2 * budget + 4096:
                        self._writeback.drain()  # back-pressure: the writer fell behind
        if worker is not None:
            self.staleness_clock.end(worker)

    # -- prefetch ------------------------------------------------------------
    def prefetch(self, batches: Sequence[Mapping[str, object]]) -> PrefetchTicket:
        """Load the rows of upcoming batches into DRAM in the background and pin them.

        Release the ticket once those batches are trained (``ticket.release()``).
        """
        self._check_open()
        assert self._prefetcher is not None
        wanted: dict[str, IdArray] = {}
        for batch in batches:
            for table, ids in batch.items():
                arr = self._ids(table, ids)
                self._shard_tables(table)
                wanted[table] = np.concatenate([wanted.get(table, np.empty(0, np.int64)), arr])
        return self._prefetcher.submit({t: unique(i) for t, i in wanted.items()})

    # -- maintenance at step boundaries -------------------------------------
    @contextmanager
    def step_boundary(self) -> Iterator[int]:
        """Hold off ``end_step`` while the body reads a consistent state; yields the version."""
        self._check_open()
        with self._boundary:
            self._writeback.drain()
            yield self._version

    def migrate(self, scan_limit: int | None = None) -> MigrationReport:
        """Promote the most-used cold rows and demote the least-used hot ones, per shard."""
        t0 = time.perf_counter()
        promoted = demoted = 0
        with self.step_boundary():
            for sts in self._tables.values():
                for p, d in self._map(lambda i, s=sts: s[i].migrate(scan_limit), len(sts)):  # type: ignore[misc]
                    promoted += p
                    demoted += d
        return MigrationReport(promoted, demoted, time.perf_counter() - t0)

    def age(self) -> None:
        """Age every LFU count by ``lfu_decay`` (O(1))."""
        with self.step_boundary():
            for sts in self._tables.values():
                for st in sts:
                    st.advance_epoch()

    def demote(self, table: str, rows: int) -> int:
        """Move about ``rows`` least-used unpinned rows of ``table`` to RocksDB."""
        sts = self._shard_tables(table)
        with self.step_boundary():
            per = -(-rows // len(sts))
            return int(sum(st.demote(per) for st in sts))

    def expire(self, now: float | None = None) -> dict[str, IdArray]:
        """Delete rows not seen within their table's expiry; record tombstones. Returns ids."""
        out: dict[str, IdArray] = {}
        with self.step_boundary():
            now = self.clock() if now is None else now
            for t in self.config.tables:
                if t.expire_after_steps is None and t.expire_after_seconds is None:
                    continue
                min_step = (
                    None if t.expire_after_steps is None else self._version - t.expire_after_steps
                )
                min_time = None if t.expire_after_seconds is None else now - t.expire_after_seconds
                sts = self._tables[t.name]
                parts = [st.expire(min_step, min_time) for st in sts]
                ids = np.sort(np.concatenate(parts)) if parts else np.empty(0, np.int64)
                if len(ids):
                    self._tombstones[t.name].append((self._version, ids))
                out[t.name] = ids
        return out

    def tombstones_since(self, table: str, version: int) -> IdArray:
        """Ids expired after ``version`` (and not re-created since)."""
        self._shard_tables(table)
        parts = [ids for v, ids in self._tombstones[table] if v > version]
        return np.unique(np.concatenate(parts)) if parts else np.empty(0, np.int64)

    def flush(self) -> int:
        """Write every dirty DRAM row and the store's state to RocksDB and sync it."""
        self._check_open()
        with self.step_boundary():
            written = 0
            for sts in self._tables.values():
                written += int(sum(self._map(lambda i, s=sts: s[i].flush(), len(sts))))  # type: ignore[misc]
            self._save_meta()
            for shard in self._shards:
                shard.flush()
            return written

    # -- export / import -----------------------------------------------------
    def written_since(self, table: str, version: int) -> tuple[IdArray, RowBlock]:
        """Every row of ``table`` written by a step after ``version`` (ids sorted)."""
        sts = self._shard_tables(table)
        with self.step_boundary():
            parts = [st.written_since(version) for st in sts]
        return _merge(parts, sts[0].layout)

    def export_rows(self, table: str, chunk: int = 65536) -> Iterator[tuple[IdArray, RowBlock]]:
        """Every row of ``table`` (flushes first; call inside ``step_boundary`` for a cut)."""
        sts = self._shard_tables(table)
        for st in sts:
            st.flush()
        for st in sts:
            yield from st.cold.iterate(chunk)

    def import_rows(self, table: str, ids: object, rows: RowBlock) -> None:
        """Overwrite rows of ``table`` (ids unique), routed to their shards."""
        arr = self._ids(table, ids)
        sts = self._shard_tables(table)
        if rows.dtype != sts[0].layout.dtype:
            raise ShapeError(table, f"rows have dtype {rows.dtype}, expected {sts[0].layout.dtype}")
        with self.step_boundary():
            for i, pos in enumerate(self._split(arr)):
                sts[i].write(arr[pos], rows[pos])

    def delete_rows(self, table: str, ids: object) -> None:
        """Remove rows of ``table`` from every tier (restoring a checkpoint's tombstones)."""
        arr = self._ids(table, ids)
        sts = self._shard_tables(table)
        with self.step_boundary():
            for i, pos in enumerate(self._split(arr)):
                sts[i].remove_rows(arr[pos])

    def state(self) -> dict[str, object]:
        """The store's small state: version and LFU aging epochs (for checkpoints)."""
        with self.step_boundary():
            return {
                "version": self._version,
                "epochs": {name: sts[0].epoch for name, sts in self._tables.items()},
            }

    def load_state(self, state: Mapping[str, object]) -> None:
        """Restore what :meth:`state` returned (at a step boundary, e.g. after a restore)."""
        with self.step_boundary():
            self._version = int(state["version"])  # type: ignore[call-overload]
            epochs = state.get("epochs", {})
            assert isinstance(epochs, Mapping)
            for name, epoch in epochs.items():
                for st in self._tables.get(name, []):
                    st.epoch = int(epoch)
            self._save_meta()

    def sightings(self, table: str) -> SightingBlock:
        """Ids of ``table`` seen but not admitted yet, with their counts (sorted by id).

        Training state like the rows: checkpoints carry it, so that a restored store admits
        the same ids at the same steps as the one that never stopped.
        """
        sts = self._shard_tables(table)
        with self.step_boundary():
            parts = [st.sightings.export() for st in sts]
        out = np.concatenate(parts) if parts else np.empty(0, SIGHTING_DTYPE)
        return out[np.argsort(out["id"], kind="stable")]

    def load_sightings(self, table: str, block: SightingBlock) -> None:
        """Replace ``table``'s sighting counts by ``block`` (as :meth:`sightings` returns)."""
        sts = self._shard_tables(table)
        block = np.asarray(block, dtype=SIGHTING_DTYPE)
        with self.step_boundary():
            for i, pos in enumerate(self._split(np.ascontiguousarray(block["id"]))):
                sts[i].sightings.load(block[pos])

    def read_rows(self, table: str, ids: object) -> tuple[np.ndarray[Any, Any], RowBlock]:
        """Full rows of ``ids`` without counting, pinning or creating them: ``(found, rows)``."""
        arr = self._ids(table, ids)
        sts = self._shard_tables(table)
        found = np.zeros(len(arr), dtype=np.bool_)
        rows = sts[0].layout.empty(len(arr))
        for i, pos in enumerate(self._split(arr)):
            f, r = sts[i].read(arr[pos])
            found[pos], rows[pos] = f, r
        return found, rows

    def truncate_write_log(self, version: int) -> None:
        """Forget which rows were written at or before ``version`` (after a checkpoint).

        Tombstones recorded before ``version`` go too; those recorded at ``version`` itself
        stay, since an expiry at that boundary may follow the checkpoint that named it.
        """
        for sts in self._tables.values():
            for st in sts:
                st.truncate_log(version)
        for name, tombs in self._tombstones.items():
            self._tombstones[name] = [(v, ids) for v, ids in tombs if v >= version]

    def lookup_stored(self, table: str, ids: object) -> torch.Tensor:
        """Embeddings of ``ids`` for a reader that never writes (a serving replica).

        Like ``lookup(pin=False)`` for stored rows, but an id without a row reads as an
        unadmitted id does and is not stored (nor counted towards admission).
        """
        arr = self._ids(table, ids)
        uniq, inverse = unique_inverse(arr)
        sts = self._shard_tables(table)
        out = np.empty((len(uniq), sts[0].table.dim), dtype=np.float32)
        step, now = self._version + 1, self.clock()
        for i, pos in enumerate(self._split(uniq)):
            out[pos] = sts[i].fetch_stored(uniq[pos], step, now)
        return torch.from_numpy(out[inverse])


def _merge(parts: list[tuple[IdArray, RowBlock]], layout: RowLayout) -> tuple[IdArray, RowBlock]:
    ids = np.concatenate([p[0] for p in parts]) if parts else np.empty(0, np.int64)
    rows = np.concatenate([p[1] for p in parts]) if parts else layout.empty(0)
    order = np.argsort(ids, kind="stable")
    return ids[order], rows[order]
