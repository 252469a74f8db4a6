"""Admission: an id gets a row only after it has been seen in ``admit_after`` training steps.

Until then its sightings are counted here, once per step however many times the step asks
for it (its lookup, its gradient, an evaluation forward), so ``admit_after=k`` means k steps.
Admitting an id forgets it here: from then on its row carries it, and if the row expires the
id starts again from zero. Sightings age out under the same expiry rule as rows.

::

    index: id -> position (SlotIndex; count 0 = free, reused when the id comes back)
    ids       [ 17 | 90 |  4 | ... ]
    count     [  1 |  2 |  0 | ... ]   steps the id was seen in, not yet admitted
    last_step [  5 |  7 |  - | ... ]   the step of the last sighting (counts once per step)
    last_time [ t5 | t7 |  - | ... ]   its clock time (for expire_after_seconds)

The counts are training state: :meth:`Sightings.export` and :meth:`Sightings.load` carry them
through checkpoints, so a restarted job admits the same ids at the same steps.

>>> import numpy as np
>>> s = Sightings(admit_after=2)
>>> ids = np.array([7, 8], dtype=np.int64)
>>> s.admit(ids, step=1, now=0.0).tolist(), s.admit(ids[:1], step=1, now=0.0).tolist()
([False, False], [False])
>>> s.admit(ids[:1], step=2, now=1.0).tolist(), s.export()["id"].tolist()
([True], [8])
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from embedding_store.index import SlotIndex
from embedding_store.types import IdArray

SIGHTING_DTYPE = np.dtype(
    [("id", "<i8"), ("count", "<i4"), ("last_step", "<i8"), ("last_time", "<f8")]
)
"""One pending id as :meth:`Sightings.export` returns it (and checkpoints store it)."""

SightingBlock = npt.NDArray[np.void]


class Sightings:
    """Per-step sighting counts of ids without a row (one table in one shard). Not locked."""

    def __init__(self, admit_after: int) -> None:
        self.admit_after = admit_after
        self._index = SlotIndex()
        self._block = np.zeros(1024, dtype=SIGHTING_DTYPE)
        self._n = 0  # positions handed out; those with count 0 are free
        self._pending = 0  # positions with count > 0

    def __len__(self) -> int:
        """Ids seen but not admitted yet."""
        return self._pending

    def admit(self, ids: IdArray, step: int, now: float) -> npt.NDArray[np.bool_]:
        """Count one sighting of each of the unique ``ids`` at ``step``; True where admitted."""
        if self.admit_after <= 1:
            return np.ones(len(ids), dtype=np.bool_)
        pos = self._positions(ids)
        b = self._block
        fresh = b["last_step"][pos] != step
        counted = pos[fresh]
        self._pending += int(np.count_nonzero(b["count"][counted] == 0))
        b["count"][counted] += 1
        b["last_step"][counted] = step
        b["last_time"][counted] = now
        admitted = b["count"][pos] >= self.admit_after
        self._forget(pos[admitted])
        return admitted

    def _positions(self, ids: IdArray) -> npt.NDArray[np.int64]:
        pos = self._index.lookup(ids)
        hit = pos >= 0
        pos[np.flatnonzero(hit)[self._block["id"][pos[hit]] != ids[hit]]] = -1
        unknown = np.flatnonzero(pos < 0)
        if len(unknown):
            need = self._n + len(unknown)
            if need > len(self._block):
                grown = np.zeros(max(2 * len(self._block), need), dtype=SIGHTING_DTYPE)
                grown[: self._n] = self._block[: self._n]
                self._block = grown
            fresh = np.arange(self._n, need, dtype=np.int64)
            self._block["id"][fresh] = ids[unknown]
            self._block["count"][fresh] = 0
            self._block["last_step"][fresh] = -1
            self._index.insert(ids[unknown], fresh)
            self._n = need
            pos[unknown] = fresh
        return pos

    def _forget(self, pos: npt.NDArray[np.int64]) -> None:
        b = self._block
        live = pos[b["count"][pos] > 0]
        self._pending -= len(live)
        b["count"][live] = 0
        b["last_step"][live] = -1
        if self._n > 2 * max(self._pending, 4096):
            self.load(self.export())  # drop forgotten entries from the index

    def expire(self, min_step: int | None, min_time: float | None) -> int:
        """Forget ids last seen before ``min_step`` / ``min_time``; returns how many."""
        b = self._block[: self._n]
        old = b["count"] > 0
        stale = np.zeros(self._n, dtype=np.bool_)
        if min_step is not None:
            stale |= b["last_step"] < min_step
        if min_time is not None:
            stale |= b["last_time"] < min_time
        gone = np.flatnonzero(old & stale)
        self._forget(gone)
        return len(gone)

    def export(self) -> SightingBlock:
        """Every pending id with its count and last sighting, sorted by id (a copy)."""
        b = self._block[: self._n]
        out = b[b["count"] > 0]
        return out[np.argsort(out["id"], kind="stable")]

    def load(self, block: SightingBlock) -> None:
        """Replace every count by ``block`` (as :meth:`export` returns it)."""
        block = np.asarray(block, dtype=SIGHTING_DTYPE)
        block = block[block["count"] > 0]
        self._block = np.zeros(max(1024, 2 * len(block)), dtype=SIGHTING_DTYPE)
        self._block[: len(block)] = block
        self._n = self._pending = len(block)
        self._index = SlotIndex(max(2 * len(block), 1024))
        self._index.insert(np.ascontiguousarray(block["id"]), np.arange(len(block), dtype=np.int64))
