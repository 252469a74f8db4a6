"""The cold side of a shard-table with a slab: the slab tier over RocksDB, LFU between them.

The three tiers of one table in one shard, each with its own budget::

    DRAM tier (hot_rows) ─evict─► SlabChain ─────────────────────────────────────────────┐
         ▲                        │ slab (slab_rows, fixed slots on SSD)  LFU winners    │
         │ miss: get ◄────────────┤      │ full: the least-used rows of slab + incoming  │
         │                        │      ▼ go down (written only if dirty)               │
         │                        │ RocksDB (unbounded: the long tail, expiry, the       │
         └────────────────────────┤ record that survives a restart)                     │
                                  └──────────────────────────────────────────────────────┘

A read looks in the slab, then in RocksDB. A write (DRAM's write-back) lands in the slab; when
the slab is full, the rows with the smallest aged LFU counts among the slab's rows and the
incoming ones go to RocksDB instead (a clean slab row is just dropped: RocksDB holds it).
Rows are freed in batches (``slack``, a fraction of the capacity) so choosing victims, a pass
over the slab's counts held in DRAM, is amortised over many write-backs. :meth:`migrate`
promotes RocksDB rows used more than the slab's least-used ones. The slab keeps a copy of rows
that DRAM also holds (an inclusive cache): DRAM's copy, when it has one, is the one that counts,
exactly as over RocksDB alone.

Durability: the slab has no crash consistency of its own. It is a write-back cache of RocksDB:
:meth:`flush` (called by the store's ``flush()``, at every checkpoint and at close) writes its
dirty rows to RocksDB, and the slab file is discarded when the store opens. A crash loses the
slab's dirty rows exactly as it loses DRAM's, and a restart restores the checkpoint chain into
RocksDB as before. :meth:`iterate` and :meth:`count` flush first and then read RocksDB's
consistent snapshot. Thread-safe: one lock around the slab (RocksDB reads of slab misses run
outside it).

>>> import tempfile, numpy as np
>>> from embedding_store.rocks import RocksShard
>>> from embedding_store.rows import RowLayout
>>> from embedding_store.slab import SlabTier
>>> layout = RowLayout(dim=2, state_dim=0)
>>> with tempfile.TemporaryDirectory() as d:
...     db = RocksShard(d + "/rocks", ["t"]); db.open()
...     chain = SlabChain(SlabTier(d + "/t.slab", layout, capacity=2).open(), db.tier("t", layout))
...     rows = layout.empty(3); rows["freq"] = [5.0, 1.0, 9.0]; rows["epoch"] = 0
...     chain.put(np.array([1, 2, 3], dtype=np.int64), rows)  # 3 rows, room for 2
...     placed = chain.slab.count(), chain.demoted, chain.get(np.array([2], dtype=np.int64))[0]
...     chain.close(); db.close()
>>> placed
(2, 1, array([ True]))
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import numpy as np

from embedding_store.rocks import RocksShard, RocksTier
from embedding_store.rows import RowLayout
from embedding_store.slab import SlabTier
from embedding_store.tier import RowBlock
from embedding_store.types import BoolArray, FloatArray, IdArray

Aging = Callable[[], tuple[int, float]]
"""Returns ``(epoch now, decay per epoch)``: how the owning shard-table ages LFU counts."""

FLUSH_CHUNK = 65536
DEFAULT_SLACK = 1 / 64


def _no_aging() -> tuple[int, float]:
    return 0, 1.0


class SlabChain:
    """A slab tier over a RocksDB tier, behaving as one tier (the ``Tier`` protocol)."""

    def __init__(
        self,
        slab: SlabTier,
        rocks: RocksTier,
        aging: Aging = _no_aging,
        slack: float = DEFAULT_SLACK,
    ) -> None:
        self.slab = slab
        self.rocks = rocks
        self.layout: RowLayout = rocks.layout
        self.aging = aging
        self.slack = slack
        self.lock = threading.Lock()
        self.demoted = 0  # rows that left the slab for RocksDB (or went straight there)
        self.written_down = 0  # of those, rows written to RocksDB (dirty ones)
        self.promoted = 0  # rows migrate() brought from RocksDB into the slab

    @property
    def shard(self) -> RocksShard:
        """The RocksDB instance below (for callers that reach RocksDB's own properties)."""
        return self.rocks.shard

    # -- the Tier interface --------------------------------------------------
    def get(self, ids: IdArray) -> tuple[BoolArray, RowBlock]:
        """Rows from the slab, and from RocksDB for the slab's misses."""
        with self.lock:
            slots = self.slab.find(ids)
            found = slots >= 0
            if found.all():
                return found, self.slab.read(slots)
            out = self.layout.empty(len(ids))
            out[found] = self.slab.read(slots[found])
        rest = np.flatnonzero(~found)
        rfound, rrows = self.rocks.get(ids[rest])
        out[rest[rfound]] = rrows[rfound]
        found[rest[rfound]] = True
        return found, out

    def put(self, ids: IdArray, rows: RowBlock) -> None:
        """Write rows into the slab (dirty), demoting the least-used rows if it is full."""
        with self.lock:
            self._place(ids, rows, dirty=True)

    def delete(self, ids: IdArray) -> None:
        """Remove ``ids`` from both tiers."""
        with self.lock:
            self.slab.delete(ids)
            self.rocks.delete(ids)

    def iterate(self, chunk: int = 65536) -> Iterator[tuple[IdArray, RowBlock]]:
        """Every row once: flushes the slab's dirty rows, then iterates RocksDB's snapshot."""
        self.flush()
        yield from self.rocks.iterate(chunk)

    def count(self) -> int:
        """Rows in the chain (flushes, then counts RocksDB's keys)."""
        self.flush()
        return self.rocks.count()

    def close(self) -> None:
        """Close (and delete) the slab; the RocksDB tier is closed with its shard."""
        with self.lock:
            self.slab.close()
            self.rocks.close()

    # -- the chain's own operations ------------------------------------------
    def flush(self) -> int:
        """Write every dirty slab row to RocksDB; returns rows written."""
        with self.lock:
            live = self.slab.live_slots()
            dirty = live[self.slab.dirty[live]]
            for start in range(0, len(dirty), FLUSH_CHUNK):
                part = dirty[start : start + FLUSH_CHUNK]
                self.rocks.put(self.slab.ids[part], self.slab.read(part))
            self.slab.dirty[dirty] = False
            return len(dirty)

    def write_through(self, ids: IdArray, rows: RowBlock) -> None:
        """Write rows to RocksDB and drop the slab's copies (imports, restores)."""
        with self.lock:
            self.slab.delete(ids)
            self.rocks.put(ids, rows)

    def migrate(self, scan_limit: int | None = None) -> tuple[int, int]:
        """Promote RocksDB rows used more than the slab's least-used ones; ``(in, out)``."""
        with self.lock:  # held throughout: no write-back may land between the scan and the swap
            cap = self.slab.capacity
            best_ids: list[IdArray] = []
            best_freq: list[FloatArray] = []
            best_rows: list[RowBlock] = []
            scanned = 0
            for ids, rows in self.rocks.iterate():
                absent = self.slab.find(ids) < 0
                best_ids.append(ids[absent])
                best_rows.append(rows[absent])
                best_freq.append(self._aged_rows(rows[absent]))
                if sum(len(x) for x in best_ids) > 2 * cap:
                    best_ids, best_rows, best_freq = self._top(best_ids, best_rows, best_freq)
                scanned += int(absent.sum())
                if scan_limit is not None and scanned >= scan_limit:
                    break
            if not best_ids:
                return 0, 0
            (ids,), (rows,), _ = self._top(best_ids, best_rows, best_freq)
            before_in, before_out = self.slab.count(), self.demoted
            self._place(ids, rows, dirty=False)
            moved_out = self.demoted - before_out
            moved_in = self.slab.count() - before_in + moved_out
            self.promoted += moved_in
            return moved_in, moved_out

    def _top(
        self, ids: list[IdArray], rows: list[RowBlock], freq: list[FloatArray]
    ) -> tuple[list[IdArray], list[RowBlock], list[FloatArray]]:
        cap = self.slab.capacity
        all_ids, all_rows, all_freq = (
            np.concatenate(ids),
            np.concatenate(rows),
            np.concatenate(freq),
        )
        if len(all_ids) > cap:
            top = np.argpartition(-all_freq, cap - 1)[:cap]
            all_ids, all_rows, all_freq = all_ids[top], all_rows[top], all_freq[top]
        return [all_ids], [all_rows], [all_freq]

    # -- placement -----------------------------------------------------------
    def _aged_rows(self, rows: RowBlock) -> FloatArray:
        epoch, decay = self.aging()
        age = (epoch - rows["epoch"]).astype(np.float32)
        return (rows["freq"] * np.power(np.float32(decay), age)).astype(np.float32)

    def _place(self, ids: IdArray, rows: RowBlock, dirty: bool) -> None:
        """Put rows in the slab; when full, the least-used of slab + incoming go to RocksDB.

        ``dirty=False`` promotes rows RocksDB already holds: ids the slab has are left alone,
        and incoming rows that lose are simply not placed.
        """
        slab = self.slab
        slots = slab.find(ids)
        have = slots >= 0
        if dirty and have.any():
            slab.write(slots[have], rows[have], dirty=True)
        new = np.flatnonzero(~have)
        if not len(new):
            return
        over = len(new) - slab.free_slots()
        if over > 0:
            live = slab.live_slots()
            epoch, decay = self.aging()
            freq = np.concatenate([slab.aged_freq(live, epoch, decay), self._aged_rows(rows[new])])
            n_out = min(len(freq), max(over, int(slab.capacity * self.slack)))
            lose = (
                np.argpartition(freq, n_out - 1)[:n_out]
                if n_out < len(freq)
                else np.arange(len(freq))
            )
            slab_lose = live[lose[lose < len(live)]]
            new_lose = lose[lose >= len(live)] - len(live)
            down_ids: list[IdArray] = []
            down_rows: list[RowBlock] = []
            gone = slab_lose[slab.dirty[slab_lose]]
            if len(gone):
                down_ids.append(slab.ids[gone].copy())
                down_rows.append(slab.read(gone))
            if dirty and len(new_lose):
                down_ids.append(ids[new[new_lose]])
                down_rows.append(rows[new[new_lose]])
            if down_ids:
                down = np.concatenate(down_ids)
                self.rocks.put(down, np.concatenate(down_rows))  # before the slab forgets them
                self.written_down += len(down)
            slab.remove(slab_lose)
            self.demoted += len(slab_lose) + (len(new_lose) if dirty else 0)
            keep = np.ones(len(new), dtype=np.bool_)
            keep[new_lose] = False
            new = new[keep]
        if len(new):
            slab.insert(ids[new], rows[new], dirty=dirty)
