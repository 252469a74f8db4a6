"""The RocksDB (cold) tier, through rocksdict, embedded and on local disk.

One RocksDB instance per shard, one column family per table plus ``_meta``::

    <store>/shard-0003/        RocksDB instance of shard 3
        cf "t.ads"             key: id as big-endian int64   value: RowLayout bytes
        cf "t.users"
        cf "_meta"             store state (step, aging epochs, tombstones)

rocksdict releases the GIL inside multi-get and write-batch calls, so a prefetch or
write-back thread overlaps with training. How files are laid out (block size, Bloom filters,
compression) is :class:`~embedding_store.config.SstConfig`: with Bloom filters a cold read
loads one data block, from the file that holds its key, instead of one per recent file.

>>> import tempfile, numpy as np
>>> from embedding_store.rows import RowLayout
>>> with tempfile.TemporaryDirectory() as d:
...     db = RocksShard(d + "/s0", ["ads"])
...     db.open()
...     tier = db.tier("ads", RowLayout(2, 0))
...     rows = tier.layout.empty(1); rows["emb"] = [[1.5, 2.5]]
...     tier.put(np.array([42], dtype=np.int64), rows)
...     found, got = tier.get(np.array([42, 7], dtype=np.int64))
...     db.close()
>>> found.tolist(), got["emb"][0].tolist()
([True, False], [1.5, 2.5])
"""

from __future__ import annotations

import operator
import os
from collections import deque
from collections.abc import Callable, Iterator
from itertools import repeat
from typing import Any, TypeVar

import numpy as np
from rocksdict import (
    AccessType,
    BlockBasedOptions,
    Cache,
    DataBlockIndexType,
    DBCompressionType,
    Options,
    Rdict,
    ReadOptions,
    WriteBatch,
    WriteBufferManager,
    WriteOptions,
)

from embedding_store.config import SstConfig
from embedding_store.errors import StorageError, StoreClosedError, StoreNotOpenError
from embedding_store.rows import RowLayout, decode_keys, encode_keys
from embedding_store.tier import RowBlock
from embedding_store.types import BoolArray, IdArray

META_CF = "_meta"
MEMTABLE_BLOOM_RATIO = 0.02
T = TypeVar("T")


def table_cf(table: str) -> str:
    """Column family name of ``table``."""
    return f"t.{table}"


class RocksMemory:
    """One block cache and one memtable budget shared by every shard of a store.

    Without it each column family of each shard has its own 8 MB block cache and up to two
    ``write_buffer_bytes`` memtables, so RocksDB's memory grows with shards x tables and
    creeps up for minutes in a long run. Built by :meth:`EmbeddingStore.open` (no I/O).
    """

    def __init__(
        self,
        block_cache_bytes: int,
        memtable_budget_bytes: int | None,
        column_families: int = 1,
    ) -> None:
        self.block_cache_bytes = block_cache_bytes
        self.memtable_budget_bytes = memtable_budget_bytes
        self.column_families = max(1, column_families)
        self.cache = Cache(block_cache_bytes) if block_cache_bytes > 0 else None
        self.write_buffers = (
            WriteBufferManager(memtable_budget_bytes, False)
            if memtable_budget_bytes is not None
            else None
        )

    def apply(self, opts: Options, table: BlockBasedOptions | None = None) -> None:
        """Point ``opts`` (a DB's or a column family's) at the shared cache and budget.

        ``table`` is the table format to give the cache to (default: RocksDB's own).
        """
        table = table if table is not None else BlockBasedOptions()
        if self.cache is None:
            table.disable_cache()
        else:
            table.set_block_cache(self.cache)
        opts.set_block_based_table_factory(table)
        if self.write_buffers is not None:
            opts.set_write_buffer_manager(self.write_buffers)

    def memtable_bloom_ratio(self, write_buffer_bytes: int) -> float:
        """A memtable's Bloom filter, as RocksDB's fraction of ``write_buffer_bytes``.

        RocksDB allocates the filter when a memtable is created, sized from
        ``write_buffer_bytes``, and charges it to the budget. Under a budget shared by many
        column families a memtable is flushed long before it reaches ``write_buffer_bytes``,
        so the filter is sized for the memtable the budget allows (``budget / families``):
        sized for the full buffer, 12 families' filters alone filled a 4 MiB budget.

        >>> RocksMemory(0, None).memtable_bloom_ratio(16 << 20)
        0.02
        >>> round(RocksMemory(0, 4 << 20, column_families=12).memtable_bloom_ratio(16 << 20), 6)
        0.000417
        """
        if self.memtable_budget_bytes is None:
            return MEMTABLE_BLOOM_RATIO
        share = self.memtable_budget_bytes / self.column_families
        return MEMTABLE_BLOOM_RATIO * min(1.0, share / write_buffer_bytes)

    def usage(self) -> dict[str, int]:
        """Bytes in the block cache and in memtables now."""
        return {
            "block_cache": self.cache.get_usage() if self.cache is not None else 0,
            "memtables": self.write_buffers.get_usage() if self.write_buffers is not None else 0,
        }


_COMPRESSION = {
    "none": DBCompressionType.none,
    "snappy": DBCompressionType.snappy,
    "lz4": DBCompressionType.lz4,
    "zstd": DBCompressionType.zstd,
}


def table_options(sst: SstConfig) -> BlockBasedOptions:
    """The block-based table format of ``sst`` (no block cache set)."""
    table = BlockBasedOptions()
    table.set_block_size(sst.block_size)
    if sst.bloom_bits_per_key:
        table.set_bloom_filter(sst.bloom_bits_per_key, False)
    if sst.hash_index:
        table.set_data_block_index_type(DataBlockIndexType.binary_and_hash())
    return table


def read_options(sst: SstConfig) -> ReadOptions:
    """The options of every point read (multi-get) of the cold tier."""
    opts = ReadOptions()
    opts.set_verify_checksums(sst.verify_checksums)
    opts.fill_cache(sst.fill_cache)  # type: ignore[call-arg]  # rocksdict's stub omits the flag
    return opts


class RocksShard:
    """One RocksDB instance holding a shard of every table."""

    def __init__(
        self,
        path: str,
        tables: list[str],
        write_buffer_bytes: int = 16 << 20,
        sync_writes: bool = False,
        read_only: bool = False,
        *,
        memory: RocksMemory | None = None,
        sst: SstConfig | None = None,
    ) -> None:
        self.path = path
        self.memory = memory
        self.sst = sst if sst is not None else SstConfig()
        self.tables = list(tables)
        self.write_buffer_bytes = write_buffer_bytes
        self.sync_writes = sync_writes
        self.read_only = read_only
        self._db: Rdict | None = None
        self._cfs: dict[str, Rdict] = {}
        self._closed = False
        self.read_options = ReadOptions()

    def _options(self) -> Options:
        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        opts.create_missing_column_families(True)
        opts.set_write_buffer_size(self.write_buffer_bytes)
        opts.set_max_open_files(256)
        opts.set_compression_type(_COMPRESSION[self.sst.compression]())
        if self.sst.bloom_bits_per_key:  # memtables get a whole-key filter too, 2% their size
            opts.set_memtable_whole_key_filtering(True)
            ratio = (
                self.memory.memtable_bloom_ratio(self.write_buffer_bytes)
                if self.memory is not None
                else MEMTABLE_BLOOM_RATIO
            )
            opts.set_memtable_prefix_bloom_ratio(ratio)
        table = table_options(self.sst)
        if self.memory is not None:
            self.memory.apply(opts, table)
        else:
            opts.set_block_based_table_factory(table)
        return opts

    def open(self) -> None:
        """Open (creating if needed) the instance and its column families."""
        names = [table_cf(t) for t in self.tables] + [META_CF]
        opts = self._options()
        self.read_options = read_options(self.sst)
        access = AccessType.read_only(False) if self.read_only else AccessType.read_write()
        try:
            if not self.read_only:
                os.makedirs(self.path, exist_ok=True)
            self._db = Rdict(
                self.path,
                opts,
                column_families={n: self._options() for n in names},
                access_type=access,
            )
            self._cfs = {n: self._db.get_column_family(n) for n in names}
            for cf in self._cfs.values():
                # rocksdict's multi-get (a list of keys) ignores a read_opt passed per call and
                # reads with the column family's own options: they must be set here to count
                cf.set_read_options(self.read_options)
        except Exception as err:
            raise StorageError(self.path, "open", err) from err
        if self.sync_writes:
            wo = WriteOptions()
            wo.sync = True
            self._db.set_write_options(wo)

    def cf(self, name: str) -> Rdict:
        """The column family ``name`` (a table's via :func:`table_cf`)."""
        self._handle()
        return self._cfs[name]

    def tier(self, table: str, layout: RowLayout) -> RocksTier:
        """The cold tier of ``table`` in this shard."""
        return RocksTier(self, table, layout)

    def call(self, operation: str, fn: Callable[[], T]) -> T:
        """Run a RocksDB call, turning its failures into :class:`StorageError`."""
        if self._closed:
            raise StoreClosedError(f"RocksDB shard {self.path!r}")
        try:
            return fn()
        except (StoreClosedError, StoreNotOpenError):
            raise
        except Exception as err:
            raise StorageError(self.path, operation, err) from err

    def _handle(self) -> Rdict:
        if self._closed:
            raise StoreClosedError(f"RocksDB shard {self.path!r}")
        if self._db is None:
            raise StoreNotOpenError(f"RocksDB shard {self.path!r}")
        return self._db

    def write(self, batch: WriteBatch) -> None:
        """Apply a write batch atomically."""
        db = self._handle()
        self.call("write", lambda: db.write(batch))

    def batch(self, name: str) -> WriteBatch:
        """A write batch whose default column family is ``name``."""
        db = self._handle()
        wb = WriteBatch(raw_mode=True)
        wb.set_default_column_family(db.get_column_family_handle(name))
        return wb

    def get_meta(self, key: str) -> bytes | None:
        """A value of the ``_meta`` column family."""
        cf = self.cf(META_CF)
        value: Any = self.call("read meta", lambda: cf.get(key.encode()))
        return None if value is None else bytes(value)

    def put_meta(self, items: dict[str, bytes]) -> None:
        """Write ``_meta`` values atomically."""
        wb = self.batch(META_CF)
        for k, v in items.items():
            wb.put(k.encode(), v)
        self.write(wb)

    def flush(self) -> None:
        """Make every write so far durable: sync the WAL (and flush the default family).

        The tables' column families keep their memtables: what is in them is in the synced
        WAL, which RocksDB replays on reopen (``tests/integration/test_store_durability.py``
        kills a process with SIGKILL after ``flush()`` and finds every row). Flushing them
        too would only turn each call into one small table file per family.
        """
        db = self._db
        if db is None or self._closed:
            return

        def flush() -> None:
            db.flush(True)
            db.flush_wal(True)

        self.call("flush", flush)

    def close(self) -> None:
        """Close the instance (idempotent); a failing close raises :class:`StorageError`.

        The handle is dropped either way, so the directory's lock is released and the
        instance can be opened again (after a disk failure, say).
        """
        if self._db is not None and not self._closed:
            db, self._db, self._cfs = self._db, None, {}
            self._closed = True
            try:
                db.close()
            except Exception as err:
                raise StorageError(self.path, "close", err) from err
            finally:
                del db  # the last reference: RocksDB releases the LOCK file now


class RocksTier:
    """Rows of one table in one shard, in RocksDB."""

    def __init__(self, shard: RocksShard, table: str, layout: RowLayout) -> None:
        self.shard = shard
        self.table = table
        self.layout = layout
        self._cf_name = table_cf(table)
        self._closed = False

    def _cf(self) -> Rdict:
        if self._closed:
            raise StoreClosedError(f"RocksDB tier of table {self.table!r} at {self.shard.path!r}")
        return self.shard.cf(self._cf_name)

    def get(self, ids: IdArray) -> tuple[BoolArray, RowBlock]:
        """Multi-get ``ids``: which were found, and their rows (others' rows undefined)."""
        n = len(ids)
        if not n:
            return np.zeros(0, dtype=np.bool_), self.layout.empty(0)
        cf = self._cf()
        keys = encode_keys(ids)
        values: list[bytes | None] = self.shard.call(
            "multi-get",
            lambda: cf.get(keys),  # type: ignore[arg-type, return-value]  # the cf's read options
        )
        if None not in values:  # the common case: one copy, no per-row work
            return np.ones(n, dtype=np.bool_), self.layout.decode(values)  # type: ignore[arg-type]
        found = np.fromiter(map(operator.is_not, values, repeat(None)), dtype=np.bool_, count=n)
        out = self.layout.empty(n)
        out[found] = self.layout.decode(list(filter(None, values)))
        return found, out

    def put(self, ids: IdArray, rows: RowBlock) -> None:
        """Write rows in one atomic batch."""
        if not len(ids):
            return
        self._cf()
        wb = self.shard.batch(self._cf_name)
        deque(map(wb.put, encode_keys(ids), self.layout.encode(rows)), maxlen=0)
        self.shard.write(wb)

    def delete(self, ids: IdArray) -> None:
        """Delete rows in one atomic batch."""
        if not len(ids):
            return
        self._cf()
        wb = self.shard.batch(self._cf_name)
        deque(map(wb.delete, encode_keys(ids)), maxlen=0)
        self.shard.write(wb)

    def iterate(self, chunk: int = 65536) -> Iterator[tuple[IdArray, RowBlock]]:
        """Every row, in key order, from a consistent RocksDB snapshot."""
        cf = self._cf()
        it = self.shard.call("iterate", lambda: cf.iter(ReadOptions()))
        it.seek_to_first()
        keys: list[bytes] = []
        values: list[bytes] = []
        while it.valid():
            keys.append(it.key())
            values.append(it.value())
            if len(keys) >= chunk:
                yield decode_keys(keys), self.layout.decode(values)
                keys, values = [], []
            it.next()
        if keys:
            yield decode_keys(keys), self.layout.decode(values)

    def count(self) -> int:
        """Exact row count (iterates keys)."""
        cf = self._cf()
        return sum(1 for _ in self.shard.call("count", cf.keys))

    def close(self) -> None:
        """Stop using this tier (the shard's instance, shared by tables, is closed by the shard)."""
        self._closed = True
