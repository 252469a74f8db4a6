"""The slab (SSD) tier: rows at fixed slots of one preallocated file, found through a hash index.

One file per table and shard, ``capacity`` rows long, mapped into memory::

    file  <slab dir>/<table>.shard-0003.slab        (capacity x row_bytes, preallocated)
          offset 0      row_bytes   2*row_bytes ...
          +-----------+-----------+-----------+-----------+----
          | row slot 0| row slot 1| (free)    | row slot 3| ...     RowLayout records
          +-----------+-----------+-----------+-----------+----
    DRAM  ids   [ 17 | 90 | -- |  4 | ... ]   int64, slot -> id
          live  [  1 |  1 |  0 |  1 | ... ]   slot in use
          dirty [  0 |  1 |  0 |  1 | ... ]   newer than the tier below (RocksDB)
          freq  [ .. | .. | -- | .. | ... ]   LFU count and its epoch, copied from the row,
          epoch [ .. | .. | -- | .. | ... ]   so choosing victims never reads the file
          index: id -> slot (FixedSlotIndex: int32 buckets, keys read from ids; stale
                 entries validated against ids/live)
          free:  a stack of freed slots, reused before fresh ones

Reads and writes of a whole batch are one numpy gather or scatter over the mapping (no Python
loop per row; numpy releases the GIL while it copies). Pages a batch touches are mapped into
the process and count in its RSS (file-backed pages, which the kernel may reclaim under memory
pressure, unlike the DRAM tier's). With ``resident_bytes`` set, once the pages touched since
the last release could exceed it, the tier calls ``madvise(MADV_DONTNEED)`` on the whole
mapping: the pages leave the process (dirty ones stay in the page cache and the kernel writes
them back), so the slab's RSS stays near ``resident_bytes`` whatever the file's size. The
price is a page fault at the next touch of each page: measured on the 2-core benchmark VM
(BENCHMARKS.md), ~3-5 us per fault against ~0.5 us per read + write-back pair on mapped pages,
and ~1 us per syscall for positional I/O (``os.pread``/``os.pwrite`` per row: ~2.3 us a pair),
which is why the memory map, left resident by default, was chosen.

The slab is a cache, not a store of record: :meth:`SlabTier.open` discards whatever the file
held (truncates and preallocates it again) and :meth:`SlabTier.close` deletes it. What must
survive a restart reaches RocksDB through :class:`embedding_store.chain.SlabChain` at every
flush, as DRAM's dirty rows do. Not thread-safe by itself (the chain holds a lock).

>>> import tempfile, numpy as np
>>> from embedding_store.rows import RowLayout
>>> with tempfile.TemporaryDirectory() as d:
...     slab = SlabTier(d + "/t.slab", RowLayout(dim=2, state_dim=0), capacity=8).open()
...     rows = slab.layout.empty(2); rows["emb"] = [[1, 2], [3, 4]]; rows["freq"] = 1.0
...     slab.put(np.array([5, 9], dtype=np.int64), rows)
...     found, got = slab.get(np.array([9, 1], dtype=np.int64))
...     free = slab.free_slots()
...     slab.close()
>>> found.tolist(), got["emb"][0].tolist(), free
([True, False], [3.0, 4.0], 6)
"""

from __future__ import annotations

import mmap
import os
import time
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt

from embedding_store.config import StoreConfig, TableConfig
from embedding_store.errors import SlabFullError, StorageError, StoreClosedError
from embedding_store.index import FixedSlotIndex
from embedding_store.rows import RowLayout
from embedding_store.tier import RowBlock
from embedding_store.types import BoolArray, FloatArray, IdArray, SlotArray

PAGE = mmap.PAGESIZE


class SlabTier:
    """Rows of one table in one shard at fixed offsets of a preallocated, memory-mapped file."""

    def __init__(
        self,
        path: str,
        layout: RowLayout,
        capacity: int,
        resident_bytes: int | None = None,
        release_advice: int = mmap.MADV_DONTNEED,
    ) -> None:
        self.path = path
        self.layout = layout
        self.capacity = max(int(capacity), 1)
        self.resident_bytes = resident_bytes
        # how release() hands pages back: MADV_DONTNEED unmaps them (they stay in the page
        # cache); MADV_PAGEOUT (21, Linux 5.4+) also evicts them from it (benchmarks only)
        self.release_advice = release_advice
        self.ids = np.empty(0, dtype=np.int64)
        self.live = np.zeros(0, dtype=np.bool_)
        self.dirty = np.zeros(0, dtype=np.bool_)
        self.freq = np.zeros(0, dtype=np.float32)
        self.epoch = np.zeros(0, dtype=np.int32)
        self.releases = 0
        self.release_seconds = 0.0  # time spent in madvise (the faults that follow are not)
        self._void = np.dtype((np.void, layout.row_bytes))
        self._raw: npt.NDArray[np.void] = np.empty(0, dtype=self._void)
        self._mm: mmap.mmap | None = None
        self._fd = -1
        self._index = FixedSlotIndex(1)
        self._free = np.empty(0, dtype=np.int64)
        self._high = 0
        self._live_count = 0
        self._touched_pages = 0
        self._opened = False
        self._closed = False
        # a row spans at most this many pages: the most a touched row can map in
        self._pages_per_row = (layout.row_bytes + PAGE - 2) // PAGE + 1

    # -- lifecycle -----------------------------------------------------------
    def open(self) -> SlabTier:
        """Discard the file's old contents, preallocate ``capacity`` rows and map them."""
        if self._closed:
            raise StoreClosedError(f"slab tier at {self.path!r}")
        if self._opened:
            return self
        size = self.capacity * self.layout.row_bytes
        try:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.posix_fallocate(self._fd, 0, size)
            except OSError:  # a file system without fallocate: a sparse file of that size
                os.ftruncate(self._fd, size)
            self._mm = mmap.mmap(self._fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as err:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            raise StorageError(self.path, "slab open", err) from err
        if self.resident_bytes is not None:  # faults map one page, not a read-ahead window
            self._mm.madvise(mmap.MADV_RANDOM)
        # opaque fixed-width records: gathers and scatters of whole rows copy bytes, ~4x
        # faster than numpy's field-by-field copy of the structured dtype
        self._raw = np.frombuffer(self._mm, dtype=self._void, count=self.capacity)
        n = self.capacity
        self.ids = np.empty(n, dtype=np.int64)
        self.live = np.zeros(n, dtype=np.bool_)
        self.dirty = np.zeros(n, dtype=np.bool_)
        self.freq = np.zeros(n, dtype=np.float32)
        self.epoch = np.zeros(n, dtype=np.int32)
        self._index = FixedSlotIndex(n)
        self._opened = True
        return self

    def close(self) -> None:
        """Unmap and delete the file (its rows are a cache); later calls raise."""
        if self._closed:
            return
        self._closed = True
        self._raw = np.empty(0, dtype=self._void)
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:  # a caller still holds a view: the GC unmaps it later
                pass
            self._mm = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        self._index = FixedSlotIndex(1)

    def _check(self) -> None:
        if self._closed:
            raise StoreClosedError(f"slab tier at {self.path!r}")
        if not self._opened:
            raise StoreClosedError(f"slab tier at {self.path!r} (never opened)")

    # -- slots -------------------------------------------------------------
    def find(self, ids: IdArray) -> SlotArray:
        """The slot of each id, or -1."""
        self._check()
        return self._index.lookup(ids, self.ids, self.live)

    def read(self, slots: SlotArray) -> RowBlock:
        """Rows at ``slots`` (one gather from the file's pages)."""
        self._check()
        out = self._raw[slots].view(self.layout.dtype)
        self._touched(len(slots))
        return out

    def write(self, slots: SlotArray, rows: RowBlock, dirty: bool = True) -> None:
        """Overwrite the rows at ``slots`` (one scatter into the file's pages)."""
        self._check()
        self._raw[slots] = np.ascontiguousarray(rows, dtype=self.layout.dtype).view(self._void)
        self.freq[slots] = rows["freq"]
        self.epoch[slots] = rows["epoch"]
        self.dirty[slots] = dirty
        self._touched(len(slots))

    def insert(self, ids: IdArray, rows: RowBlock, dirty: bool = True) -> SlotArray:
        """Add rows for ids not in the tier; raises :class:`SlabFullError` if they do not fit."""
        self._check()
        n = len(ids)
        if n > self.free_slots():
            raise SlabFullError(self.path, n, self.free_slots())
        take = min(n, len(self._free))
        reused = self._free[len(self._free) - take :]
        self._free = self._free[: len(self._free) - take]
        fresh = np.arange(self._high, self._high + n - take, dtype=np.int64)
        self._high += n - take
        slots = np.concatenate([reused, fresh])
        self.ids[slots] = ids
        self.live[slots] = True
        self.write(slots, rows, dirty)
        self._index.insert(ids, slots, self.ids, self.live)
        self._live_count += n
        return slots

    def remove(self, slots: SlotArray) -> None:
        """Free ``slots`` for reuse (their index entries become stale)."""
        self._check()
        if not len(slots):
            return
        self.live[slots] = False
        self.dirty[slots] = False
        self._free = np.concatenate([self._free, slots.astype(np.int64)])
        self._live_count -= len(slots)

    def live_slots(self) -> SlotArray:
        """Every slot in use."""
        return np.flatnonzero(self.live[: self._high])

    def free_slots(self) -> int:
        """Rows that can still be inserted."""
        return self.capacity - self._live_count

    def aged_freq(self, slots: SlotArray, epoch_now: int, decay: float) -> FloatArray:
        """LFU counts of ``slots`` aged to ``epoch_now`` (from DRAM, without reading the file)."""
        age = (epoch_now - self.epoch[slots]).astype(np.float32)
        return (self.freq[slots] * np.power(np.float32(decay), age)).astype(np.float32)

    def _touched(self, rows: int) -> None:
        """Hand the mapping's pages back once they could exceed ``resident_bytes``."""
        self._touched_pages += rows * self._pages_per_row
        if self.resident_bytes is None:
            return
        if self._touched_pages * PAGE > self.resident_bytes and self._mm is not None:
            self.release()

    def release(self) -> None:
        """Unmap every page of the file from the process (``release_advice``); contents stay."""
        if self._mm is not None:
            t0 = time.perf_counter()
            self._mm.madvise(self.release_advice)
            self.release_seconds += time.perf_counter() - t0
            self.releases += 1
        self._touched_pages = 0

    # -- the Tier interface --------------------------------------------------
    def get(self, ids: IdArray) -> tuple[BoolArray, RowBlock]:
        """``(found, rows)`` for ``ids``."""
        slots = self.find(ids)
        found = slots >= 0
        if found.all():
            return found, self.read(slots)
        out = self.layout.empty(len(ids))
        out[found] = self.read(slots[found])
        return found, out

    def put(self, ids: IdArray, rows: RowBlock) -> None:
        """Insert or overwrite rows (dirty); :class:`SlabFullError` if new ones do not fit."""
        slots = self.find(ids)
        have = slots >= 0
        if have.all():
            self.write(slots, rows)
            return
        new = ~have
        if int(new.sum()) > self.free_slots():
            raise SlabFullError(self.path, int(new.sum()), self.free_slots())
        self.write(slots[have], rows[have])
        self.insert(ids[new], rows[new])

    def delete(self, ids: IdArray) -> None:
        """Remove ``ids`` if present."""
        slots = self.find(ids)
        self.remove(slots[slots >= 0])

    def iterate(self, chunk: int = 65536) -> Iterator[tuple[IdArray, RowBlock]]:
        """Every live row, in slot order."""
        live = self.live_slots()
        for start in range(0, len(live), chunk):
            part = live[start : start + chunk]
            yield self.ids[part].copy(), self.read(part)

    def count(self) -> int:
        """Rows in the tier."""
        self._check()
        return self._live_count

    def nbytes(self) -> int:
        """DRAM bytes of the slot arrays and the index (the rows themselves are on disk)."""
        per_slot = 8 + 1 + 1 + 4 + 4
        return self.capacity * per_slot + self._index.nbytes() + self._free.nbytes


def open_slab(
    config: StoreConfig, table: TableConfig, shard: int, layout: RowLayout
) -> SlabTier | None:
    """The open slab of ``table`` in ``shard`` (its share of the budget), or None without one.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     cfg = StoreConfig(d, (TableConfig("t", 4, slab_rows=10),), num_shards=4)
    ...     slab = open_slab(cfg, cfg.tables[0], 3, RowLayout(4, 1))
    ...     where = os.path.relpath(slab.path, d), slab.capacity
    ...     slab.close()
    >>> where
    ('slab/t.shard-0003.slab', 3)
    """
    budget = table.slab_budget_rows(layout.row_bytes)
    if budget is None:
        return None
    per_shard = -(-budget // config.num_shards)
    path = os.path.join(config.slab_dir(), f"{table.name}.shard-{shard:04d}.slab")
    return SlabTier(path, layout, per_shard, config.slab_resident_bytes).open()
