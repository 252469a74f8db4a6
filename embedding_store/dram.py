"""The DRAM (hot) tier: rows in one structured numpy array, found through a hash index.

::

    ids   [ 17 | 90 | -- | 4 | ... ]   int64, slot -> id
    live  [  1 |  1 |  0 | 1 | ... ]   slot in use
    dirty [  0 |  1 |  0 | 1 | ... ]   changed since last written to the next tier
    pins  [  0 |  2 |  0 | 0 | ... ]   pending batches that need the row in DRAM
    evict [  0 |  0 |  0 | 1 | ... ]   chosen for eviction, being written back
    prov  [  0 |  0 |  0 | 0 | ... ]   created ahead by prefetch, not yet looked up (invisible)
    rows  [ row| row| -- |row| ... ]   RowLayout records
    index: id -> slot (SlotIndex; stale entries validated against ids/live)

Not thread-safe by itself: the shard that owns it holds a lock around every call.

>>> import numpy as np
>>> from embedding_store.rows import RowLayout
>>> tier = DramTier(RowLayout(dim=2, state_dim=0))
>>> rows = tier.layout.empty(2); rows["emb"] = [[1, 2], [3, 4]]
>>> tier.put(np.array([5, 9], dtype=np.int64), rows)
>>> found, got = tier.get(np.array([9, 1], dtype=np.int64))
>>> found.tolist(), got["emb"][0].tolist()
([True, False], [3.0, 4.0])
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from embedding_store.errors import StoreClosedError
from embedding_store.index import SlotIndex
from embedding_store.rows import RowLayout
from embedding_store.tier import RowBlock
from embedding_store.types import BoolArray, IdArray, SlotArray


class DramTier:
    """Rows of one table in one shard, in DRAM."""

    def __init__(self, layout: RowLayout, initial_capacity: int = 1024) -> None:
        self.layout = layout
        self._capacity = max(initial_capacity, 16)
        self.rows = layout.empty(self._capacity)
        self.ids = np.empty(self._capacity, dtype=np.int64)
        self.live = np.zeros(self._capacity, dtype=np.bool_)
        self.dirty = np.zeros(self._capacity, dtype=np.bool_)
        self.pins = np.zeros(self._capacity, dtype=np.int32)
        self.evicting = np.zeros(self._capacity, dtype=np.bool_)
        self.provisional = np.zeros(self._capacity, dtype=np.bool_)
        self._index = SlotIndex(self._capacity)
        self._free = np.empty(0, dtype=np.int64)
        self._retired = np.empty(0, dtype=np.int64)  # out of the tier, freed once unpinned
        self._high = 0
        self._live_count = 0
        self._closed = False

    # -- slots -------------------------------------------------------------
    def find(self, ids: IdArray) -> SlotArray:
        """The slot of each id, or -1."""
        self._check()
        slots = self._index.lookup(ids)
        # -1 reads the last slot here: whatever it holds, the first test has ruled it out
        ok = slots >= 0
        ok &= self.live[slots]
        ok &= self.ids[slots] == ids
        slots[~ok] = -1
        return slots

    def insert(
        self, ids: IdArray, rows: RowBlock, dirty: bool = True, provisional: bool = False
    ) -> SlotArray:
        """Add rows for ids that are not in the tier; returns their slots."""
        self._check()
        n = len(ids)
        slots = self._allocate(n)
        self.rows[slots] = rows
        self.ids[slots] = ids
        self.live[slots] = True
        self.dirty[slots] = dirty
        self.pins[slots] = 0
        self.evicting[slots] = False
        self.provisional[slots] = provisional
        self._index.insert(ids, slots)
        self._live_count += n
        return slots

    def remove(self, slots: SlotArray) -> None:
        """Free ``slots`` (their index entries become stale)."""
        self._check()
        if not len(slots):
            return
        self.live[slots] = False
        self.dirty[slots] = False
        self.pins[slots] = 0
        self.evicting[slots] = False
        self.provisional[slots] = False
        self._free = np.concatenate([self._free, slots.astype(np.int64)])
        self._live_count -= len(slots)
        if self._index.entries > 2 * max(self._live_count, 1024):
            live = np.flatnonzero(self.live[: self._high])
            self._index.rebuild(self.ids[live], live)

    def retire(self, slots: SlotArray) -> None:
        """Take pinned ``slots`` out of the tier now; each is freed when its last pin goes.

        A pin holder (a prefetch ticket) still releases its slot later, so the slot must not
        be reused before: until :meth:`release_retired` sees it unpinned it stays allocated.
        """
        self._check()
        if not len(slots):
            return
        self.live[slots] = False
        self.dirty[slots] = False
        self.evicting[slots] = False
        self.provisional[slots] = False
        self._retired = np.concatenate([self._retired, slots.astype(np.int64)])
        self._live_count -= len(slots)

    def release_retired(self) -> None:
        """Free the retired slots nobody pins any more."""
        if not len(self._retired):
            return
        done = self.pins[self._retired] <= 0
        if done.any():
            self.pins[self._retired[done]] = 0
            self._free = np.concatenate([self._free, self._retired[done]])
            self._retired = self._retired[~done]

    def live_slots(self) -> SlotArray:
        """Every slot in use."""
        return np.flatnonzero(self.live[: self._high])

    @property
    def high(self) -> int:
        """One past the highest slot ever used: every live slot is below it."""
        return self._high

    def _allocate(self, n: int) -> SlotArray:
        take = min(n, len(self._free))
        reused = self._free[len(self._free) - take :]
        self._free = self._free[: len(self._free) - take]
        fresh_n = n - take
        if self._high + fresh_n > self._capacity:
            self._grow(self._high + fresh_n)
        fresh = np.arange(self._high, self._high + fresh_n, dtype=np.int64)
        self._high += fresh_n
        return np.concatenate([reused, fresh])

    def _grow(self, need: int) -> None:
        cap = max(need, int(self._capacity * 1.5))
        for name in ("rows", "ids", "live", "dirty", "pins", "evicting", "provisional"):
            old = getattr(self, name)
            new = (
                np.empty(cap, dtype=old.dtype)
                if name in ("rows", "ids")
                else np.zeros(cap, dtype=old.dtype)
            )
            new[: self._high] = old[: self._high]
            setattr(self, name, new)
        self._capacity = cap

    # -- the Tier interface --------------------------------------------------
    def get(self, ids: IdArray) -> tuple[BoolArray, RowBlock]:
        """``(found, rows)`` for ``ids``."""
        slots = self.find(ids)
        found = slots >= 0
        out = self.layout.empty(len(ids))
        out[found] = self.rows[slots[found]]
        return found, out

    def put(self, ids: IdArray, rows: RowBlock) -> None:
        """Insert or overwrite rows (marked dirty)."""
        slots = self.find(ids)
        have = slots >= 0
        self.rows[slots[have]] = rows[have]
        self.dirty[slots[have]] = True
        if (~have).any():
            self.insert(ids[~have], rows[~have])

    def delete(self, ids: IdArray) -> None:
        """Remove ``ids`` if present."""
        slots = self.find(ids)
        self.remove(slots[slots >= 0])

    def iterate(self, chunk: int = 65536) -> Iterator[tuple[IdArray, RowBlock]]:
        """Every live row, in slot order."""
        live = self.live_slots()
        for start in range(0, len(live), chunk):
            part = live[start : start + chunk]
            yield self.ids[part].copy(), self.rows[part].copy()

    def count(self) -> int:
        """Rows in the tier."""
        self._check()
        return self._live_count

    def nbytes(self) -> int:
        """Bytes allocated for rows, ids, flags and the index."""
        per_slot = self.layout.row_bytes + 8 + 1 + 1 + 4 + 1 + 1
        return self._capacity * per_slot + self._index.nbytes()

    def close(self) -> None:
        """Drop every row."""
        self._closed = True
        self.rows = self.layout.empty(0)
        self._index = SlotIndex(16)

    def _check(self) -> None:
        if self._closed:
            raise StoreClosedError("DRAM tier")
